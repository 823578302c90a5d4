"""The annotation page (`esc-dist human-eval serve`, run as a real server process) in a real
headless browser over a real study: sign-in, judgments of two annotators landing in SQLite
exactly as given, the report of them, blinding, text shown as text, and a server killed between
submissions."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from fractions import Fraction
from pathlib import Path

import pytest

from esc_dist.humaneval import CRITERIA
from esc_dist.humaneval.build import build_study
from esc_dist.humaneval.report import write_report
from esc_dist.humaneval.study import Study
from tests.helpers import ROOT

from .conftest import new_driver, screenshot

NAME1, NAME2 = "Zephyr-DPO", "Quokka-SFT"  # in the key only; never on the page
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
N = 4


def _pred(i: int, reply: str) -> dict:
    return {
        "id": f"esconv-9{i:03d}-t001",
        "dialogue_id": f"esconv-9{i:03d}",
        "turn_index": 1,
        "gold_strategy": "Question",
        "gold_reply": "How are you?",
        "pred_strategy": "Question",
        "pred_strategy_raw": "Question",
        "pred_reply": reply,
        "mode": "decoupled",
        "history": [
            {
                "role": "seeker",
                "text": f"I lost my job last week ({i}). " + (HOSTILE if i == 1 else ""),
                "strategy": None,
            }
        ],
    }


@pytest.fixture()
def study(tmp_path) -> Path:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(
        "".join(json.dumps(_pred(i, f"That must be hard, number {i}.")) + "\n" for i in range(N))
    )
    b.write_text(
        "".join(
            json.dumps(_pred(i, HOSTILE if i == 0 else f"Try to relax {i}.")) + "\n"
            for i in range(N)
        )
    )
    build_study(a, b, f"{NAME1},{NAME2}", tmp_path / "study", seed=1)
    return tmp_path / "study"


class Server:
    """`esc-dist human-eval serve STUDY` in its own process."""

    def __init__(self, study: Path, port: int):
        self.study, self.port = study, port
        self.url = f"http://127.0.0.1:{port}/"
        self.proc = None
        self.log = study.parent / "serve.log"

    def start(self) -> "Server":
        env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False")
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "esc_dist",
                    "human-eval",
                    "serve",
                    str(self.study),
                    "--port",
                    str(self.port),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server died: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("server did not come up")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill()


@pytest.fixture()
def server(study):
    from esc_dist.dist import free_port

    srv = Server(study, free_port()).start()
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------------
# Driving the page


def _wait(driver, cond, timeout=60):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page re-renders while it is read: an element gone stale is read again
    return WebDriverWait(
        driver, timeout, ignored_exceptions=(StaleElementReferenceException,)
    ).until(cond)


def _css(driver, sel):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, sel)


def sign_in(driver, url: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(url)  # a new page load is a new session
    box = _wait(driver, lambda d: (_css(d, "#token input") or [None])[0])
    box.send_keys(token)
    _css(driver, "#signin")[0].click()


def progress(driver) -> str:
    return " ".join(e.text for e in _css(driver, "#progress"))


def shown_item(driver) -> dict | None:
    """The item on the page: its context text and the two replies (None while the page is
    re-rendering them)."""
    found = [_css(driver, sel) for sel in ("#context", "#reply-a textarea", "#reply-b textarea")]
    if not all(found):
        return None
    return {
        "context": found[0][0].text,
        "A": found[1][0].get_attribute("value"),
        "B": found[2][0].get_attribute("value"),
    }


def judge(driver, choices: dict[str, str]) -> None:
    """Tick one choice per criterion and submit; wait for the next item (or the end)."""
    labels = {"A": "A is better", "tie": "Tie", "B": "B is better"}
    before, item = progress(driver), shown_item(driver)
    for c, v in choices.items():
        option = next(e for e in _css(driver, f"#crit-{c} label") if e.text == labels[v])
        option.click()
    _css(driver, "#submit")[0].click()
    # the next item is on the page (every item's replies differ), or the end
    _wait(
        driver,
        lambda d: (
            progress(d) != before and ("All" in progress(d) or shown_item(d) not in (None, item))
        ),
    )
    if "All" not in progress(driver):  # a new item starts with nothing ticked
        _wait(driver, lambda d: not _css(d, "[id^=crit-] input:checked"), timeout=10)


def item_of(study: Path, shown: dict) -> str:
    """The item id of what the page shows (the test knows the public items)."""
    items = [json.loads(x) for x in (study / "items.jsonl").read_text().splitlines()]
    return next(it["item_id"] for it in items if (it["A"], it["B"]) == (shown["A"], shown["B"]))


# What each annotator says, per item index of the study's items.jsonl, as the system they
# prefer: 1 (NAME1), 2 (NAME2) or 0 (tie), the same for every criterion.
PREFER = {"ann": [1, 1, 2, 0], "bob": [1, 0, 2, 2]}


def choice_for(study: Path, item_id: str, prefer: int) -> str:
    side = json.loads((study / "key.json").read_text())["items"][item_id]
    if prefer == 0:
        return "tie"
    return "A" if side["A"] == (NAME1 if prefer == 1 else NAME2) else "B"


def test_two_annotators_judge_everything_and_the_report_follows(browser, study, server):
    tokens = {name: Study.open(study).add_annotator(name) for name in PREFER}
    items = [json.loads(x)["item_id"] for x in (study / "items.jsonl").read_text().splitlines()]
    expected_rows = set()
    for name, prefs in PREFER.items():
        sign_in(browser, server.url, tokens[name])
        _wait(browser, lambda d: "Item 1 of 4" in progress(d))
        for _ in range(N):
            item_id = item_of(study, _wait(browser, shown_item))
            choice = choice_for(study, item_id, prefs[items.index(item_id)])
            judge(browser, {c: choice for c in CRITERIA})
            expected_rows |= {(name, item_id, c, choice) for c in CRITERIA}
        assert "All 4 items judged" in progress(browser)
    screenshot(browser, "annotate-done")
    with sqlite3.connect(study / "judgments.sqlite") as conn:
        rows = set(conn.execute("SELECT annotator, item_id, criterion, choice FROM judgments"))
    assert rows == expected_rows and len(rows) == 2 * N * len(CRITERIA)

    report, _ = write_report(study, n_resamples=200, seed=0)
    overall = report["criteria"]["overall"]
    # by hand: system 1 preferred 3 times, system 2 3 times, tie twice, of 8 judgments
    assert overall["counts"] == {"win": 3, "tie": 2, "lose": 3}
    # Fleiss' kappa of the 4 items x 2 annotators (categories win, tie, lose)
    table = [[2, 0, 0], [1, 1, 0], [0, 0, 2], [0, 1, 1]]
    n, m = 2, len(table)
    p_i = [Fraction(sum(x * x for x in r) - n, n * (n - 1)) for r in table]
    p_j = [Fraction(sum(r[j] for r in table), m * n) for j in range(3)]
    pe = sum(x * x for x in p_j)
    kappa = (sum(p_i) / m - pe) / (1 - pe)
    assert overall["fleiss"]["kappa"] == pytest.approx(float(kappa))


def test_blind_escaped_and_no_item_without_a_token(browser, study, server):
    token = Study.open(study).add_annotator("ann")
    page_text = []
    for bad in ("wrong-token", ""):
        sign_in(browser, server.url, bad)
        _wait(browser, lambda d: "Unknown token" in d.page_source)
        assert not any(e.is_displayed() for e in _css(browser, "#reply-a"))
        assert "number 0" not in browser.page_source and "Try to relax" not in browser.page_source
    sign_in(browser, server.url, token)
    _wait(browser, lambda d: "Item 1 of 4" in progress(d))
    saw_hostile = False
    for _ in range(N):
        shown = _wait(browser, shown_item)
        page_text.append(browser.page_source)
        if HOSTILE in (shown["A"], shown["B"]):
            saw_hostile = True  # the reply is shown as the text it is
            screenshot(browser, "annotate")
        if "(1)" in shown["context"]:  # the context too, in the only part that renders HTML
            assert shown["context"].endswith(HOSTILE)
        # neither the script nor the image's handler ran
        assert browser.execute_script("return window.__pwned") is None
        judge(browser, {c: "tie" for c in CRITERIA})
    assert saw_hostile
    assert token not in server.log.read_text()  # nor in what the server logged
    # the page, its config and its API description never name a system
    for path in ("", "config", "gradio_api/info", "info"):
        try:
            body = urllib.request.urlopen(server.url + path, timeout=10).read().decode()
        except OSError:
            continue
        page_text.append(body)
    for text in page_text:
        assert NAME1 not in text and NAME2 not in text
    # nor does it serve the key
    for path in (f"file={study / 'key.json'}", f"gradio_api/file={study / 'key.json'}"):
        try:
            body = urllib.request.urlopen(server.url + path, timeout=10).read().decode()
        except OSError:
            continue
        assert NAME1 not in body


def test_a_killed_server_loses_no_submitted_item(browser, study, server):
    token = Study.open(study).add_annotator("ann")
    sign_in(browser, server.url, token)
    _wait(browser, lambda d: "Item 1 of 4" in progress(d))
    judged = []
    for _ in range(2):
        judged.append(item_of(study, _wait(browser, shown_item)))
        judge(browser, {c: "A" for c in CRITERIA})
    server.kill()
    with sqlite3.connect(study / "judgments.sqlite") as conn:
        rows = list(conn.execute("SELECT item_id, criterion, choice FROM judgments"))
    assert sorted(rows) == sorted((i, c, "A") for i in judged for c in CRITERIA)
    server.start()
    sign_in(browser, server.url, token)
    _wait(browser, lambda d: "Item 3 of 4" in progress(d))  # resumes after the saved ones
    assert item_of(study, _wait(browser, shown_item)) not in judged


def test_two_annotators_submitting_at_once_corrupt_nothing(browser, study, server):
    import threading

    other = new_driver()
    try:
        drivers = {"ann": browser, "bob": other}
        tokens = {name: Study.open(study).add_annotator(name) for name in drivers}
        shown = {}
        for name, d in drivers.items():
            sign_in(d, server.url, tokens[name])
            _wait(d, lambda d: "Item 1 of 4" in progress(d))
            shown[name] = item_of(study, _wait(d, shown_item))
            for c in CRITERIA:
                next(e for e in _css(d, f"#crit-{c} label") if e.text == "B is better").click()
        gate = threading.Barrier(len(drivers))

        def submit(d):
            gate.wait()
            _css(d, "#submit")[0].click()

        threads = [threading.Thread(target=submit, args=(d,)) for d in drivers.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for d in drivers.values():
            _wait(d, lambda d: "Item 2 of 4" in progress(d))
    finally:
        other.quit()
    with sqlite3.connect(study / "judgments.sqlite") as conn:
        rows = set(conn.execute("SELECT annotator, item_id, criterion, choice FROM judgments"))
    assert rows == {(name, shown[name], c, "B") for name in drivers for c in CRITERIA}


def _call(url: str, fn_index: int, data: list, session: str) -> dict:
    """One event of the page called directly over Gradio's queue API, as any client could."""
    import httpx

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
    r.raise_for_status()
    with httpx.stream(
        "GET", url + f"gradio_api/queue/data?session_hash={session}", timeout=60
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError("no answer")


def test_the_api_gives_nothing_without_a_token(study, server):
    token = Study.open(study).add_annotator("ann")
    config = json.loads(urllib.request.urlopen(server.url + "config", timeout=10).read())
    fns = {d["api_name"]: i for i, d in enumerate(config["dependencies"])}
    items = [json.loads(x) for x in (study / "items.jsonl").read_text().splitlines()]
    texts = [t for it in items for t in (it["A"], it["B"])]
    # a forged session state, even with a real token in it, is not this session's state
    forged = {"annotator": "ann", "token": token, "item_id": items[0]["item_id"]}
    answer = json.dumps(
        _call(server.url, fns["on_submit"], [forged, *["A"] * len(CRITERIA)], "forged0001")
    )
    assert "Please sign in" in answer
    for bad in ("wrong", "", token[:-1]):
        answer = json.dumps(_call(server.url, fns["on_signin"], [bad], f"bad{len(bad):07d}"))
        assert "Unknown token" in answer and not any(t in answer for t in texts)
    with sqlite3.connect(study / "judgments.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM judgments").fetchone() == (0,)
    # with the token, the API is the page: an item, and still no system name
    answer = json.dumps(_call(server.url, fns["on_signin"], [token], "good000001"))
    assert any(t in answer for t in texts)
    assert NAME1 not in answer and NAME2 not in answer


def test_a_rotated_token_ends_the_session(browser, study, server):
    token = Study.open(study).add_annotator("ann")
    sign_in(browser, server.url, token)
    _wait(browser, lambda d: "Item 1 of 4" in progress(d))
    Study.open(study).add_annotator("ann", rotate=True)
    for c in CRITERIA:
        next(e for e in _css(browser, f"#crit-{c} label") if e.text == "Tie").click()
    _css(browser, "#submit")[0].click()
    _wait(browser, lambda d: "sign in (again)" in d.page_source)
    assert _css(browser, "#token input")[0].is_displayed()
    with sqlite3.connect(study / "judgments.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM judgments").fetchone() == (0,)
