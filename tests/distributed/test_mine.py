"""Inferential preference mining: pair rules, 2 ranks == 1 rank, SIGKILL + resume, merge."""

import json
import shutil
import subprocess
import sys

import pytest

from esc_dist.config import JudgeConfig
from esc_dist.ipm.mine import build_pair, pairs_from_records
from esc_dist.ipm.prefdial import build_prefdial, read_pairs
from esc_dist.strategies import STRATEGIES
from tests.helpers import (
    PLANNER_ANSWER,
    ROOT,
    AnyChunk,
    gen_setup,
    kill_rank_when,
    launch,
    launch_env,
    read_jsonl,
    wait_for_offline_runs,
)

HIST = [{"role": "seeker", "text": "I lost my job and I feel awful.", "strategy": None}]
PROMPT = [{"role": "system", "content": "s"}, {"role": "user", "content": HIST[0]["text"]}]


def _pair(role, text, gold_strategy="Question", gold_reply="What happened?"):
    return build_pair(role, "t1#s0", "t1", PROMPT, HIST, gold_strategy, gold_reply, text)


# ---------------------------------------------------------------------------------------------
# Pair rules on hand-made samples


def test_planner_pairs():
    pair, info = _pair("planner", "Question")
    assert pair is None and info["status"] == "same_as_gold"
    assert _pair("planner", "[question]\nmore text")[0] is None  # parsed like the planner's output
    pair, info = _pair("planner", "Reflection of feelings")
    assert pair["chosen"] == "Question" and pair["rejected"] == "Reflection of feelings"
    assert pair["sampled_strategy"] == "Reflection of feelings" and pair["parse_error"] is None
    assert pair["sampled_reply"] is None and pair["prompt"] == PROMPT and pair["history"] == HIST
    pair, info = _pair("planner", "I think you should ask")
    assert pair["sampled_strategy"] is None and pair["parse_error"] == "not_a_strategy"
    assert pair["rejected"] == "I think you should ask" and info["status"] == "pair"
    assert _pair("planner", "  \n")[0]["parse_error"] == "empty_output"


def test_generator_pairs():
    assert _pair("generator", "  What   happened? ")[0] is None  # same reply, other spacing
    pair, _ = _pair("generator", " You should see a doctor. ")
    assert pair["chosen"] == "What happened?" and pair["rejected"] == "You should see a doctor."
    assert pair["sampled_strategy"] == "Question" and pair["sampled_reply"] == pair["rejected"]
    assert pair["parse_error"] is None
    assert _pair("generator", "")[0]["parse_error"] == "empty_output"


def test_vanilla_pairs():
    assert _pair("vanilla", "[Question] What happened?")[0] is None
    pair, _ = _pair("vanilla", "[Question] Why?")
    assert pair["chosen"] == "[Question] What happened?" and pair["rejected"] == "[Question] Why?"
    assert pair["sampled_strategy"] == "Question" and pair["sampled_reply"] == "Why?"
    pair, _ = _pair("vanilla", "[Reflection of feelings] What happened?")  # other strategy
    assert pair["sampled_strategy"] == "Reflection of feelings" and pair["parse_error"] is None
    pair, _ = _pair("vanilla", "What happened?")
    assert pair["sampled_strategy"] is None and pair["sampled_reply"] == "What happened?"
    assert pair["parse_error"] == "no_strategy_tag"
    assert _pair("vanilla", "[Hug] there")[0]["parse_error"] == "unknown_strategy_tag"


def test_stats_from_records():
    def rec(k, text, gold="Question", finish="stop"):
        return {
            "id": f"t{k // 2}#s{k % 2}",
            "messages": PROMPT,
            "text": text,
            "finish_reason": finish,
            "new_tokens": 3,
            "meta": {
                "turn_id": f"t{k // 2}",
                "role": "planner",
                "history": HIST,
                "gold_strategy": gold,
                "gold_reply": "x",
            },
        }

    records = [
        rec(0, "Question"),
        rec(1, "Question"),
        rec(2, "Others"),
        rec(3, "??", finish="length"),
    ]
    pairs, stats = pairs_from_records(records[::-1])
    assert [p["id"] for p in pairs] == ["t1#s0", "t1#s1"]
    assert stats["turns"] == 2 and stats["samples"] == 4 and stats["pairs"] == 2
    assert stats["same_as_gold"] == 2 and stats["turns_without_pair"] == 1
    assert stats["unparseable"] == 1 and stats["unparseable_reasons"] == {"not_a_strategy": 1}
    assert stats["finish_reasons"] == {"length": 1, "stop": 3}
    assert stats["confusion"]["Question"] == {
        **dict.fromkeys(STRATEGIES, 0),
        "Question": 2,
        "Others": 1,
        "unparseable": 1,
    }


