"""Variants of a run (`esc-dist pipeline --reuse BASE`) that change a data setting only some
tasks depend on: the stages of the other roles read the base run's prepared data, so they are
reused (or run once, for both) instead of repeating a whole run."""

import json
import subprocess
import sys

import pytest

from esc_dist.config import load_recipe
from esc_dist.pipeline import needed_stages, plan_reusing, resolve
from tests.helpers import ROOT, TEST_DATA

CONFIG = ROOT / "configs" / "tiny-cpu.yaml"


def _overrides(out, base_model, *extra) -> list[str]:
    """The recipe's overrides of the base run and its variants (another ``out``, ``extra``)."""
    return [
        f"run.output_dir={out}",
        f"data.esconv={TEST_DATA / 'tiny_esconv.json'}",
        "data.split=seeded",
        "data.split_fractions=[0.34,0.33,0.33]",
        f"model.base={base_model}",
        "eval.generator_gold=true",
        *extra,
    ]


def _recipe(out, base_model, *extra):
    return resolve(load_recipe(CONFIG, _overrides(out, base_model, *extra)))


def _prepared_base(tmp):
    """A base run in ``tmp/base`` whose data is prepared (through the pipeline, so that it is
    current), over a local base model in ``tmp/model`` (the plan only names it)."""
    model = tmp / "model"
    model.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "esc_dist", "pipeline", "--config", str(CONFIG), "--only", "prepare",
         *_overrides(tmp / "base", model)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp, model


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return _prepared_base(tmp_path_factory.mktemp("variants"))


def _data_read(stages):
    """Which run's prepared data each stage that reads some reads."""
    return {s.name: p.parent.name for s in stages for p in s.inputs if p.name == "data"}


def test_untagged_planner_reads_its_own_data_and_the_generator_the_base_runs(base_run):
    tmp, model = base_run
    base, var = tmp / "base", tmp / "var"
    recipe = _recipe(var, model, "data.history_strategy_tags=false")
    stages, reused = plan_reusing(recipe, base)
    assert reused == set()  # nothing but the data exists in the base run
    read = _data_read(stages)
    # the tags shape the planner's and the joint model's prompts, never the generator's
    for name in ("sft-generator", "mine-generator", "infer-generator-gold-sft"):
        assert read[name] == "base", name
    for name in ("sft-planner", "mine-planner", "sft-vanilla", "infer-decoupled-sft"):
        assert read[name] == "var", name
    assert read["eval-decoupled-sft"] == "var"  # evaluation reads all of it: its own run's
    sft = next(s for s in stages if s.name == "sft-generator")
    assert str(base / "data") in sft.args and str(var / "data") not in sft.args
    assert sft.out == var / "models" / "sft-generator"
    # the generator's chain needs no data of its own; the planner's does
    assert needed_stages(stages, reused, ["dpo-generator"]) == (
        "sft-generator", "mine-generator", "judge-generator", "dpo-generator",
    )  # fmt: skip
    assert needed_stages(stages, reused, ["dpo-planner"])[0] == "prepare"


def test_the_paper_prompt_shares_the_joint_models_data(base_run):
    tmp, model = base_run
    recipe = _recipe(tmp / "var2", model, "data.planner_prompt=transcript")
    read = _data_read(plan_reusing(recipe, tmp / "base")[0])
    assert read["sft-vanilla"] == read["sft-generator"] == "base"
    assert read["sft-planner"] == read["infer-decoupled-dpo"] == "var2"


def test_a_setting_every_task_reads_shares_nothing(base_run):
    tmp, model = base_run
    for setting in ("data.max_history_messages=2", "data.split_seed=5", "run.seed=3"):
        recipe = _recipe(tmp / "var3", model, "data.history_strategy_tags=false", setting)
        read = _data_read(plan_reusing(recipe, tmp / "base")[0])
        assert set(read.values()) == {"var3"}, setting


def test_base_data_that_changed_since_is_not_read(tmp_path):
    """A base run whose prepared data no longer matches its manifest (or was made with other
    settings than its manifest says) is not trusted: the variant prepares its own."""
    _, model = _prepared_base(tmp_path)
    base = tmp_path / "base"
    recipe = _recipe(tmp_path / "var", model, "data.history_strategy_tags=false")
    assert _data_read(plan_reusing(recipe, base)[0])["sft-generator"] == "base"
    manifest = base / "data" / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "config": {**m["config"], "split_seed": 99}}))
    assert _data_read(plan_reusing(recipe, base)[0])["sft-generator"] == "var"
    manifest.write_text(json.dumps(m))
    assert _data_read(plan_reusing(recipe, base)[0])["sft-generator"] == "base"
    (base / "data" / "generator" / "dataset_dict.json").write_text("{}")
    assert _data_read(plan_reusing(recipe, base)[0])["sft-generator"] == "var"


def test_the_same_settings_reuse_the_data_stage_itself(base_run):
    tmp, model = base_run
    stages, reused = plan_reusing(_recipe(tmp / "var4", model), tmp / "base")
    assert reused == {"prepare"} and set(_data_read(stages).values()) == {"base"}


def test_every_inference_mode_names_the_tasks_it_prompts():
    from esc_dist.constants import MODES
    from esc_dist.data.tasks import PROMPT_SETTINGS
    from esc_dist.pipeline import INFER_TASKS

    assert set(INFER_TASKS) == set(MODES)
    assert all(set(tasks) <= set(PROMPT_SETTINGS) for tasks in INFER_TASKS.values())
