"""Error rates of generated replies (esc_dist.eval.psych_errors): offline labels on hand-written
replies, the rates against a count made here, the LLM backend against the local fake endpoint
(``tests.helpers.FakeServer``) with scripted answers, and the bar plot.

All dialogue text here is written for these tests (no ESConv data).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from esc_dist.config import JudgeConfig
from esc_dist.errors import ConfigError, DataError, LLMError
from esc_dist.eval.plots import plot_error_rates
from esc_dist.eval.psych_errors import (
    ERROR_TYPES,
    NONE,
    PROMPT_VERSION,
    error_messages,
    error_rates,
    offline_reply_errors,
    parse_errors,
)
from esc_dist.llm_client import LLMClient
from tests.helpers import ROOT, Reply

SM, TR, LE, EM, ES = ERROR_TYPES
KEY_ENV = "ESC_DIST_TEST_JUDGE_KEY"
SECRET = "sk-test-psych-0123456789-do-not-leak"


def dialogue(*texts):
    """History records alternating seeker/supporter, starting with the seeker."""
    return [
        {
            "role": "seeker" if i % 2 == 0 else "supporter",
            "text": t,
            "strategy": None if i % 2 == 0 else "Question",
        }
        for i, t in enumerate(texts)
    ]


OPEN = ("Hello there", "Hi, what would you like to talk about today?")
EXAM = dialogue(*OPEN, "I failed my driving exam again and I feel so sad about it.")
JOB = dialogue(*OPEN, "I lost my job today and I am really anxious about money.")
SISTER = dialogue(*OPEN, "My sister stopped talking to me after our argument about the wedding.")

# (history, reply, the errors the offline rules must find)
CASES = {
    "le": (EXAM, "Come on, it's not that bad, just move on.", [LE]),
    "es": (JOB, "You should update your resume and apply for a new job this week.", [ES]),
    "tr": (SISTER, "Everything will be fine, stay positive!", [TR]),
    "none": (EXAM, "I'm sorry, failing the driving exam twice must be hard.", []),
    "le+es": (
        JOB,
        "Calm down. You should update your resume and apply for a new job this week.",
        [LE, ES],
    ),
}


def test_names_and_order():
    assert ERROR_TYPES == (
        "Strategy Mismatch",
        "Template Response",
        "Lack Empathy",
        "Emotion Misread",
        "Early Emotion Shift",
    )
    assert NONE == "none"


@pytest.mark.parametrize("case", sorted(CASES))
def test_offline_reply_errors(case):
    history, reply, expected = CASES[case]
    assert offline_reply_errors(history, reply) == expected


def test_offline_rates_against_a_count():
    # label of each record, written out by hand (not computed by the rules)
    plan = [
        ("a", "le"),
        ("b", "es"),
        ("c", "tr"),
        ("d", "tr"),
        ("e", "none"),
        ("f", "le+es"),
        ("g", "none"),
        ("h", "tr"),
    ]
    expected = {
        "a": [LE],
        "b": [ES],
        "c": [TR],
        "d": [TR],
        "e": [],
        "f": [LE, ES],
        "g": [],
        "h": [TR],
    }
    records = [{"id": i, "pred_reply": CASES[c][1], "pred_strategy": None} for i, c in plan]
    histories = {i: CASES[c][0] for i, c in plan}
    # the backend argument wins over the recipe's; offline needs no endpoint
    out = error_rates(
        records,
        histories,
        JudgeConfig(backend="openai"),
        None,
        backend="offline",
        keep_per_item=True,
    )
    n = len(plan)
    count = {t: sum(t in e for e in expected.values()) for t in ERROR_TYPES}
    clean = sum(not e for e in expected.values())
    assert (count[TR], count[LE], count[ES], clean) == (3, 2, 2, 2)
    assert out["backend"] == "offline" and "model" not in out and "client" not in out
    assert out["version"] == "offline-rules-v2"
    assert out["types"] == [TR, LE, ES]
    assert (out["n"], out["labelled"], out["parse_failures"], out["request_failures"]) == (
        n,
        n,
        0,
        0,
    )
    assert out["rates"] == {
        SM: None,
        TR: round(3 / n, 4),
        LE: round(2 / n, 4),
        EM: None,
        ES: round(2 / n, 4),
    }
    assert out["none"] == round(clean / n, 4) and out["any_error"] == round((n - clean) / n, 4)
    assert out["counts"] == {SM: None, TR: 3, LE: 2, EM: None, ES: 2, NONE: 2, "any_error": 6}
    assert out["items"] == expected

    # objects work as well as mappings
    class Pred:
        def __init__(self, rid, reply):
            self.id, self.pred_reply, self.pred_strategy = rid, reply, None

    objs = [Pred(r["id"], r["pred_reply"]) for r in records]
    assert error_rates(objs, histories, JudgeConfig(), None)["rates"] == out["rates"]


def test_empty_and_bad_inputs():
    out = error_rates([], {}, JudgeConfig(), None)
    assert out["n"] == out["labelled"] == 0 and out["none"] is None
    assert set(out["rates"].values()) == {None}
    with pytest.raises(DataError, match="no dialogue history"):
        error_rates(
            [{"id": "x", "pred_reply": "hi", "pred_strategy": None}], {}, JudgeConfig(), None
        )
    with pytest.raises(ConfigError, match="unknown judge backend"):
        error_rates([], {}, JudgeConfig(), None, backend="oracle")


def test_parse_errors():
    assert parse_errors({"errors": []}) == []
    assert parse_errors({"errors": ["early  emotion shift", "STRATEGY MISMATCH", SM]}) == [SM, ES]
    for bad in (
        {"errors": ["Rudeness"]},
        {"errors": "Lack Empathy"},
        {"errors": [3]},
        {"errors": [], "why": "x"},
        {"A_errors": []},
    ):
        with pytest.raises(ValueError):
            parse_errors(bad)


def test_prompt():
    msgs = error_messages(JOB, "Have you tried budgeting?", "Providing Suggestions")
    system, user = msgs[0]["content"], msgs[1]["content"]
    assert all(f'"{t}"' in system for t in ERROR_TYPES) and '{"errors": [...]}' in system
    assert "Seeker: I lost my job today" in user
    assert "last message:\nI lost my job today and I am really anxious about money." in user
    assert "meant to realise: Providing Suggestions (" in user
    assert user.index("Have you tried budgeting?") > user.index("meant to realise")
    unknown = error_messages(JOB, "Ok.", None)[1]["content"]
    assert "meant to realise: not given" in unknown
    assert "has not said anything yet" in error_messages([], "Hi", None)[1]["content"]


def test_eval_does_not_import_ipm():
    code = (
        "import sys, esc_dist.eval.psych_errors, esc_dist.eval.plots; "
        "print([m for m in sys.modules if m.startswith('esc_dist.ipm')])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert r.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# The LLM backend


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def cfg_for(server, **kw) -> JudgeConfig:
    return JudgeConfig(
        backend="openai", model="fake-judge", base_url=server.url, api_key_env=KEY_ENV, **kw
    )


def fast_client(server, cache_dir, **kw) -> LLMClient:
    opts = dict(
        api_key_env=KEY_ENV,
        concurrency=4,
        max_retries=2,
        timeout=5.0,
        cache_dir=cache_dir,
        prompt_version=PROMPT_VERSION,
        base_delay=0.001,
        max_delay=0.01,
    )
    opts.update(kw)
    return LLMClient(server.url, "fake-judge", **opts)


# The scripted model: the answer is chosen by the reply under review ("rN ...").
ANSWERS = {
    "r1": '{"errors": ["Strategy Mismatch", "emotion  misread"]}',
    "r2": '{"errors": []}',
    "r3": '```json\n{"errors": ["Lack Empathy", "Template Response"]}\n```',
    "r4": '{"errors": ["Rudeness"]}',  # an unknown error: a parse failure
    "r5": "The reply looks fine to me.",  # no JSON: a parse failure
    "r6": '{"errors": ["Early Emotion Shift"]}',
}


def scripted(body: dict) -> Reply:
    user = body["messages"][-1]["content"]
    reply = user.split("The supporter's reply to review:\n")[1]
    return Reply(content=ANSWERS[re.match(r"r\d+", reply).group(0)])


RECORDS = [
    {
        "id": f"t{k}",
        "pred_reply": f"r{k} some reply",
        "pred_strategy": "Question" if k % 2 else None,
    }
    for k in range(1, 7)
]
HISTORIES = {r["id"]: EXAM for r in RECORDS}


def test_openai_rates_retry_and_cache(server, key, tmp_path):
    server.respond = scripted
    server.script = [Reply(status=500, raw=b"{}")]  # the first request fails, its retry succeeds
    cfg, cache = cfg_for(server), tmp_path / "cache"
    c = fast_client(server, cache)
    out = error_rates(RECORDS, HISTORIES, cfg, cache, client=c, keep_per_item=True)
    assert out["backend"] == "openai" and out["model"] == "fake-judge"
    assert out["version"] == f"{PROMPT_VERSION}:fake-judge"
    assert out["types"] == list(ERROR_TYPES)
    assert (out["n"], out["labelled"], out["parse_failures"], out["request_failures"]) == (
        6,
        4,
        2,
        0,
    )
    assert out["items"] == {
        "t1": [SM, EM],
        "t2": [],
        "t3": [TR, LE],
        "t4": None,
        "t5": None,
        "t6": [ES],
    }
    assert out["counts"] == {SM: 1, TR: 1, LE: 1, EM: 1, ES: 1, NONE: 1, "any_error": 3}
    assert out["rates"] == dict.fromkeys(ERROR_TYPES, 0.25)
    assert out["none"] == 0.25 and out["any_error"] == 0.75
    assert out["client"]["retries"] == 1 and out["client"]["requests"] == 7
    assert len(server.requests) == 7
    # the prompt carries the strategy when it is known
    users = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert any("r1 some reply" in u and "realise: Question (" in u for u in users)
    assert any("r2 some reply" in u and "realise: not given" in u for u in users)
    # a second run reads every answer from the cache: no request at all
    c2 = fast_client(server, cache)
    again = error_rates(RECORDS, HISTORIES, cfg, cache, client=c2, keep_per_item=True)
    assert len(server.requests) == 7 and c2.stats()["requests"] == 0
    assert c2.stats()["cache_hits"] == 6
    assert {k: v for k, v in again.items() if k != "client"} == {
        k: v for k, v in out.items() if k != "client"
    }


def test_openai_request_failures(server, key, tmp_path):
    server.respond = scripted
    records = RECORDS[:2]
    histories = {r["id"]: JOB for r in records}
    # one request out of two fails for good (two attempts, two 500s)
    fail_twice = [Reply(status=500, raw=b"{}"), Reply(status=500, raw=b"{}")]
    server.script = list(fail_twice)
    with pytest.raises(LLMError, match="psychological error rates: 1 of 2 requests failed"):
        error_rates(
            records,
            histories,
            cfg_for(server),
            None,
            client=fast_client(server, None, concurrency=1, max_retries=1),
        )
    server.script = list(fail_twice)
    out = error_rates(
        records,
        histories,
        cfg_for(server, max_failed_share=0.5),
        None,
        client=fast_client(server, None, concurrency=1, max_retries=1),
    )
    assert out["request_failures"] == 1 and out["labelled"] == 1 and out["n"] == 2
    assert out["rates"] == dict.fromkeys(ERROR_TYPES, 0.0) and out["none"] == 1.0


def test_openai_key_never_in_the_cache(server, key, tmp_path):
    """The client built from the recipe: the key goes out as a header, never into a file."""
    server.respond = scripted
    cache = tmp_path / "cache"
    out = error_rates(RECORDS[:3], HISTORIES, cfg_for(server), cache)
    assert out["labelled"] == 3
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    files = [f for f in cache.rglob("*") if f.is_file()]
    assert len(files) == 3
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert SECRET not in text and json.loads(text)["prompt_version"] == PROMPT_VERSION
    assert SECRET not in json.dumps(out)


# ---------------------------------------------------------------------------------------------
# The plot


def test_plot_error_rates(tmp_path):
    from PIL import Image

    offline = error_rates(
        [{"id": "a", "pred_reply": CASES["le"][1], "pred_strategy": None}],
        {"a": EXAM},
        JudgeConfig(),
        None,
    )
    llm = {"rates": dict.fromkeys(ERROR_TYPES, 0.2), "none": 0.4}
    path = plot_error_rates({"sft": offline, "dpo": llm}, tmp_path / "errors.png", "Errors")
    assert path == tmp_path / "errors.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with Image.open(path) as im:
        assert im.size == (880, 528)  # 8 x 4.8 inches at 110 dpi
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 10  # bars, text and axes, not a blank canvas
    # more systems, a wider figure
    wide = plot_error_rates({f"s{i}": llm for i in range(5)}, tmp_path / "wide.png", "Errors")
    with Image.open(wide) as im:
        assert im.size == (1100, 528)
