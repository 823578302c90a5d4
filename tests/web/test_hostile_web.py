"""The annotation server and the demo as anyone who can reach them would try them: real servers
on 127.0.0.1 (started once per module), plain HTTP requests, no browser. Every route Gradio has
but the pages do not use answers 404, bodies over the limit 413, tokens that are not an
annotator's get nothing, and after all of it nothing of the study was read or written."""

from __future__ import annotations

import json
import sqlite3

import pytest

pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")

from esc_dist.humaneval import CRITERIA  # noqa: E402
from esc_dist.humaneval.study import Study  # noqa: E402
from tests.unit.test_human_eval import NAME1, NAME2, _study  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from esc_dist.app.annotate import serve_study
    from esc_dist.dist import free_port

    study_dir = _study(tmp_path_factory.mktemp("hostile"), 4)
    study = Study.open(study_dir)
    token = study.add_annotator("ann")
    page, url = serve_study(study, port=free_port(), block=False)
    items = [json.loads(x) for x in (study_dir / "items.jsonl").read_text().splitlines()]
    texts = [t for it in items for t in (it["A"], it["B"])] + [
        m["text"] for it in items for m in it["context"]
    ]
    yield {"url": url, "dir": study_dir, "token": token, "texts": texts, "items": items}
    page.close()


def _fns(url: str) -> dict[str, int]:
    config = httpx.get(url + "config", timeout=30).json()
    return {d["api_name"]: i for i, d in enumerate(config["dependencies"])}


