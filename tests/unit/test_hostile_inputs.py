"""Careless and hostile inputs: unreadable files, malformed JSON and YAML, values that used to act
as Python slices, leaks between splits. Each ends with one error line naming the file (or the
recipe key) and exit 2, never a traceback; nothing is written."""

import json
import os

import pytest

from tests.helpers import TEST_DATA, assert_one_line_error, run_cli

TINY = TEST_DATA / "tiny_esconv.json"
SEEDED = ["data.split=seeded", "data.split_fractions=[0.34,0.33,0.33]"]


def _prepare(tmp_path, *extra: str):
    return run_cli(
        ["prepare", "--esconv", str(TINY), "--out", "{tmp}/data", *SEEDED, *extra], tmp_path
    )


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- files that cannot be read --------------------------------------------------------------


def test_utf16_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run:\n  name: x\n", encoding="utf-16")
    r = run_cli(["prepare", "--config", str(recipe)], tmp_path)
    assert_one_line_error(r, "prepare", "looks like UTF-16")
    assert str(recipe) in r.stderr


def test_latin1_split_file(tmp_path):
    split = tmp_path / "split.json"
    split.write_bytes('{"train": [0], "description": "caf\u00e9"}'.encode("latin-1"))
    r = run_cli(
        ["prepare", "--esconv", str(TINY), "--split", str(split), "--out", "{tmp}/d"], tmp_path
    )
    assert_one_line_error(r, "prepare", f"{split}: not UTF-8 text at line 1, byte")


def test_directory_as_recipe(tmp_path):
    r = run_cli(["prepare", "--config", str(tmp_path)], tmp_path)
    assert_one_line_error(r, "prepare", "is a directory, not a recipe")


def test_directory_as_corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    r = run_cli(
        ["prepare", "--esconv", str(tmp_path / "corpus"), "--out", "{tmp}/d", *SEEDED], tmp_path
    )
    assert_one_line_error(r, "prepare", "is a directory")


def test_symlink_loop_as_corpus(tmp_path):
    loop = tmp_path / "loop.json"
    os.symlink(loop, loop)
    r = run_cli(["prepare", "--esconv", str(loop), "--out", "{tmp}/d", *SEEDED], tmp_path)
    assert_one_line_error(r, "prepare", f"{loop}: cannot read this file")


def test_deeply_nested_corpus(tmp_path):
    corpus = tmp_path / "deep.json"
    corpus.write_text(f'[{{"dialog": {_nested(100_000)}}}]')
    r = run_cli(["prepare", "--esconv", str(corpus), "--out", "{tmp}/d", *SEEDED], tmp_path)
    assert_one_line_error(r, "prepare", "dialogue 0: JSON nested too deeply")


def test_deeply_nested_jsonl_corpus(tmp_path):
    corpus = tmp_path / "deep.jsonl"
    corpus.write_text(_nested(100_000) + "\n")
    r = run_cli(["prepare", "--esconv", str(corpus), "--out", "{tmp}/d", *SEEDED], tmp_path)
    assert_one_line_error(r, "prepare", "nested too deeply")


def test_deeply_nested_split_file(tmp_path):
    split = tmp_path / "split.json"
    split.write_text(_nested(100_000))
    r = run_cli(
        ["prepare", "--esconv", str(TINY), "--split", str(split), "--out", "{tmp}/d"], tmp_path
    )
    assert_one_line_error(r, "prepare", f"{split}: JSON nested too deeply")


def test_deeply_nested_yaml_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run: " + "[" * 50_000 + "]" * 50_000 + "\n")
    r = run_cli(["prepare", "--config", str(recipe)], tmp_path)
    assert_one_line_error(r, "prepare", str(recipe))


