"""Every subcommand, given a bad argument or a bad recipe value, ends with one line on stderr that
names the culprit, and a non-zero exit status: never a traceback."""

import pytest

from esc_dist.cli import commands
from tests.helpers import assert_one_line_error, run_cli

NOWHERE = "/nonexistent/esc-dist"

# Per subcommand: arguments a careless user might give, and a word the message must contain.
BAD_ARGUMENTS = {
    "prepare": (["--esconv", f"{NOWHERE}/esconv.json", "--out", "{tmp}/data"], "file not found"),
    "tiny-model": (["--corpus", f"{NOWHERE}/esconv.json", "--out", "{tmp}/tiny"], "file not found"),
    "base-model": (
        ["--gguf", f"{NOWHERE}/model.gguf", "--out", "{tmp}/base"],
        "GGUF file not found",
    ),
    "sft": (
        [
            "--role",
            "planner",
            "--data",
            f"{NOWHERE}/data",
            "--model",
            f"{NOWHERE}/model",
            "--out",
            "{tmp}/sft",
            "sft.deepspeed=null",
        ],
        NOWHERE,
    ),
    "dpo": (
        [
            "--role",
            "planner",
            "--pairs",
            f"{NOWHERE}/pairs",
            "--model",
            f"{NOWHERE}/m",
            "--out",
            "{tmp}/dpo",
            "dpo.deepspeed=null",
        ],
        NOWHERE,
    ),
    "mine": (
        [
            "--role",
            "planner",
            "--data",
            f"{NOWHERE}/data",
            "--model",
            f"{NOWHERE}/m",
            "--out",
            "{tmp}/mine",
        ],
        NOWHERE,
    ),
    "infer": (
        ["--mode", "decoupled", "--model", f"{NOWHERE}/m", "--out", "{tmp}/pred"],
        "--model not for --mode decoupled: decoupled inference takes --planner and --generator",
    ),
    "merge": (["--out", f"{NOWHERE}/mine"], "no job.json"),
    "judge": (
        ["--role", "planner", "--pairs", f"{NOWHERE}/pairs.jsonl", "--out", "{tmp}/j"],
        "file not found",
    ),
    "eval": ([f"{NOWHERE}/predictions.jsonl", "--out", "{tmp}/report"], "file not found"),
    "compare": ([f"{NOWHERE}/report", "--out", "{tmp}/cmp"], "no evaluation report"),
    "pipeline": (["--only", "sft-plannerr", "run.output_dir={tmp}/run"], "unknown stage"),
    "stage": (["show", "sft-plannerr", "run.output_dir={tmp}/run"], "unknown stage"),
    "chat": (["--planner", f"{NOWHERE}/planner", "--generator", f"{NOWHERE}/generator"], NOWHERE),
    "demo": (["--run", f"{NOWHERE}/run"], NOWHERE),
    "doctor": ([f"model.base={NOWHERE}/model"], "1 check(s) failed: model"),
    "download": (["Qwen2.5-7B-Instruct"], "is not a Hugging Face model id (org/name)"),
    "human-eval": (
        [
            "build",
            f"{NOWHERE}/a.jsonl",
            f"{NOWHERE}/b.jsonl",
            "--names",
            "x,y",
            "--out",
            "{tmp}/study",
        ],
        "file not found",
    ),
}

# Recipe problems any subcommand meets first, with a word of the message.
BAD_RECIPES = [
    (["sft.learning_rate=-1"], "'sft.learning_rate' must be > 0"),
    (["data.max_dialogues.train=-1"], "'data.max_dialogues.train' must be >= 1"),
    (["data.split_fractions=[.nan,0.5,0.5]"], "finite"),
    (["mine.nope=1"], "unknown key 'mine.nope'"),
    (["--config", f"{NOWHERE}/recipe.yaml"], "recipe not found"),
]

NAMES = [c.name for c in commands()]


def test_every_subcommand_has_a_bad_argument_case():
    assert sorted(BAD_ARGUMENTS) == sorted(NAMES)


@pytest.mark.parametrize("command", NAMES)
def test_bad_argument_is_one_line(command, tmp_path):
    args, needle = BAD_ARGUMENTS[command]
    r = run_cli([command, *args], tmp_path)
    assert_one_line_error(r, command, needle)


@pytest.mark.parametrize("command", NAMES)
def test_bad_recipe_is_one_line(command, tmp_path):
    """Each subcommand meets one of the recipe problems (each problem several subcommands)."""
    args, _ = BAD_ARGUMENTS[command]
    # demo --run reads the run's own recipe first: it meets the missing recipe
    recipe, needle = BAD_RECIPES[
        4 if command == "demo" else NAMES.index(command) % len(BAD_RECIPES)
    ]
    r = run_cli([command, *args, *recipe], tmp_path)
    assert_one_line_error(r, command, needle)