# ---------------------------------------------------------------------------------------------
# Distributed mining with the tiny model (sampling at temperature 0.7)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, esconv_dir):
    return gen_setup(tmp_path_factory, esconv_dir)


def mine_args(setup, out, role="generator", model=None, extra=()):
    return [
        "mine",
        "--role",
        role,
        "--model",
        str(model or setup / "tiny"),
        "--data",
        str(setup / "data"),
        "--out",
        str(out),
        "mine.n_samples=2",
        "mine.max_turns=48",
        "mine.temperature=0.7",
        "mine.max_new_tokens=12",
        "mine.batch_size=4",
        "mine.chunk_size=8",
        "mine.precision=fp32",
        "run.dist_timeout_s=120",
        *extra,
    ]


# One process, one thread (the CPU is shared: no OpenMP spinning); W&B off where not checked.
ONE_THREAD = launch_env(OMP_NUM_THREADS="1", WANDB_MODE="disabled")
NO_WANDB = launch_env(WANDB_MODE="disabled")
ITEMS, CHUNKS = 96, 12  # 48 turns x 2 samples, 8 items a chunk


@pytest.fixture(scope="module")
def two_ranks(setup):
    out = setup / "mine" / "two"
    launch(mine_args(setup, out), log=setup / "mine-two.log")
    return out


@pytest.mark.distributed
def test_two_ranks_equal_one_rank(setup, two_ranks):
    one = setup / "mine" / "one"
    launch(  # batch_size auto (16 rows on a CPU, not the two ranks' 4): the same samples
        mine_args(setup, one, extra=["mine.batch_size=auto"]),
        nproc=1,
        launcher="python",
        env=ONE_THREAD,
        log=setup / "mine-one.log",
    )
    a, b = (one / "pairs.jsonl").read_bytes(), (two_ranks / "pairs.jsonl").read_bytes()
    assert a == b and a
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two_ranks))
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    assert json.loads((one / "chunks" / "plan.json").read_text())["batch_size"] == 16
    assert all(r["items"] > 0 for r in m2["generation"]["per_rank"])  # both ranks worked
    assert sum(r["items"] for r in m2["generation"]["per_rank"]) == ITEMS
    assert m2["generation"]["items_per_s"] > 0 and m2["generation"]["tokens_per_s"] > 0
    stats = json.loads((two_ranks / "stats.json").read_text())
    assert stats["turns"] == ITEMS // 2 and stats["samples"] == ITEMS
    assert stats["pairs"] + stats["same_as_gold"] == ITEMS
    pairs = read_pairs(two_ranks / "pairs.jsonl", "generator")
    assert len(pairs) == stats["pairs"]
    assert [p["id"] for p in pairs] == sorted(p["id"] for p in pairs)
    assert (two_ranks / "COMPLETED").is_file()
    # different samples of one turn differ (independent seeds per sample index)
    by_turn = {}
    for p in pairs:
        by_turn.setdefault(p["turn_id"], set()).add(p["rejected"])
    assert sum(len(v) == 2 for v in by_turn.values()) > len(by_turn) / 2


@pytest.mark.distributed
def test_judge_reads_mined_pairs_and_wandb_run(setup, two_ranks, tmp_path):
    m = build_prefdial(two_ranks / "pairs.jsonl", tmp_path / "prefdial", JudgeConfig())
    assert m["counts"]["pairs_in"] == json.loads((two_ranks / "stats.json").read_text())["pairs"]
    runs = wait_for_offline_runs(two_ranks / "wandb")
    assert len(runs) == 1 and runs[0]["run"]["job_type"] == "mine-generator"
    assert runs[0]["summary"].get("mine/samples") == ITEMS


