"""esc-dist human-eval: blinded studies, tokens, SQLite judgments (two processes, SIGKILL), the
report's numbers against hand computations, the Label Studio round trip and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import pytest

from esc_dist.cli import main
from esc_dist.errors import AlreadyJudged, JudgmentError
from esc_dist.humaneval import CRITERIA
from esc_dist.humaneval.build import build_study
from esc_dist.humaneval.labelstudio import export_tasks, import_export
from esc_dist.humaneval.report import write_report
from esc_dist.humaneval.study import Study
from tests.helpers import ROOT, assert_one_line_error, run_cli

NAME1, NAME2 = "Zephyr-DPO", "Quokka-SFT"  # names that cannot occur in any reply or context


def _pred(i: int, reply: str, history: bool = True) -> dict:
    rec = {
        "id": f"esconv-{i // 3:04d}-t{i % 3:03d}",
        "dialogue_id": f"esconv-{i // 3:04d}",
        "turn_index": i % 3,
        "gold_strategy": "Question",
        "gold_reply": "How are you?",
        "pred_strategy": "Question",
        "pred_strategy_raw": "Question",
        "pred_reply": reply,
        "mode": "decoupled",
    }
    if history:
        rec["history"] = [
            {"role": "seeker", "text": f"I lost my job {i}.", "strategy": None},
            {"role": "supporter", "text": " ", "strategy": None},
            {
                "role": "supporter",
                "text": f"That sounds hard {i}.",
                "strategy": "Reflection of feelings",
            },
        ]
    return rec


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _pair(tmp: Path, n: int, history: bool = True, identical: tuple[int, ...] = ()):
    a = _write(tmp / "a.jsonl", [_pred(i, f"first reply {i}", history) for i in range(n)])
    b = _write(
        tmp / "b.jsonl",
        [
            _pred(i, f"first reply {i}" if i in identical else f"second reply {i}", history)
            for i in range(n)
        ],
    )
    return a, b


def _study(tmp: Path, n: int = 12, seed: int = 0, out: str = "study", **kw) -> Path:
    a, b = _pair(tmp, n, **kw)
    build_study(a, b, f"{NAME1},{NAME2}", tmp / out, seed=seed)
    return tmp / out


def _items(study: Path) -> list[dict]:
    return [json.loads(x) for x in (study / "items.jsonl").read_text().splitlines()]


def _key(study: Path) -> dict:
    return json.loads((study / "key.json").read_text())


ALL_A = {c: "A" for c in CRITERIA}


# ---------------------------------------------------------------------------------------------
# Building: blinding, sides, the key


def test_items_are_blind_and_sides_balanced_and_seeded(tmp_path):
    study = _study(tmp_path, n=40, seed=1, identical=(5,))
    public = (study / "items.jsonl").read_bytes() + (study / "study.json").read_bytes()
    for word in (NAME1, NAME2, b"a.jsonl", b"b.jsonl", b"system"):
        word = word.encode() if isinstance(word, str) else word
        assert word not in public
    items = _items(study)
    assert [it["item_id"] for it in items] == [f"item-{k:04d}" for k in range(1, 41)]
    assert all(set(it) == {"item_id", "context", "A", "B"} for it in items)
    # the placeholder blank message is dropped, role and text are kept
    assert items[0]["context"][0]["role"] == "seeker" and len(items[0]["context"]) == 2
    key = _key(study)
    sides = [key["items"][it["item_id"]]["A"] == NAME1 for it in items]
    assert sum(sides) == 20  # balanced
    assert sides != sorted(sides) and sides != sorted(sides, reverse=True)
    turns = [key["items"][it["item_id"]]["turn_id"] for it in items]
    assert turns != sorted(turns)  # the order is shuffled too
    assert key["identical_items"] == 1
    # the same seed: the same items; another seed: other sides
    again = _study(tmp_path, n=40, seed=1, out="again", identical=(5,))
    assert (again / "items.jsonl").read_bytes() == (study / "items.jsonl").read_bytes()
    assert _key(again)["items"] == key["items"]
    other = _study(tmp_path, n=40, seed=2, out="other")
    assert _key(other)["items"] != key["items"]


def test_key_unblinds(tmp_path):
    study = _study(tmp_path, n=9)
    key = _key(study)
    replies = {
        name: {
            r["id"]: r["pred_reply"]
            for r in map(json.loads, (tmp_path / f).read_text().splitlines())
        }
        for name, f in ((NAME1, "a.jsonl"), (NAME2, "b.jsonl"))
    }
    assert key["systems"] == {"system 1": NAME1, "system 2": NAME2}
    for it in _items(study):
        side = key["items"][it["item_id"]]
        assert it["A"] == replies[side["A"]][side["turn_id"]]
        assert it["B"] == replies[side["B"]][side["turn_id"]]
    assert key["sources"]["system 1"]["path"].endswith("a.jsonl")


def test_sample_of_items(tmp_path):
    a, b = _pair(tmp_path, 10)
    build_study(a, b, [NAME1, NAME2], tmp_path / "s", items=4, seed=7)
    key = _key(tmp_path / "s")
    assert (
        len(_items(tmp_path / "s")) == 4
        and sum(s["A"] == NAME1 for s in key["items"].values()) == 2
    )
    build_study(a, b, [NAME1, NAME2], tmp_path / "t", items=4, seed=7)
    assert _key(tmp_path / "t")["items"] == key["items"]


def test_contexts_from_prepared_data(tmp_path, esconv_dir):
    from esc_dist.config import DataConfig
    from esc_dist.data.tasks import load_task, prepare

    prepare(
        DataConfig(
            esconv=str(esconv_dir / "esconv.json"),
            split=str(esconv_dir / "splits" / "decoupledesc_split.json"),
            max_dialogues={"train": 1, "validation": 1, "test": 1},
        ),
        tmp_path / "data",
    )
    turns = list(load_task(tmp_path / "data", "turns")["test"])[:5]
    rows = [
        {**_pred(0, "x", history=False), "id": t["id"], "pred_reply": f"reply {k}"}
        for k, t in enumerate(turns)
    ]
    a = _write(tmp_path / "a.jsonl", rows)
    b = _write(tmp_path / "b.jsonl", [{**r, "pred_reply": r["pred_reply"] + "!"} for r in rows])
    build_study(a, b, "x,y", tmp_path / "s", data_dir=tmp_path / "data")
    by_turn = {t["id"]: t for t in turns}
    key = _key(tmp_path / "s")
    for it in _items(tmp_path / "s"):
        history = by_turn[key["items"][it["item_id"]]["turn_id"]]["history"]
        assert it["context"] == [
            {"role": m["role"], "text": m["text"]} for m in history if m["text"].strip()
        ]


# ---------------------------------------------------------------------------------------------
# Annotators and tokens


def test_tokens(tmp_path):
    study = Study.open(_study(tmp_path))
    t_alice, t_bob = study.add_annotator("alice"), study.add_annotator("bob")
    assert study.authenticate(t_alice) == "alice" and study.authenticate(t_bob) == "bob"
    for wrong in ("", " ", t_alice + "x", t_alice[:-1], t_alice.upper(), "x" * 10_000, None, 42):
        assert study.authenticate(wrong) is None
    with pytest.raises(Exception, match="exists already"):
        study.add_annotator("alice")
    new = study.add_annotator("alice", rotate=True)
    assert study.authenticate(new) == "alice" and study.authenticate(t_alice) is None
    # never in clear, in any file of the study (the database, its WAL, the JSON files)
    for p in study.directory.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert not any(t.encode() in data for t in (t_alice, t_bob, new)), p
    with sqlite3.connect(study.db) as conn:
        rows = conn.execute("SELECT name, token_hash FROM annotators ORDER BY name").fetchall()
    assert rows == [
        ("alice", hashlib.sha256(new.encode()).digest()),
        ("bob", hashlib.sha256(t_bob.encode()).digest()),
    ]


@pytest.mark.parametrize("name", ["", "has space", "labelstudio:7", "x" * 65, "-dash"])
def test_bad_annotator_names(tmp_path, name):
    with pytest.raises(ValueError, match="annotator name"):
        Study.open(_study(tmp_path)).add_annotator(name)


# ---------------------------------------------------------------------------------------------
# Items, submissions, storage


def test_orders_differ_and_resume(tmp_path):
    path = _study(tmp_path, n=12)
    study = Study.open(path)
    study.add_annotator("alice"), study.add_annotator("bob")
    assert study.order("alice") != study.order("bob")
    assert sorted(study.order("alice")) == sorted(study.order("bob"))
    seen = []
    for k in range(3):
        item = study.next_item("alice")
        assert item["position"] == k + 1 and item["total"] == 12
        assert set(item) == {"item_id", "context", "A", "B", "position", "total"}
        seen.append(item["item_id"])
        study.submit("alice", item["item_id"], ALL_A)
    assert seen == study.order("alice")[:3]
    again = Study.open(path)  # a new process, a new page: resumes
    assert again.next_item("alice")["item_id"] == again.order("alice")[3]
    assert again.next_item("alice")["position"] == 4
    assert again.progress("alice") == (3, 12) and again.progress("bob") == (0, 12)
    assert again.next_item("bob")["item_id"] == again.order("bob")[0]
    for item_id in again.order("alice")[3:]:
        again.submit("alice", item_id, ALL_A)
    assert again.next_item("alice") is None and again.progress("alice") == (12, 12)


def test_submit_checks_and_rows(tmp_path):
    study = Study.open(_study(tmp_path, n=4))
    study.add_annotator("alice"), study.add_annotator("bob")
    ok = {
        "fluency": "A",
        "professionalism": "tie",
        "empathy": "B",
        "helpfulness": "A",
        "overall": "B",
    }
    bad = [
        ("alice", "item-0001", {k: v for k, v in ok.items() if k != "empathy"}, "missing empathy"),
        ("alice", "item-0001", {**ok, "humour": "A"}, "unknown 'humour'"),
        ("alice", "item-0001", {**ok, "empathy": "C"}, "empathy must be one of A, tie, B"),
        ("alice", "item-0001", {**ok, "empathy": None}, "got None"),
        ("alice", "item-9999", ok, "unknown item"),
        ("mallory", "item-0001", ok, "unknown annotator"),
        ("alice", "item-0001", ["A"] * 5, "must be a mapping"),
    ]
    for annotator, item_id, choices, message in bad:
        with pytest.raises(JudgmentError, match=message):
            study.submit(annotator, item_id, choices)
    assert study.judgments() == []
    study.submit("alice", "item-0001", ok)
    study.submit("bob", "item-0001", ALL_A)
    study.submit("alice", "item-0003", ALL_A)
    with pytest.raises(AlreadyJudged) as e:
        study.submit("alice", "item-0001", ALL_A)
    assert isinstance(e.value, ValueError) and "final" in str(e.value)
    with sqlite3.connect(study.db) as conn:
        rows = set(conn.execute("SELECT annotator, item_id, criterion, choice FROM judgments"))
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert rows == (
        {("alice", "item-0001", c, v) for c, v in ok.items()}
        | {("bob", "item-0001", c, "A") for c in CRITERIA}
        | {("alice", "item-0003", c, "A") for c in CRITERIA}
    )


SUBMITTER = textwrap.dedent("""
    import os, sys, time
    from esc_dist.errors import AlreadyJudged
    from esc_dist.humaneval import CRITERIA
    from esc_dist.humaneval.study import Study
    study, me, start = Study.open(sys.argv[1]), sys.argv[2], sys.argv[3]
    open(start + "." + me, "w").close()  # ready
    while not os.path.exists(start):
        time.sleep(0.005)
    won = 0
    for item_id in study.order("shared"):
        study.submit(me, item_id, {c: "A" for c in CRITERIA})
        try:
            study.submit("shared", item_id, {c: ("A" if me == "p1" else "B") for c in CRITERIA})
            won += 1
        except AlreadyJudged:
            pass
    print(won)
