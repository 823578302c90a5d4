"""The paper's planner pairs (ipm.planner_pairs: mismatch): every mined planner sample whose
strategy is not the gold one is a pair, with the raw sample rejected, and nothing is judged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from esc_dist.config import JudgeConfig, load_recipe
from esc_dist.io import read_json, write_jsonl
from esc_dist.ipm.mine import pairs_from_records
from esc_dist.ipm.prefdial import build_prefdial, read_pairs

HISTORY = [
    {"role": "seeker", "text": "Hi", "strategy": None},
    {"role": "supporter", "text": "Hello, how are you?", "strategy": "Question"},
    {"role": "seeker", "text": "I lost my job and I feel awful.", "strategy": None},
]
PROMPT = [
    {"role": "system", "content": "plan"},
    {
        "role": "user",
        "content": "seeker: Hi\nsupporter: Hello, how are you?\n"
        "seeker: I lost my job and I feel awful.\n",
    },
]

# (turn, sample, gold strategy, sampled text): the planner's samples as the engine returns them
SAMPLES = [
    ("d1-t001", 0, "Reflection of feelings", "Reflection of feelings"),  # match: no pair
    ("d1-t001", 1, "Reflection of feelings", "[reflection of feelings]"),  # match (tag, case)
    ("d1-t001", 2, "Reflection of feelings", "Providing Suggestions"),  # pair
    ("d1-t002", 0, "Question", "Others"),  # pair
    ("d1-t002", 1, "Question", "Others"),  # the same mismatch again: a second pair
    ("d1-t003", 0, "Self-disclosure", "I think you should talk"),  # unparseable: a pair
    ("d1-t003", 1, "Self-disclosure", "  Affirmation and Reassurance \n"),  # pair (raw kept)
    ("d1-t004", 0, "Information", "Information"),  # match
]
# the pairs those samples must give: (id, chosen, rejected, sampled strategy)
EXPECTED = [
    ("d1-t001#s2", "Reflection of feelings", "Providing Suggestions", "Providing Suggestions"),
    ("d1-t002#s0", "Question", "Others", "Others"),
    ("d1-t002#s1", "Question", "Others", "Others"),
    ("d1-t003#s0", "Self-disclosure", "I think you should talk", None),
    ("d1-t003#s1", "Self-disclosure", "Affirmation and Reassurance", "Affirmation and Reassurance"),
]


def engine_records():
    return [
        {
            "id": f"{turn}#s{k}",
            "messages": PROMPT,
            "text": text,
            "finish_reason": "stop",
            "new_tokens": 3,
            "meta": {
                "turn_id": turn,
                "role": "planner",
                "history": HISTORY,
                "gold_strategy": gold,
                "gold_reply": "gold reply",
            },
        }
        for turn, k, gold, text in SAMPLES
    ]


class NoJudge:
    """An LLM client that fails the test when it is asked anything."""

    def __getattr__(self, name):
        raise AssertionError(f"the judge was called ({name}) for mismatch pairs")


@pytest.fixture()
def mined(tmp_path) -> Path:
    pairs, stats = pairs_from_records(engine_records())
    assert (stats["samples"], stats["pairs"], stats["same_as_gold"]) == (8, 5, 3)
    path = tmp_path / "mine" / "pairs.jsonl"
    path.parent.mkdir()
    write_jsonl(path, pairs)
    return path


def test_mismatch_pairs_are_every_mined_mismatch_unjudged(tmp_path, mined):
    # the openai backend with a client that fails when used: nothing may be judged; balance and
    # keep_unparseable=false would cut pairs if they applied
    cfg = JudgeConfig(backend="openai", balance=True, keep_unparseable=False)
    out = tmp_path / "prefdial"
    manifest = build_prefdial(
        mined, out, cfg, role="planner", client=NoJudge(), planner_pairs="mismatch"
    )
    kept = read_pairs(out / "pairs.jsonl", "planner")
    assert [(p["id"], p["chosen"], p["rejected"], p["sampled_strategy"]) for p in kept] == EXPECTED
    judged = read_pairs_with_verdicts(out / "judged.jsonl")
    assert {v["judge"] for v in judged} == {"mismatch"}
    assert all(v["keep"] and not v["chosen_errors"] and not v["rejected_errors"] for v in judged)
    assert judged[3]["reason"] == "kept: mismatch (the sample names no strategy)"
    assert manifest["planner_pairs"] == "mismatch" and manifest["judge_name"] == "mismatch"
    stats = read_json(out / "stats.json")
    assert stats["planner_pairs"] == "mismatch" and "balance" not in stats
    assert (stats["pairs_in"], stats["kept"]) == (5, 5)
    from datasets import load_from_disk

    ds = load_from_disk(str(out / "dataset"))
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in ds] == [
        (c, r) for _, c, r, _ in EXPECTED
    ]


def read_pairs_with_verdicts(path: Path) -> list[dict]:
    from esc_dist.io import iter_jsonl

    return [rec["verdict"] for _, rec in iter_jsonl(path)]


def test_judged_pairs_go_through_the_judge(tmp_path, mined):
    """The same mined pairs under ``judged``: the offline rules keep only rejected strategies
    they can fault, so the two values teach different things."""
    out = tmp_path / "prefdial"
    manifest = build_prefdial(mined, out, JudgeConfig(), role="planner", planner_pairs="judged")
    judged = read_pairs_with_verdicts(out / "judged.jsonl")
    assert {v["judge"] for v in judged} == {"offline"}
    assert manifest["planner_pairs"] == "judged"
    assert manifest["counts"]["kept"] < 5


def test_generator_pairs_are_judged_under_mismatch(tmp_path):
    """``mismatch`` concerns the planner only: a generator pair is still judged."""
    rec = {
        "id": "d1-t001#s0",
        "messages": PROMPT,
        "text": "Calm down, it's not a big deal.",
        "finish_reason": "stop",
        "new_tokens": 8,
        "meta": {
            "turn_id": "d1-t001",
            "role": "generator",
            "history": HISTORY,
            "gold_strategy": "Reflection of feelings",
            "gold_reply": "Losing a job hurts; it makes sense you feel awful.",
        },
    }
    pairs, _ = pairs_from_records([rec])
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, pairs)
    build_prefdial(
        path, tmp_path / "out", JudgeConfig(), role="generator", planner_pairs="mismatch"
    )
    [v] = read_pairs_with_verdicts(tmp_path / "out" / "judged.jsonl")
    assert v["judge"] == "offline" and v["keep"]


def test_planner_pairs_makes_the_planner_judge_and_dpo_stale(tmp_path, mined):
    """ipm.planner_pairs is part of the planner judge stage's key (and not of the other roles'),
    and the prefdial manifest it writes is part of the planner DPO stage's key."""
    from esc_dist.pipeline import plan, stage_key

    run = tmp_path / "run"

    def keys(value: str) -> dict[str, str]:
        recipe = load_recipe(None, [f"run.output_dir={run}", f"ipm.planner_pairs={value}"])
        return {
            s.name: stage_key(s, recipe)
            for s in plan(recipe)
            if s.name.startswith(("judge-", "dpo-"))
        }

    before = keys("judged")
    build_prefdial(
        mined, run / "prefdial" / "planner", JudgeConfig(), role="planner", planner_pairs="judged"
    )
    judged = keys("judged")
    build_prefdial(
        mined, run / "prefdial" / "planner", JudgeConfig(), role="planner", planner_pairs="mismatch"
    )
    mismatch = keys("mismatch")
    assert judged["judge-planner"] == before["judge-planner"]
    assert mismatch["judge-planner"] != judged["judge-planner"]
    assert judged["dpo-planner"] != before["dpo-planner"]  # its input appeared
    assert mismatch["dpo-planner"] != judged["dpo-planner"]  # another prefdial output
    for role in ("generator", "vanilla"):
        assert mismatch[f"judge-{role}"] == judged[f"judge-{role}"]
        assert mismatch[f"dpo-{role}"] == judged[f"dpo-{role}"]
    # under mismatch the judge's settings do not matter to the planner's pairs
    recipe = load_recipe(
        None, [f"run.output_dir={run}", "ipm.planner_pairs=mismatch", "judge.balance=true"]
    )
    stage = next(s for s in plan(recipe) if s.name == "judge-planner")
    assert stage_key(stage, recipe) == mismatch["judge-planner"]
    assert dataclasses.asdict(recipe.ipm) == {"planner_pairs": "mismatch"}