@pytest.mark.distributed
def test_sigkill_one_rank_then_resume(setup, two_ranks, monkeypatch):
    out = setup / "mine" / "killed"
    args = mine_args(setup, out)
    with monkeypatch.context() as m:
        m.setenv("ESC_DIST_CHUNK_DELAY_S", "0.4")  # slow enough to be killed half-way
        kill_rank_when(args, AnyChunk(out / "chunks"), setup / "mine-killed-1.log")
    assert not (out / "COMPLETED").exists()
    before = {p.name for p in (out / "chunks").glob("chunk-*.jsonl")}
    assert 0 < len(before) < CHUNKS
    launch(args, env=NO_WANDB, log=setup / "mine-killed-2.log")
    m = json.loads((out / "manifest.json").read_text())
    g = m["generation"]
    assert g["chunks_reused"] == len(before) and g["chunks_computed"] == CHUNKS - len(before)
    ids = [r["id"] for p in sorted((out / "chunks").glob("chunk-*.jsonl")) for r in read_jsonl(p)]
    assert len(ids) == len(set(ids)) == ITEMS  # nothing lost, nothing twice
    assert (out / "pairs.jsonl").read_bytes() == (two_ranks / "pairs.jsonl").read_bytes()

    # once complete, a rerun does no work
    stamp = {p: p.stat().st_mtime_ns for p in [out / "manifest.json", *(out / "chunks").iterdir()]}
    r = launch(args, nproc=1, launcher="python", env=ONE_THREAD, log=setup / "mine-killed-3.log")
    assert "already complete" in (setup / "mine-killed-3.log").read_text()
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert r.returncode == 0


@pytest.mark.distributed
def test_planner_mining_same_as_gold_and_judge(setup, tmp_path):
    """The parrot planner always answers "Reflection of feelings": no pair on the turns whose
    gold strategy is that one, a pair with that sampled strategy on every other turn."""
    from esc_dist.data.tasks import load_task

    out = setup / "mine" / "planner"
    launch(
        mine_args(
            setup,
            out,
            role="planner",
            model=setup / "parrot-planner",
            extra=["mine.max_turns=40", "mine.planner_max_new_tokens=12"],
        ),
        nproc=1,
        launcher="python",
        env=ONE_THREAD,
        log=setup / "mine-planner.log",
    )
    gold = {r["id"]: r["strategy"] for r in load_task(setup / "data", "planner")["train"]}
    first = sorted(gold)[:40]
    same = sum(gold[t] == PLANNER_ANSWER for t in first)
    assert 0 < same < 40
    stats = json.loads((out / "stats.json").read_text())
    assert stats["same_as_gold"] == 2 * same and stats["pairs"] == 2 * (40 - same)
    assert stats["unparseable"] == 0 and stats["turns_without_pair"] == same
    pairs = read_pairs(out / "pairs.jsonl", "planner")
    assert {p["sampled_strategy"] for p in pairs} == {PLANNER_ANSWER}
    assert all(p["chosen"] == gold[p["turn_id"]] != PLANNER_ANSWER for p in pairs)
    m = build_prefdial(out / "pairs.jsonl", tmp_path / "prefdial", JudgeConfig(), role="planner")
    assert m["counts"]["pairs_in"] == len(pairs)


def _merge_cli(out):
    return subprocess.run(
        [sys.executable, "-m", "esc_dist", "merge", "--out", str(out)],
        capture_output=True,
        text=True,
        env=launch_env(),
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.distributed
def test_merge_command(setup, two_ranks, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(two_ranks, copy, ignore=shutil.ignore_patterns("wandb"))
    (copy / "pairs.jsonl").unlink()
    (copy / "COMPLETED").unlink()
    r = _merge_cli(copy)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (copy / "pairs.jsonl").read_bytes() == (two_ranks / "pairs.jsonl").read_bytes()
    assert (copy / "COMPLETED").is_file()
    assert json.loads((copy / "manifest.json").read_text())["merged_alone"] is True
    (copy / "chunks" / "chunk-000005.jsonl").unlink()
    r = _merge_cli(copy)
    assert r.returncode == 2
    assert "missing chunk chunk-000005.jsonl" in r.stderr, r.stderr[-3000:]


@pytest.mark.distributed
def test_completed_output_for_other_inputs_is_refused(setup, two_ranks):
    r = launch(
        mine_args(setup, two_ranks, extra=["mine.temperature=0.9"]),
        nproc=1,
        launcher="python",
        env=ONE_THREAD,
        check=False,
    )
    assert r.returncode == 2
    assert "already holds a completed mine output for other inputs" in r.stdout, r.stdout[-3000:]