def test_invalid_yaml_recipe_is_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run:\n  name: [unclosed\n  seed: 1\n")
    r = run_cli(["prepare", "--config", str(recipe)], tmp_path)
    assert_one_line_error(r, "prepare", "invalid YAML")


# --- generation outputs that were tampered with ------------------------------------------------


@pytest.mark.parametrize(
    "content,needle",
    [
        ('{"stage": "mine", "fingerp', "unreadable job.json"),
        ('["mine"]', "unknown stage None"),
        ('{"stage": "train"}', "unknown stage 'train'"),
    ],
)
def test_merge_with_a_broken_job_file(tmp_path, content, needle):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "job.json").write_text(content)
    r = run_cli(["merge", "--out", str(out)], tmp_path)
    assert_one_line_error(r, "merge", needle)


@pytest.mark.parametrize(
    "content,needle",
    [
        ('{"chunks": [{"name": "chunk-000000", "ids"', "invalid JSON"),
        ('{"chunks": 3}', "not a plan written by esc-dist"),
        (_nested(100_000), "nested too deeply"),
    ],
)
def test_merge_with_a_broken_plan(tmp_path, content, needle):
    from esc_dist.errors import MergeError
    from esc_dist.generation import merge

    (tmp_path / "plan.json").write_text(content)
    with pytest.raises(MergeError, match=needle) as e:
        merge(tmp_path)
    assert str(tmp_path / "plan.json") in str(e.value)


# --- reports that are not reports ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content,needle",
    [
        ("{not json", "unreadable JSON"),
        ('{"name": "x"}', "not an evaluation report"),
        ("[1, 2]", "not an evaluation report"),
    ],
)
def test_compare_a_foreign_report(tmp_path, content, needle):
    (tmp_path / "report.json").write_text(content)
    r = run_cli(["compare", str(tmp_path / "report.json"), "--out", "{tmp}/cmp"], tmp_path)
    assert_one_line_error(r, "compare", needle)
    assert not (tmp_path / "cmp").exists()


# --- values that used to act as slices or pass unnoticed ---------------------------------------


@pytest.mark.parametrize(
    "override,needle",
    [
        ("data.max_dialogues.train=-1", "'data.max_dialogues.train' must be >= 1 or null"),
        ("data.max_dialogues.test=0", "'data.max_dialogues.test' must be >= 1 or null"),
        ("data.max_history_messages=-3", "'data.max_history_messages' must be >= 1 or null"),
        ("mine.max_turns=-1", "'mine.max_turns' must be >= 1 or null"),
        ("mine.max_turns=0", "'mine.max_turns' must be >= 1 or null"),
        ("infer.max_dialogues=-1", "'infer.max_dialogues' must be >= 1 or null"),
        ("data.split_fractions=[.nan,0.5,0.5]", "a finite number"),
        ("sft.learning_rate=.inf", "a finite number"),
        ("mine.temperature=-1", "'mine.temperature' must be >= 0"),
        ("mine.top_p=1.5", "'mine.top_p' must be in (0, 1]"),
        ("infer.top_p=0", "'infer.top_p' must be in (0, 1]"),
        ("sft.per_device_train_batch_size=0", "'sft.per_device_train_batch_size' must be >= 1"),
        ("dpo.learning_rate=-1e-5", "'dpo.learning_rate' must be > 0"),
        ("dpo.beta=0", "'dpo.beta' must be > 0"),
        ("sft.warmup_ratio=1.5", "'sft.warmup_ratio' must be in [0, 1)"),
        ("mine.chunk_size=10", "'mine.chunk_size' must be a multiple of mine.batch_size"),
        ("judge.concurrency=0", "'judge.concurrency' must be >= 1"),
        ("pipeline.nproc=0", "'pipeline.nproc' must be >= 1"),
        ("tiny_model.hidden_size=130", "'tiny_model.hidden_size' must be a multiple"),
    ],
)
def test_out_of_range_value(tmp_path, override, needle):
    r = _prepare(tmp_path, override)
    assert_one_line_error(r, "prepare", needle)
    assert not (tmp_path / "data").exists()


# --- splits -------------------------------------------------------------------------------------


def test_empty_train_split_is_refused(tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "validation": [0], "test": [1]}))
    r = run_cli(
        ["prepare", "--esconv", str(TINY), "--split", str(split), "--out", "{tmp}/d"], tmp_path
    )
    assert_one_line_error(r, "prepare", f"{split}: the train split is empty")