""")


def test_two_processes_submit_at_once(tmp_path):
    """Both processes start together (each says it is ready, then waits for the start file) and
    race through the same items: each stores its own annotator's judgments and tries to store
    the shared annotator's; every shared item ends up judged once, all of one submission."""
    path = _study(tmp_path, n=30)
    study = Study.open(path)
    for name in ("p1", "p2", "shared"):
        study.add_annotator(name)
    start = tmp_path / "start"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, str(path), me, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for me in ("p1", "p2")
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{start}.{me}").exists() for me in ("p1", "p2")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    start.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(int(o) for o, _ in outs) == 30  # each shared item stored once, by one of them
    with sqlite3.connect(path / "judgments.sqlite") as conn:
        per = dict(conn.execute("SELECT annotator, COUNT(*) FROM judgments GROUP BY annotator"))
        mixed = conn.execute(
            "SELECT item_id FROM judgments WHERE annotator = 'shared' GROUP BY "
            "item_id HAVING COUNT(DISTINCT choice) > 1"
        ).fetchall()
    assert per == {"p1": 150, "p2": 150, "shared": 150}
    assert mixed == []  # no item holds rows of both processes' submissions


def test_a_held_write_lock_is_waited_for(tmp_path):
    """Another process holding the write lock makes a submission wait (busy timeout), not
    fail; it goes through once the lock is released."""
    path = _study(tmp_path, n=3)
    Study.open(path).add_annotator("alice")
    holder = sqlite3.connect(path / "judgments.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    script = (
        "import sys, time; from esc_dist.humaneval.study import Study; "
        "s = Study.open(sys.argv[1]); print('ready', flush=True); t = time.time(); "
        "s.submit('alice', 'item-0002', {c: 'B' for c in Study.CRITERIA}); "
        "print('stored', round(time.time() - t, 1))"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.stdout.readline().strip() == "ready"  # imports done: next it submits
    time.sleep(2)
    assert p.poll() is None  # still waiting for the lock
    holder.execute("COMMIT")
    holder.close()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and out.startswith("stored"), err
    assert float(out.split()[1]) >= 2  # it waited for the lock, then went through
    assert len(Study.open(path).judgments()) == 5


KILLED = textwrap.dedent("""
    import sys, time
    from esc_dist.humaneval import CRITERIA
    from esc_dist.humaneval.study import Study
    study = Study.open(sys.argv[1])
    for k in range(int(sys.argv[2])):
        item = study.next_item("alice")
        study.submit("alice", item["item_id"], {c: "tie" for c in CRITERIA})
        print(item["item_id"], flush=True)
    time.sleep(600)
""")


def test_sigkill_loses_no_committed_judgment(tmp_path):
    path = _study(tmp_path, n=10)
    Study.open(path).add_annotator("alice")
    p = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(path), "4"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    done = [p.stdout.readline().strip() for _ in range(4)]
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    study = Study.open(path)
    rows = study.judgments()
    assert len(rows) == 4 * 5 and {r[1] for r in rows} == set(done)
    assert study.progress("alice") == (4, 10)
    assert study.next_item("alice")["item_id"] == study.order("alice")[4]
    with sqlite3.connect(path / "judgments.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ---------------------------------------------------------------------------------------------
# The report against hand computations

# Unblinded labels (0: system 1 better, 1: tie, 2: system 2 better) of 4 items by annotators
# a, b, c; None: not judged.
COMPLETE = [[0, 0, 0], [0, 0, 1], [2, 2, 1], [0, 1, 2]]
INCOMPLETE = [[0, 0, 0], [0, 0, 1], [2, 2, 1], [0, 1, None]]


def _fleiss_by_hand(table: list[list[int]]) -> float:
    """The textbook formula: P_i = (sum_j n_ij^2 - n) / (n (n - 1)), p_j = column share,
    kappa = (mean P_i - sum p_j^2) / (1 - sum p_j^2)."""
    n, N = sum(table[0]), len(table)
    P = [Fraction(sum(x * x for x in row) - n, n * (n - 1)) for row in table]
    p = [Fraction(sum(row[j] for row in table), N * n) for j in range(len(table[0]))]
    pe = sum(x * x for x in p)
    return (sum(P) / N - pe) / (1 - pe)


def _alpha_by_hand(units: list[list[int | None]]) -> float:
    """Krippendorff's nominal alpha from the coincidence matrix: o_ck = sum over units of the
    ordered pairs (c, k) of values from different annotators / (m_u - 1); D_o = sum_{c != k}
    o_ck / n; D_e = sum_{c != k} n_c n_k / (n (n - 1))."""
    o = {}
    for unit in units:
        values = [v for v in unit if v is not None]
        m = len(values)
        if m < 2:
            continue
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                if i != j:
                    o[c, k] = o.get((c, k), 0) + Fraction(1, m - 1)
    n_c = {}
    for (c, _), v in o.items():
        n_c[c] = n_c.get(c, 0) + v
    n = sum(n_c.values())
    d_o = sum(v for (c, k), v in o.items() if c != k) / n
    d_e = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k) / (n * (n - 1))
    return 1 - d_o / d_e


def _judge(path: Path, table: list[list[int | None]], criteria=CRITERIA, ties=()) -> Study:
    """Submit ``table``'s labels (blinded back through the key) for every criterion; the
    criteria in ``ties`` get "tie" from everyone."""
    study = Study.open(path)
    key = _key(path)
    names = ["a", "b", "c"]
    for name in names:
        study.add_annotator(name)
    for row, it in zip(table, _items(path)):
        side = key["items"][it["item_id"]]
        for name, label in zip(names, row):
            if label is None:
                continue
            system = {0: NAME1, 2: NAME2}.get(label)
            choice = "tie" if label == 1 else ("A" if side["A"] == system else "B")
            study.submit(name, it["item_id"], {c: "tie" if c in ties else choice for c in criteria})
    return study


def test_report_equals_hand_computation(tmp_path):
    path = _study(tmp_path, n=4)
    _judge(path, COMPLETE, ties=("fluency",))
    report, out = write_report(path, n_resamples=500, seed=3)
    overall = report["criteria"]["overall"]
    assert overall["counts"] == {"win": 6, "tie": 3, "lose": 3}
    assert overall["shares"] == {"win": 0.5, "tie": 0.25, "lose": 0.25}
    assert _fleiss_by_hand([[3, 0, 0], [2, 1, 0], [0, 1, 2], [1, 1, 1]]) == Fraction(1, 15)
    assert overall["fleiss"]["kappa"] == pytest.approx(1 / 15)
    assert overall["fleiss"]["items"] == 4 and overall["fleiss"]["items_left_out"] == 0
    assert _alpha_by_hand(COMPLETE) == Fraction(13, 90)
    assert overall["krippendorff"]["alpha"] == pytest.approx(13 / 90)
    # everyone said tie: agreement is undefined, not a number
    fluency = report["criteria"]["fluency"]
    assert fluency["shares"]["tie"] == 1.0 and fluency["fleiss"]["kappa"] is None
    assert "one category" in fluency["fleiss"]["note"] and fluency["krippendorff"]["alpha"] is None
    assert report["counts"] == {
        "items": 4,
        "judgments": 60,
        "items_judged": 4,
        "annotators": 3,
        "identical_items": 0,
    }
    assert json.loads((out / "report.json").read_text()) == report
    assert "| overall | 50.0% (6)" in (out / "report.md").read_text()
    assert (out / "win_tie_lose.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_incomplete_items(tmp_path):
    path = _study(tmp_path, n=4)
    _judge(path, INCOMPLETE)
    overall = write_report(path, n_resamples=0)[0]["criteria"]["overall"]
    assert overall["counts"] == {"win": 6, "tie": 3, "lose": 2} and overall["ci95"] is None
    # Fleiss: the three items every annotator judged
    assert _fleiss_by_hand([[3, 0, 0], [2, 1, 0], [0, 1, 2]]) == Fraction(1, 4)
    assert overall["fleiss"]["kappa"] == pytest.approx(0.25)
    assert (overall["fleiss"]["items"], overall["fleiss"]["items_left_out"]) == (3, 1)
    # Krippendorff: all of them, the fourth with two values
    assert _alpha_by_hand(INCOMPLETE) == Fraction(1, 6)
    assert overall["krippendorff"]["alpha"] == pytest.approx(1 / 6)


def test_bootstrap_intervals(tmp_path):
    path = _study(tmp_path, n=12)
    study = Study.open(path)
    study.add_annotator("a"), study.add_annotator("b")
    for k, item_id in enumerate(study.order("a")):
        for name in ("a", "b"):
            study.submit(
                name, item_id, {c: ("A", "tie", "B")[(k + len(name)) % 3] for c in CRITERIA}
            )
    r1 = write_report(path, tmp_path / "r1", n_resamples=300, seed=5)[0]
    r2 = write_report(path, tmp_path / "r2", n_resamples=300, seed=5)[0]
    r3 = write_report(path, tmp_path / "r3", n_resamples=300, seed=6)[0]
    for c, r in r1["criteria"].items():
        assert r["ci95"] == r2["criteria"][c]["ci95"]
        for o, (lo, hi) in r["ci95"].items():
            assert 0 <= lo <= r["shares"][o] <= hi <= 1 and lo < hi
    assert r1["criteria"] != r3["criteria"]


# ---------------------------------------------------------------------------------------------
# Label Studio


def test_labelstudio_round_trip(tmp_path):
    native = _study(tmp_path, n=4)
    via_ls = tmp_path / "via_ls"
    shutil.copytree(native, via_ls)  # the same study before any judgment
    _judge(native, INCOMPLETE)
    export_tasks(via_ls, tmp_path / "ls")
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert NAME1 not in json.dumps(tasks) and NAME2 not in json.dumps(tasks)
    config = ET.fromstring((tmp_path / "ls" / "labeling_config.xml").read_text())
    assert {c.get("name"): [x.get("value") for x in c] for c in config.iter("Choices")} == {
        c: ["A", "tie", "B"] for c in CRITERIA
    }
    # what Label Studio exports after three users labelled the same as the native annotators
    native_rows = {(a, i): {} for a, i, _, _ in Study.open(native).judgments()}
    for a, i, c, v in Study.open(native).judgments():
        native_rows[a, i][c] = v
    users = {"a": 1, "b": {"id": 2, "email": "b@example.org"}, "c": 3}
    export = []
    for t, task in enumerate(tasks):
        item_id = task["data"]["item_id"]
        annotations = [
            {
                "id": 10 * t + k,
                "completed_by": users[a],
                "was_cancelled": False,
                "result": [
                    {
                        "from_name": c,
                        "to_name": "reply_a",
                        "type": "choices",
                        "value": {"choices": [v]},
                    }
                    for c, v in native_rows[a, item_id].items()
                ]
                + [{"from_name": "notes", "type": "textarea", "value": {"text": ["hm"]}}],
            }
            for k, a in enumerate("abc")
            if (a, item_id) in native_rows
        ]
        annotations.append({"completed_by": 4, "was_cancelled": True, "result": []})
        annotations.append({"completed_by": 5, "result": annotations[0]["result"][:2]})
        export.append({"id": t + 1, "data": task["data"], "annotations": annotations})
    (tmp_path / "export.json").write_text(json.dumps(export))
    counts = import_export(via_ls, tmp_path / "export.json")
    assert (counts["new"], counts["annotators"], counts["skipped"]) == (
        11,
        3,
        {"cancelled": 4, "incomplete": 4},
    )
    again = import_export(via_ls, tmp_path / "export.json")
    assert (again["new"], again["unchanged"]) == (0, 11)
    r_native = write_report(native, n_resamples=200)[0]
    r_ls = write_report(via_ls, n_resamples=200)[0]
    assert r_ls["criteria"] == r_native["criteria"]
    assert set(r_ls["annotators"]) == {"labelstudio:1", "labelstudio:2", "labelstudio:3"}


# ---------------------------------------------------------------------------------------------
# The command line: the whole flow, and one line per mistake


def test_cli_flow(tmp_path, capsys):
    a, b = _pair(tmp_path, 6)
    study = tmp_path / "s"
    assert (
        main(
            [
                "human-eval",
                "build",
                str(a),
                str(b),
                "--names",
                f"{NAME1},{NAME2}",
                "--out",
                str(study),
                "--seed",
                "4",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["human-eval", "add-annotator", str(study), "alice"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert len(out.splitlines()) == 1 and token not in err and "shown once" in err
    s = Study.open(study)
    assert s.authenticate(token) == "alice"
    while (item := s.next_item("alice")) is not None:
        s.submit("alice", item["item_id"], ALL_A)
    assert (
        main(
            [
                "human-eval",
                "report",
                str(study),
                "--bootstrap",
                "100",
                "--config",
                str(ROOT / "configs" / "tiny-cpu.yaml"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"# Human evaluation: {NAME1} vs {NAME2}" in out and token not in out
    assert (study / "report" / "report.json").is_file()


def _cli_error(capsys, args: list[str], needle: str) -> str:
    rc = main(["human-eval", *args])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("esc-dist human-eval: error: ")]
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def test_cli_errors(tmp_path, capsys):
    a, b = _pair(tmp_path, 6)
    c = _write(tmp_path / "c.jsonl", [_pred(i, "r") for i in range(1, 7)])
    line = _cli_error(
        capsys,
        ["build", str(a), str(c), "--names", "x,y", "--out", str(tmp_path / "s")],
        "not predictions of the same turns",
    )
    assert str(a) in line and str(c) in line and "esconv-0000-t000" in line
    (tmp_path / "nohist").mkdir()
    a0, b0 = _pair(tmp_path / "nohist", 3, history=False)
    _cli_error(
        capsys,
        ["build", str(a0), str(b0), "--names", "x,y", "--out", str(tmp_path / "s")],
        "give --data DIR",
    )
    _cli_error(
        capsys,
        ["build", str(a), str(b), "--names", "x,x", "--out", str(tmp_path / "s")],
        "different names",
    )
    _cli_error(
        capsys,
        ["build", str(a), str(b), "--names", "x,y", "--out", str(tmp_path / "s"), "--items", "7"],
        "--items 7: choose 1 to 6",
    )
    assert (
        main(
            ["human-eval", "build", str(a), str(b), "--names", "x,y", "--out", str(tmp_path / "s")]
        )
        == 0
    )
    study = tmp_path / "s"
    _cli_error(
        capsys,
        ["build", str(a), str(b), "--names", "x,y", "--out", str(study)],
        "a study is built once",
    )
    _cli_error(capsys, ["report", str(study)], "no judgments yet")
    _cli_error(capsys, ["add-annotator", str(study), "bad name"], "annotator name 'bad name'")
    _cli_error(capsys, ["add-annotator", str(study), "bob", "--rotate"], "no annotator 'bob'")
    _cli_error(capsys, ["report", str(tmp_path)], "study.json: study file not found")
    result = [{"from_name": "empathy", "type": "choices", "value": {"choices": ["C"]}}]
    (tmp_path / "export.json").write_text(
        json.dumps(
            [
                {
                    "data": {"item_id": "item-0001"},
                    "annotations": [{"completed_by": 1, "result": result}],
                }
            ]
        )
    )
    line = _cli_error(
        capsys,
        ["import-labelstudio", str(study), str(tmp_path / "export.json")],
        "task 0 (item-0001), annotation 0: empathy: expected one choice",
    )
    assert "export.json" in line
    (tmp_path / "export.json").write_text('{"not": "a list"}')
    _cli_error(
        capsys,
        ["import-labelstudio", str(study), str(tmp_path / "export.json")],
        "expected a JSON list of tasks",
    )
    # a changed items file, a broken key
    key = json.loads((study / "key.json").read_text())
    (study / "key.json").write_text(json.dumps({**key, "items": {}}))
    Study.open(study).add_annotator("alice")
    Study.open(study).submit("alice", "item-0001", ALL_A)
    _cli_error(capsys, ["report", str(study)], "key.json, key items: its items are not")
    with open(study / "items.jsonl", "a") as f:
        f.write('{"item_id": "item-0099", "context": [], "A": "", "B": ""}\n')
    _cli_error(capsys, ["report", str(study)], "changed since the study was built")
    (study / "items.jsonl").write_text('{"item_id": "item-0001", "context": "hi"}\n')
    _cli_error(
        capsys,
        ["export-labelstudio", str(study), "--out", str(tmp_path / "ls")],
        "items.jsonl, line 1: missing key(s) 'A', 'B'",
    )


def test_missing_extra_is_one_line(tmp_path, capsys, monkeypatch):
    path = _study(tmp_path, n=4)
    _judge(path, COMPLETE)
    monkeypatch.setitem(sys.modules, "krippendorff", None)  # as if not installed
    _cli_error(capsys, ["report", str(path)], "esc-dist[app]")


def test_subprocess_error_is_one_line(tmp_path):
    a, _ = _pair(tmp_path, 3)
    r = run_cli(
        [
            "human-eval",
            "build",
            str(a),
            str(tmp_path / "missing.jsonl"),
            "--names",
            "x,y",
            "--out",
            "{tmp}/s",
        ],
        tmp_path,
    )
    assert_one_line_error(r, "human-eval", "missing.jsonl")


def test_the_page_context_is_escaped():
    from esc_dist.app.annotate import context_html

    out = context_html(
        [
            {"role": "seeker", "text": "<script>x()</script> & <b>hi</b>"},
            {"role": "supporter", "text": "ok"},
        ]
    )
    assert "<script>" not in out and "<b>hi" not in out
    assert "&lt;script&gt;x()&lt;/script&gt; &amp; &lt;b&gt;hi&lt;/b&gt;" in out
    assert out.count("<p ") == 2
