"""Teacher-forced inference: decoupled conditioning on the planner's prediction, vanilla
parsing, the predictions schema, 2 ranks == 1 rank."""

import json

import pytest

from esc_dist.data.tasks import generator_prompt, history_messages, load_task
from esc_dist.eval.predictions import load_predictions
from esc_dist.generation import Sampling
from esc_dist.infer import generator_items, prediction
from tests.helpers import (
    MAX_HISTORY,
    PLANNER_ANSWER,
    VANILLA_ANSWER,
    chunk_records,
    gen_setup,
    launch,
    launch_env,
    wait_for_offline_runs,
)

TURN = {
    "id": "d-t001",
    "dialogue_id": "d",
    "turn_index": 1,
    "strategy": "Question",
    "reply": "What happened?",
    "history": [
        {"role": "seeker", "text": "Hi", "strategy": None},
        {"role": "supporter", "text": "Hello", "strategy": "Others"},
        {"role": "seeker", "text": "I feel low.", "strategy": None},
    ],
}


def test_generator_is_conditioned_on_the_predicted_strategy():
    s = Sampling(max_new_tokens=4)
    (item,) = generator_items([TURN], [{"id": "d-t001", "text": " Reflection of feelings\n"}], s, 2)
    assert item.messages == generator_prompt(
        history_messages(TURN["history"]), "Reflection of feelings", 2
    )
    assert item.meta["pred_strategy"] == "Reflection of feelings"
    assert item.meta["pred_strategy_raw"] == "Reflection of feelings"
    (item,) = generator_items([TURN], [{"id": "d-t001", "text": "no idea"}], s, None)
    assert item.meta["pred_strategy"] is None and item.meta["pred_strategy_raw"] == "no idea"
    assert item.messages == generator_prompt(history_messages(TURN["history"]), "Others", None)


def test_vanilla_prediction_parsing():
    meta = {
        "dialogue_id": "d",
        "turn_index": 1,
        "gold_strategy": "Question",
        "gold_reply": "What happened?",
    }
    p = prediction(
        {"id": "d-t001", "text": " [Affirmation] You can do it ", "meta": meta}, "vanilla"
    )
    assert p == {
        "id": "d-t001",
        "dialogue_id": "d",
        "turn_index": 1,
        "gold_strategy": "Question",
        "gold_reply": "What happened?",
        "pred_strategy": "Affirmation and Reassurance",
        "pred_strategy_raw": "[Affirmation] You can do it",
        "pred_reply": "You can do it",
        "mode": "vanilla",
    }
    p = prediction({"id": "d-t001", "text": "You can do it", "meta": meta}, "vanilla")
    assert p["pred_strategy"] is None and p["pred_reply"] == "You can do it"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, esconv_dir):
    return gen_setup(tmp_path_factory, esconv_dir)


def infer_args(setup, out, mode="decoupled", extra=()):
    models = {
        "decoupled": [
            "--planner",
            str(setup / "parrot-planner"),
            "--generator",
            str(setup / "tiny"),
        ],
        "generator-gold": ["--generator", str(setup / "tiny")],
        "vanilla": ["--model", str(setup / "parrot-vanilla")],
    }[mode]
    return [
        "infer",
        "--mode",
        mode,
        *models,
        "--data",
        str(setup / "data"),
        "--split",
        "test",
        "--out",
        str(out),
        "infer.max_new_tokens=12",
        "infer.batch_size=4",
        "infer.chunk_size=8",
        "infer.precision=fp32",
        "run.dist_timeout_s=120",
        "eval.protocol=ours",
        *extra,
    ]


# the paper's decoding: sampled at 0.7 / 0.95, here over two seeds
PAPER = ["eval.protocol=paper", "infer.decode_seeds=2"]