def _prepare_with_a_copy(tmp_path, split: dict):
    """prepare on a corpus whose dialogue 2 is a copy of dialogue 0, split as given."""
    dialogues = json.loads(TINY.read_text())
    corpus, split_file = tmp_path / "esconv.json", tmp_path / "split.json"
    corpus.write_text(json.dumps([dialogues[0], dialogues[1], dialogues[0]]))
    split_file.write_text(json.dumps(split))
    return run_cli(
        ["prepare", "--esconv", str(corpus), "--split", str(split_file), "--out", "{tmp}/d"],
        tmp_path,
    )


def test_identical_dialogues_in_two_splits_are_refused(tmp_path):
    r = _prepare_with_a_copy(tmp_path, {"train": [0, 1], "validation": [2], "test": []})
    assert_one_line_error(
        r, "prepare", "duplicate dialogue: dialogues 0 (train) and 2 (validation in "
    )
    assert f"{tmp_path / 'esconv.json'}: duplicate dialogue" in r.stderr  # the corpus file


def test_identical_dialogues_in_one_split_are_kept(tmp_path):
    r = _prepare_with_a_copy(tmp_path, {"train": [0, 2], "validation": [1], "test": []})
    assert r.returncode == 0, r.stderr


# --- the default DeepSpeed config from anywhere -------------------------------------------------


def test_default_deepspeed_config_is_found_outside_the_checkout(tmp_path, monkeypatch):
    from esc_dist.config import load_recipe
    from esc_dist.train.arguments import deepspeed_config

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(None)
    assert recipe.sft.deepspeed == "ds_configs/zero3.json"
    assert deepspeed_config(recipe.sft)["zero_optimization"]["stage"] == 3
    assert (
        deepspeed_config(load_recipe(None, ["dpo.deepspeed=ds_configs/zero2.json"]).dpo)[
            "zero_optimization"
        ]["stage"]
        == 2
    )


def test_top_level_ds_configs_is_the_package_s(monkeypatch, tmp_path):
    """The checkout's ds_configs/ is a link to the package's: one copy, and a recipe's
    ds_configs/zero3.json is the same file from the checkout's root and from elsewhere."""
    from esc_dist.train.arguments import PACKAGE_DIR, resolve_deepspeed
    from tests.helpers import ROOT

    top = ROOT / "ds_configs"
    assert top.is_symlink() and top.resolve() == (PACKAGE_DIR / "ds_configs").resolve()
    for cwd in (ROOT, tmp_path):
        monkeypatch.chdir(cwd)
        for name in ("zero2.json", "zero3.json", "zero3_offload.json"):
            got = resolve_deepspeed(f"ds_configs/{name}").resolve()
            assert got == (PACKAGE_DIR / "ds_configs" / name).resolve()


def test_missing_deepspeed_config_names_it(tmp_path, monkeypatch):
    from esc_dist.config import load_recipe
    from esc_dist.errors import MissingInput
    from esc_dist.train.arguments import deepspeed_config

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingInput, match="zero9.json: DeepSpeed config not found"):
        deepspeed_config(load_recipe(None, ["sft.deepspeed=ds_configs/zero9.json"]).sft)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(Exception, match="broken.json: invalid JSON"):
        deepspeed_config(load_recipe(None, [f"sft.deepspeed={tmp_path}/broken.json"]).sft)


# --- DPO on nothing -----------------------------------------------------------------------------


def test_dpo_on_an_empty_preference_dataset(tmp_path):
    from datasets import Dataset

    from esc_dist.errors import DataError, MissingInput
    from esc_dist.io import mark_completed
    from esc_dist.train.dpo import load_pairs

    with pytest.raises(MissingInput, match="not a completed `esc-dist judge` output"):
        load_pairs(tmp_path)
    Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []}).save_to_disk(
        str(tmp_path / "dataset"), num_shards=1
    )
    mark_completed(tmp_path)
    with pytest.raises(DataError, match="the preference dataset is empty"):
        load_pairs(tmp_path)
