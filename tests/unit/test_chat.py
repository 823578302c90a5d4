"""Talking to trained systems (esc_dist.chat, esc-dist chat): a chat turn is the inference of
that turn, replies replay, and the terminal command shows the planned strategies."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from esc_dist.chat import load_systems
from esc_dist.config import load_recipe
from esc_dist.data.esconv import as_messages
from esc_dist.strategies import STRATEGIES
from tests.helpers import ROOT

pytestmark = pytest.mark.usefixtures("one_process")

GREEDY = ["eval.protocol=ours", "infer.do_sample=false", "infer.max_new_tokens=12"]


def test_a_chat_turn_is_the_inference_of_that_turn(chat_models, tmp_path):
    """Greedy decoding: the chat's answer to a test turn's history equals what `infer` predicts
    for that turn, in both modes (same prompts, same fitting, same decoding)."""
    from esc_dist.eval.predictions import load_predictions
    from esc_dist.infer import infer, load_turns

    data = chat_models["data"]
    recipe = load_recipe(
        None,
        [
            *GREEDY,
            "infer.max_dialogues=1",
            "wandb.mode=disabled",
            f"run.output_dir={tmp_path / 'run'}",
            "infer.chunk_size=4",
            "data.max_history_messages=4",
            "infer.batch_size=1",
        ],
    )
    infer(
        recipe,
        "decoupled",
        data,
        "test",
        tmp_path / "dec",
        planner=chat_models["planner"],
        generator=chat_models["generator"],
    )
    infer(recipe, "vanilla", data, "test", tmp_path / "van", model=chat_models["generator"])
    systems = load_systems(
        recipe,
        planner=chat_models["planner"],
        generator=chat_models["generator"],
        vanilla=chat_models["generator"],
    )
    turns = {t["id"]: t for t in load_turns(data, "test", 1)}
    for mode, out in (("decoupled", "dec"), ("vanilla", "van")):
        preds = load_predictions(tmp_path / out / "predictions.jsonl")
        assert preds
        for p in preds[:4]:
            reply = systems[mode].respond(as_messages(turns[p.id]["history"]))
            assert (reply.strategy, reply.reply) == (p.pred_strategy, p.pred_reply), p.id


def test_sampled_replies_replay_per_conversation(chat_models):
    recipe = load_recipe(None, ["eval.protocol=paper", "infer.max_new_tokens=12"])
    system = load_systems(
        recipe, planner=chat_models["planner"], generator=chat_models["generator"]
    )["decoupled"]
    history = as_messages([{"role": "seeker", "text": "I can't sleep since my divorce."}])
    runs = {
        c: [system.respond(history, conversation=c).reply for _ in range(2)]
        for c in ("one", "two", "three")
    }
    assert all(a == b for a, b in runs.values())  # the same conversation replays
    assert len({r[0] for r in runs.values()}) > 1  # others draw differently


def test_terminal_chat_shows_the_planned_strategy(chat_models):
    cmd = [
        sys.executable,
        "-m",
        "esc_dist",
        "chat",
        "--planner",
        str(chat_models["planner"]),
        "--generator",
        str(chat_models["generator"]),
        "--vanilla",
        str(chat_models["generator"]),
        "eval.protocol=ours",
        "infer.do_sample=false",
        "infer.max_new_tokens=12",
    ]
    # a message over the limit is refused in one line and the conversation goes on
    text = (
        "I feel lonely since I moved.\n" + "x" * 3000 + "\n/reset\nMy exams are next "
        "week.\n/quit\nnever read\n"
    )
    out = subprocess.run(cmd, input=text, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [x for x in out.stdout.splitlines() if x.startswith(("decoupled:", "vanilla:"))]
    assert len(lines) == 4  # two messages x two systems; nothing after /quit
    for line in lines[::2]:
        m = re.match(r"^decoupled: \[(?P<s>[^\]]+)\] \S", line)
        assert m and m["s"] in STRATEGIES, line
    assert "(new conversation)" in out.stdout
    refused = [x for x in out.stderr.splitlines() if x.startswith("esc-dist chat: ")]
    assert len(refused) == 1 and "message of 3000 characters: at most 2000" in refused[0], (
        out.stderr[-2000:]
    )
    assert "Traceback" not in out.stderr


def test_a_decoupled_system_needs_both_models(chat_models, tmp_path):
    from tests.helpers import assert_one_line_error, run_cli

    r = run_cli(["chat", "--planner", str(chat_models["planner"])], tmp_path)
    assert_one_line_error(r, "chat", "needs both --planner and --generator")
    r = run_cli(["demo", "--run", str(tmp_path / "no-such-run")], tmp_path)
    assert_one_line_error(r, "demo", "no-such-run")


def test_the_planner_reads_the_recipes_prompt_form(chat_models):
    """data.planner_prompt: transcript reaches the chat (and so the demo): the planner is asked
    with the one-message transcript that inference and mining build."""
    from esc_dist.data.tasks import planner_prompt

    recipe = load_recipe(
        None, [*GREEDY, "data.planner_prompt=transcript", "data.max_history_messages=4"]
    )
    system = load_systems(
        recipe, planner=chat_models["planner"], generator=chat_models["generator"]
    )["decoupled"]
    planner, seen = system.parts["planner"], []
    asked = planner.generate
    planner.generate = lambda messages, *a, **k: (seen.append(messages), asked(messages, *a, **k))[
        1
    ]
    history = as_messages(
        [
            {"role": "seeker", "text": "I lost my job."},
            {"role": "supporter", "text": "I'm sorry.", "strategy": "Others"},
            {"role": "seeker", "text": "I don't know what to do."},
        ]
    )
    system.respond(history)
    assert seen == [planner_prompt(history, 4, True, "transcript")]
    assert seen[0][1]["content"] == (
        "seeker: I lost my job.\nsupporter: I'm sorry.\nseeker: I don't know what to do.\n"
    )