def _call(url: str, fn_index: int, data: list, session: str) -> str:
    """One event over Gradio's queue, as any client could call it; the answer as text."""
    r = httpx.post(
        url + "gradio_api/queue/join",
        timeout=30,
        json={
            "data": data,
            "fn_index": fn_index,
            "session_hash": session,
            "event_data": None,
            "trigger_id": None,
        },
    )
    if r.status_code != 200:
        return f"HTTP {r.status_code} {r.text}"
    seen = []
    with httpx.stream(
        "GET", url + f"gradio_api/queue/data?session_hash={session}", timeout=60
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                seen.append(msg)
                if msg.get("msg") == "process_completed":
                    return json.dumps(seen)
    raise AssertionError("no answer")


def _nothing_of_the_study(text: str, served) -> None:
    assert NAME1 not in text and NAME2 not in text
    assert not any(t in text for t in served["texts"]), text[:500]


def _judgments(served) -> int:
    with sqlite3.connect(served["dir"] / "judgments.sqlite") as conn:
        return conn.execute("SELECT count(*) FROM judgments").fetchone()[0]


# ---------------------------------------------------------------------------------------------
# Routes: (method, path, body) that must answer 404 -- Gradio's own routes the page never uses


CLOSED = [
    ("POST", "gradio_api/upload", "files"),
    ("GET", "gradio_api/upload_progress?upload_id=x", None),
    ("GET", "gradio_api/file={study}/items.jsonl", None),
    ("GET", "gradio_api/file={study}/key.json", None),
    ("GET", "gradio_api/file=/etc/passwd", None),
    ("HEAD", "gradio_api/file={study}/key.json", None),
    ("GET", "gradio_api/file/{study}/key.json", None),
    ("GET", "file={study}/key.json", None),
    ("GET", "gradio_api/proxy=http://127.0.0.1:1/", None),
    ("GET", "gradio_api/info", None),
    ("GET", "gradio_api/openapi.json", None),
    ("GET", "openapi.json", None),
    ("GET", "docs", None),
    ("GET", "redoc", None),
    ("GET", "monitoring", None),
    ("GET", "monitoring/summary", None),
    ("POST", "gradio_api/run/on_signin", '{"data": ["x"]}'),
    ("POST", "gradio_api/api/on_signin", '{"data": ["x"]}'),
    ("POST", "gradio_api/call/on_signin", '{"data": ["x"]}'),
    ("POST", "gradio_api/call/v2/on_submit", '{"data": []}'),
    ("POST", "gradio_api/component_server", "{}"),
    ("POST", "gradio_api/reset", "{}"),
    ("POST", "gradio_api/cancel", "{}"),
    ("POST", "gradio_api/process_recording", "{}"),
    ("GET", "gradio_api/runs", None),
    ("GET", "gradio_api/run-history/records", None),
    ("POST", "gradio_api/vibe-edit", '{"prompt": "x"}'),
    ("GET", "gradio_api/vibe-code", None),
    ("GET", "gradio_api/dev/reload", None),
    ("GET", "gradio_api/token", None),
    ("GET", "gradio_api/deep_link", None),
    ("POST", "login", "username=a&password=b"),
    ("GET", "logout", None),
    ("GET", "key.json", None),
    ("GET", "judgments.sqlite", None),
    ("GET", "config/../key.json", None),
    ("GET", "gradio_api/queue/status", None),
    ("PUT", "gradio_api/queue/join", "{}"),
    ("DELETE", "", None),
    ("GET", "gradio_api/heartbeat/x/../../key.json", None),
]


@pytest.mark.parametrize("method,path,body", CLOSED, ids=[f"{m} {p}" for m, p, _ in CLOSED])
def test_routes_the_page_does_not_use_are_closed(method, path, body, served):
    url = served["url"] + path.replace("{study}", str(served["dir"]))
    if body == "files":
        r = httpx.post(url, files={"files": ("a.txt", b"x" * 1000)}, timeout=30)
    else:
        r = httpx.request(
            method,
            url,
            content=body,
            timeout=30,
            headers={"content-type": "application/json"} if body else {},
        )
    assert r.status_code == 404, (r.status_code, r.text[:300])
    _nothing_of_the_study(r.text, served)


PUBLIC = ["", "config", "gradio_api/startup-events", "theme.css", "robots.txt"]


@pytest.mark.parametrize("path", PUBLIC)
def test_public_routes_show_no_study_text(path, served):
    r = httpx.get(served["url"] + path, timeout=30)
    assert r.status_code < 500
    _nothing_of_the_study(r.text, served)


# ---------------------------------------------------------------------------------------------
# Sizes and encodings of what reaches the queue


def test_a_body_over_the_limit_is_413(served):
    r = httpx.post(
        served["url"] + "gradio_api/queue/join",
        content=b"{" + b" " * 200_000 + b"}",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413


def test_a_chunked_body_over_the_limit_is_413(served):
    def chunks():
        for _ in range(100):
            yield b" " * 4096

    r = httpx.post(
        served["url"] + "gradio_api/queue/join",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe{not json",
        b"\x00" * 100,
        b'{"data": ["\\ud800"]}',
        b"[]",
        b'{"fn_index": 999, "data": [], "session_hash": "z"}',
    ],
)
def test_malformed_bodies_are_refused(body, served):
    r = httpx.post(
        served["url"] + "gradio_api/queue/join",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code < 500 or r.status_code == 500 and not r.text.strip().startswith("Trace")
    _nothing_of_the_study(r.text, served)


def test_a_bad_content_length_is_400(served):
    import socket

    host, port = served["url"].split("//")[1].strip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 99999999999999999999\r\n\r\n"
        )
        head = s.recv(200)
    assert head.split(b" ")[1] in (b"400", b"413"), head


# ---------------------------------------------------------------------------------------------
# Tokens


BAD_TOKENS = [
    "",
    "wrong",
    " ",
    "' OR 1=1 --",
    "%",
    "\x00",
    "é" * 50,
    "a" * 300,
    "a" * 20000,
    "{token}x",
    "{token_prefix}",
    "x{token}",
    "{token_upper}",
    "\u202e{token}",
]


@pytest.mark.parametrize("bad", BAD_TOKENS, ids=range(len(BAD_TOKENS)))
def test_a_wrong_token_gets_nothing(bad, served):
    token = served["token"]
    bad = bad.format(token=token, token_prefix=token[:-1], token_upper=token.upper())
    answer = _call(
        served["url"], _fns(served["url"])["on_signin"], [bad], f"bad{abs(hash(bad)) % 10**9:09d}"
    )
    assert "Unknown token" in answer
    _nothing_of_the_study(answer, served)


def test_a_forged_state_writes_nothing(served):
    fns = _fns(served["url"])
    for forged in (
        {"annotator": "ann", "token": served["token"], "item_id": served["items"][0]["item_id"]},
        {"annotator": "ann"},
        None,
        "ann",
        [1, 2],
    ):
        answer = _call(
            served["url"],
            fns["on_submit"],
            [forged, *["A"] * len(CRITERIA)],
            f"forged{abs(hash(str(forged))) % 10**6:06d}",
        )
        assert "Please sign in" in answer or "error" in answer, answer[:300]
        _nothing_of_the_study(answer, served)
    assert _judgments(served) == 0


def test_with_the_token_the_queue_is_the_page(served):
    """The routes left open do work: a signed-in session gets an item (the one check that the
    guard did not close the page itself), still without a system name."""
    answer = _call(
        served["url"], _fns(served["url"])["on_signin"], [served["token"] + "\n"], "good000001"
    )
    assert any(t in answer for t in served["texts"]) and NAME1 not in answer


# ---------------------------------------------------------------------------------------------
# The demo: no tokens, local by default, a message over the limit refused and the talk goes on


class Parrot:
    """A system that answers with the number of messages it was given (no model needed)."""

    def respond(self, history, conversation="chat"):
        from esc_dist.chat import Reply

        return Reply("vanilla", "Question", "", "Question", f"reply to {len(history)} messages")


@pytest.fixture(scope="module")
def demo():
    from esc_dist.app.demo import serve_demo
    from esc_dist.dist import free_port

    page, url = serve_demo({"vanilla": Parrot()}, port=free_port(), block=False)
    yield url
    page.close()


def test_the_demo_refuses_a_long_message_and_goes_on(demo):
    fn = _fns(demo)["on_send"]
    first = _call(demo, fn, ["I feel alone.", None, []], "demo000001")
    assert "reply to 1 messages" in first
    long = _call(demo, fn, ["x" * 3000, None, []], "demo000001")
    assert "message of 3000 characters: at most 2000" in long and "reply to" not in long
    assert "Traceback" not in long
    # the refused message is in no history: the next one is the third message
    after = _call(demo, fn, ["Still there?", None, []], "demo000001")
    assert "reply to 3 messages" in after


@pytest.mark.parametrize(
    "path",
    [
        "gradio_api/upload",
        "gradio_api/file=/etc/passwd",
        "gradio_api/info",
        "gradio_api/run/on_send",
    ],
)
def test_the_demo_closes_unused_routes(path, demo):
    r = (
        httpx.post(demo + path, content=b"{}", timeout=30)
        if "upload" in path or "run" in path
        else httpx.get(demo + path, timeout=30)
    )
    assert r.status_code == 404


def test_the_demo_body_limit(demo):
    r = httpx.post(demo + "gradio_api/queue/join", content=b" " * (2 * 1024 * 1024), timeout=30)
    assert r.status_code == 413


@pytest.mark.parametrize(
    "host,note",
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("192.168.1.5", True),
        ("::", True),
    ],
)
def test_the_demo_says_when_it_is_not_local(host, note, monkeypatch, capsys):
    from esc_dist.app import demo as demo_module
    from esc_dist.cli import app as cli_app
    from esc_dist.cli import main

    monkeypatch.setattr(cli_app, "systems_of", lambda args: (None, {"vanilla": Parrot()}))
    monkeypatch.setattr(demo_module, "serve_demo", lambda *a, **k: None)
    assert main(["demo", "--vanilla", "x", "--host", host]) == 0
    err = capsys.readouterr().err
    assert ("lets other machines in" in err) is note