@pytest.mark.distributed
def test_decoupled_two_ranks_equal_one_rank_and_conditioning(setup):
    two, one = setup / "infer" / "dec-two", setup / "infer" / "dec-one"
    launch(
        infer_args(setup, two, extra=PAPER),
        env=launch_env(WANDB_MODE="disabled"),
        log=setup / "infer-two.log",
    )
    launch(
        infer_args(setup, one, extra=PAPER),
        nproc=1,
        launcher="python",
        env=launch_env(OMP_NUM_THREADS="1", WANDB_MODE="disabled"),
        log=setup / "infer-one.log",
    )
    a, b = (one / "predictions.jsonl").read_bytes(), (two / "predictions.jsonl").read_bytes()
    assert a == b
    # the second decode: the same on any number of ranks, drawn with seeds of its own
    second = (two / "predictions.decode-1.jsonl").read_bytes()
    assert (one / "predictions.decode-1.jsonl").read_bytes() == second
    replies = [
        [json.loads(line)["pred_reply"] for line in x.decode().splitlines()] for x in (b, second)
    ]
    assert sum(r0 != r1 for r0, r1 in zip(*replies)) > len(replies[0]) // 2

    preds = load_predictions(two / "predictions.jsonl")
    turns = {t["id"]: t for t in load_task(setup / "data", "turns")["test"]}
    assert sorted(p.id for p in preds) == sorted(turns) and len(preds) == 48
    assert all(
        json.loads(line).keys()
        == {
            "id",
            "dialogue_id",
            "turn_index",
            "gold_strategy",
            "gold_reply",
            "pred_strategy",
            "pred_strategy_raw",
            "pred_reply",
            "mode",
        }
        for line in b.decode().splitlines()
    )
    assert {p.pred_strategy for p in preds} == {PLANNER_ANSWER} and {p.mode for p in preds} == {
        "decoupled"
    }
    assert all(p.gold_strategy == turns[p.id]["strategy"] for p in preds)
    # the generator saw the generator prompt under the planner's prediction
    phase2 = chunk_records(two / "chunks" / "generator")
    assert len(phase2) == 48
    for rec in phase2:
        expected = generator_prompt(
            history_messages(turns[rec["id"]]["history"]), PLANNER_ANSWER, MAX_HISTORY
        )
        assert rec["messages"] == expected
    m = json.loads((two / "manifest.json").read_text())
    assert m["world_size"] == 2 and set(m["generation"]) == {
        "planner",
        "generator",
        "planner.decode-1",
        "generator.decode-1",
    }
    assert m["counts"]["turns"] == 48 and (two / "COMPLETED").is_file()
    assert m["counts"]["decodes"] == ["predictions.jsonl", "predictions.decode-1.jsonl"]
    assert m["config"]["decoding"] == {
        "protocol": "paper",
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 0,
        "decodes": 2,
    }
    assert set(m["outputs"]) >= {"predictions", "predictions_decode_1"}


@pytest.mark.distributed
def test_generator_on_gold_strategies(setup):
    out = setup / "infer" / "gold"
    launch(
        infer_args(setup, out, mode="generator-gold"),
        nproc=1,
        launcher="python",
        env=launch_env(OMP_NUM_THREADS="1", WANDB_MODE="disabled"),
        log=setup / "infer-gold.log",
    )
    preds = load_predictions(out / "predictions.jsonl")
    turns = {t["id"]: t for t in load_task(setup / "data", "turns")["test"]}
    assert sorted(p.id for p in preds) == sorted(turns)
    assert all(
        p.mode == "generator-gold" and p.pred_strategy == p.gold_strategy == p.pred_strategy_raw
        for p in preds
    )
    for rec in chunk_records(out / "chunks" / "generator"):
        turn = turns[rec["id"]]
        assert rec["messages"] == generator_prompt(
            history_messages(turn["history"]), turn["strategy"], MAX_HISTORY
        )
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["decoding"]["do_sample"] is False and m["config"]["decoding"]["decodes"] == 1
    assert not (out / "predictions.decode-1.jsonl").exists()


@pytest.mark.distributed
def test_vanilla_greedy_parses_tagged_output(setup):
    out = setup / "infer" / "vanilla"
    launch(
        infer_args(setup, out, mode="vanilla"),
        nproc=1,
        launcher="python",
        env=launch_env(OMP_NUM_THREADS="1"),
        log=setup / "infer-vanilla.log",
    )
    preds = load_predictions(out / "predictions.jsonl")
    assert len(preds) == 48
    for p in preds:
        assert p.mode == "vanilla" and p.pred_strategy == "Question"
        assert p.pred_reply == "What happened?" and p.pred_strategy_raw == VANILLA_ANSWER
    runs = wait_for_offline_runs(out / "wandb")
    assert len(runs) == 1 and runs[0]["run"]["job_type"] == "infer-vanilla"
