"""The pipeline driver: stage plan, skipping of up-to-date stages, invalidation, failures."""

import json
import subprocess
import sys

from esc_dist.config import load_recipe
from esc_dist.constants import GOLD_SYSTEMS, SYSTEMS
from esc_dist.io import verify_outputs
from esc_dist.pipeline import plan
from tests.helpers import ROOT, TEST_DATA, launch_env


def test_plan_covers_every_stage_in_order():
    names = [s.name for s in plan(load_recipe(None))]
    assert names[:2] == ["prepare", "tiny-model"]
    for stage in ("sft", "mine", "judge", "dpo"):
        assert [n for n in names if n.startswith(stage + "-")] == [
            f"{stage}-{r}" for r in ("planner", "generator", "vanilla")
        ]
    assert names.index("judge-vanilla") < names.index("dpo-planner")
    assert [n for n in names if n.startswith("infer-")] == [
        f"infer-{s}" for s in (*SYSTEMS, *GOLD_SYSTEMS)
    ]
    assert names[-1] == "compare"
    without = plan(load_recipe(None, ["eval.generator_gold=false"]))
    assert [s.name for s in without if s.name.startswith("eval-")] == [f"eval-{s}" for s in SYSTEMS]
    # the protocol decides the decoding: it is part of the inference stages' keys only
    from esc_dist.pipeline import stage_key

    keys = {
        p: {s.name: stage_key(s, r) for s in plan(r)}
        for p, r in (
            ("paper", load_recipe(None)),
            ("ours", load_recipe(None, ["eval.protocol=ours"])),
        )
    }
    changed = {n for n in keys["paper"] if keys["paper"][n] != keys["ours"][n]}
    assert {n for n in changed if not n.startswith(("eval-", "compare"))} == {
        f"infer-{s}" for s in (*SYSTEMS, *GOLD_SYSTEMS)
    }
    # a real model skips the tiny-model stage and trains from model.base
    real = plan(load_recipe(None, ["model.base=/models/qwen"]))
    assert "tiny-model" not in [s.name for s in real]
    assert "/models/qwen" in next(s for s in real if s.name == "sft-planner").args


def test_judge_stage_key_follows_the_judge_rules(monkeypatch, tmp_path):
    """New offline rules (a version bump) or another LLM judge make the judge stages stale;
    other stages keep their keys."""
    from esc_dist import pipeline
    from esc_dist.ipm import judge

    recipe = load_recipe(None, [f"run.output_dir={tmp_path}"])
    keys = lambda r: {s.name: pipeline.stage_key(s, r) for s in plan(r)}  # noqa: E731
    before = keys(recipe)
    monkeypatch.setattr(judge, "OFFLINE_RULES_VERSION", "offline-rules-test")
    after = keys(recipe)
    assert {n for n in before if before[n] != after[n]} == {
        "judge-planner",
        "judge-generator",
        "judge-vanilla",
    }
    llm = load_recipe(None, [f"run.output_dir={tmp_path}", "judge.backend=openai"])
    other = load_recipe(
        None, [f"run.output_dir={tmp_path}", "judge.backend=openai", "judge.model=another-model"]
    )
    assert keys(llm)["judge-planner"] != keys(other)["judge-planner"]


def _pipeline(tmp_path, *extra, out=None, cwd=ROOT):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "esc_dist",
            "pipeline",
            "--config",
            str(ROOT / "configs" / "tiny-cpu.yaml"),
            f"run.output_dir={out or tmp_path / 'run'}",
            f"data.esconv={TEST_DATA / 'tiny_esconv.json'}",
            "data.split=seeded",
            "data.split_fractions=[0.34,0.33,0.33]",
            "tiny_model.vocab_size=600",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=launch_env(),
        timeout=300,
        cwd=cwd,
    )


def test_up_to_date_stages_are_skipped_and_changes_rerun(tmp_path):
    r = _pipeline(tmp_path, "--only", "prepare,tiny-model")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "prepare" in r.stdout and r.stdout.count("done in") == 2
    # no comparison was made, so none is pointed at
    assert "comparison" not in r.stdout and "only prepare, tiny-model" in r.stdout, r.stdout
    run = tmp_path / "run"
    assert json.loads((run / "data" / "pipeline.json").read_text())["stage"] == "prepare"
    r = _pipeline(tmp_path, "--only", "prepare,tiny-model")
    assert r.stdout.count("up to date, skipped") == 2, r.stdout
    # a tiny-model setting changes: only that stage runs again
    r = _pipeline(tmp_path, "--only", "prepare,tiny-model", "tiny_model.seed=3")
    lines = r.stdout.splitlines()
    assert "skipped" in next(x for x in lines if "prepare" in x)
    assert "done in" in next(x for x in lines if "tiny-model" in x)
    # new data makes everything downstream stale
    r = _pipeline(
        tmp_path, "--only", "prepare,tiny-model", "tiny_model.seed=3", "data.split_seed=5"
    )
    assert r.stdout.count("done in") == 2, r.stdout
    # the resolved recipe every stage reads, secrets redacted
    assert "split_seed: 5" in (run / "recipe.yaml").read_text()
    _a_variant_reuses_what_it_shares(tmp_path, ["tiny_model.seed=3", "data.split_seed=5"])


def _a_variant_reuses_what_it_shares(tmp_path, settings):
    """`pipeline --reuse BASE` (here the run above, with ``settings``): stages whose settings
    and inputs a variant shares with a finished run are read from it; the first changed stage
    runs into the variant's directory, and so does everything downstream of it, reading the
    base run's outputs."""
    from dataclasses import replace

    from esc_dist.pipeline import needed_stages, plan_reusing, resolve

    base, var = tmp_path / "run", tmp_path / "var"
    # another tiny model over the same data: prepare is reused, tiny-model runs
    r = _pipeline(
        tmp_path, "--only", "prepare,tiny-model", "--reuse", str(base), *settings,
        "tiny_model.seed=4", out=var,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert f"reused from {base}" in next(x for x in lines if "prepare" in x)
    assert "done in" in next(x for x in lines if "tiny-model" in x), r.stdout
    assert not (var / "data").exists() and (var / "models" / "tiny" / "COMPLETED").is_file()
    tiny_log = (var / "logs" / "tiny-model.log").read_text().splitlines()[0]
    assert f"--corpus {base / 'data'} " in tiny_log  # it read the base's data
    overrides = [
        f"run.output_dir={var}",
        f"data.esconv={TEST_DATA / 'tiny_esconv.json'}",
        "data.split=seeded",
        "data.split_fractions=[0.34,0.33,0.33]",
        "tiny_model.vocab_size=600",
        *settings,
    ]
    # the variant's plan: SFT reads the base's data and the variant's model
    recipe = resolve(
        load_recipe(ROOT / "configs" / "tiny-cpu.yaml", [*overrides, "tiny_model.seed=4"])
    )
    stages, reused = plan_reusing(recipe, base)
    assert reused == {"prepare"}
    sft = next(s for s in stages if s.name == "sft-planner")
    assert sft.inputs == [base / "data", var / "models" / "tiny"]
    assert str(base / "data") in sft.args and sft.out == var / "models/sft-planner"
    # what the variant runs for its planner's DPO: the chain from its own tiny model, not the
    # reused data, not the other roles' stages
    assert needed_stages(stages, reused, ["dpo-planner"]) == (
        "tiny-model", "sft-planner", "mine-planner", "judge-planner", "dpo-planner",
    )  # fmt: skip
    # the base's own settings: both stages reused
    same = resolve(load_recipe(ROOT / "configs" / "tiny-cpu.yaml", overrides))
    stages, reused = plan_reusing(same, base)
    assert reused == {"prepare", "tiny-model"}
    sft = next(s for s in stages if s.name == "sft-planner")
    assert sft.inputs[1] == base / "models" / "tiny"
    # a changed data setting: nothing is reused
    data = replace(recipe, data=replace(recipe.data, split_seed=recipe.data.split_seed + 1))
    assert plan_reusing(data, base)[1] == set()


def test_the_run_directory_spelling_does_not_make_stages_stale(tmp_path):
    """runs/x, ./runs/x and $PWD/runs/x are one run: nothing reruns and nothing is removed."""
    r = _pipeline(tmp_path, "--only", "prepare,tiny-model", out="runs/x", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count("done in") == 2, r.stdout + r.stderr
    model = tmp_path / "runs" / "x" / "models" / "tiny" / "model.safetensors"
    mtime = model.stat().st_mtime_ns
    for spelling in ("./runs/x", str(tmp_path / "runs" / "x"), "runs/../runs/x"):
        r = _pipeline(tmp_path, "--only", "prepare,tiny-model", out=spelling, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.count("up to date, skipped") == 2, (
            spelling,
            r.stdout + r.stderr,
        )
    assert model.stat().st_mtime_ns == mtime


def test_a_rerun_with_the_same_output_leaves_later_stages_current(tmp_path):
    """A stage run again that writes the same output with other run facts (time taken, git
    commit) leaves the stages it feeds up to date; a change of its content does not."""
    r = _pipeline(tmp_path, "--only", "prepare,tiny-model")
    assert r.returncode == 0 and r.stdout.count("done in") == 2, r.stdout + r.stderr
    manifest = tmp_path / "run" / "data" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(
        json.dumps({**data, "seconds": data["seconds"] + 7.5, "git_commit": "0" * 40})
    )
    r = _pipeline(tmp_path, "--only", "prepare,tiny-model")
    assert r.stdout.count("up to date, skipped") == 2, r.stdout
    manifest.write_text(json.dumps({**data, "tasks": data["tasks"][:1]}))
    r = _pipeline(tmp_path, "--only", "prepare,tiny-model")
    lines = r.stdout.splitlines()
    assert "skipped" in next(x for x in lines if "prepare" in x)
    assert "done in" in next(x for x in lines if "tiny-model" in x), r.stdout


def test_a_cut_output_is_made_again(tmp_path):
    """An output file changed or cut since its stage finished makes the stage run again (one log
    line says why); the same content made again leaves the stages after it current."""
    r = _pipeline(tmp_path, "--only", "prepare,tiny-model")
    assert r.returncode == 0 and r.stdout.count("done in") == 2, r.stdout + r.stderr
    data = tmp_path / "run" / "data"
    arrow = next((data / "turns" / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 3])
    r = _pipeline(tmp_path, "--only", "prepare,tiny-model")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "done in" in next(x for x in lines if "prepare" in x), r.stdout
    assert "skipped" in next(x for x in lines if "tiny-model" in x), r.stdout
    why = [x for x in r.stderr.splitlines() if "does not match its manifest" in x]
    assert len(why) == 1 and f"prepare: {arrow}" in why[0] and "it runs again" in why[0], r.stderr
    assert verify_outputs(data) is None


def test_a_stage_trained_by_its_launch_script_is_current_for_the_pipeline(tmp_path):
    """launch/sft.sh trains under the launcher and records the stage as `esc-dist pipeline`
    does: a second launch/sft.sh, and the dependency run that launch/dpo.sh starts with, find
    it up to date instead of training it again."""
    short = ["sft.max_steps=3", "sft.per_device_train_batch_size=1"]
    over = [
        f"run.output_dir={tmp_path / 'run'}",
        f"data.esconv={TEST_DATA / 'tiny_esconv.json'}",
        "data.split=seeded",
        "data.split_fractions=[0.34,0.33,0.33]",
        "tiny_model.vocab_size=600",
        *short,
    ]
    sft = lambda: subprocess.run(  # noqa: E731
        ["bash", str(ROOT / "launch" / "sft.sh"), "planner", "configs/tiny-cpu.yaml", *over],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=launch_env(LAUNCHER="torchrun", NPROC="2"),
    )
    r = sft()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "run" / "models" / "sft-planner"
    assert json.loads((out / "pipeline.json").read_text())["stage"] == "sft-planner"
    weights = out / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    r = sft()
    assert r.returncode == 0 and "sft-planner is up to date" in r.stdout, r.stdout + r.stderr
    r = _pipeline(tmp_path, "--only", "prepare,tiny-model,sft-planner", *short)
    assert r.returncode == 0 and r.stdout.count("up to date, skipped") == 3, r.stdout + r.stderr
    assert weights.stat().st_mtime_ns == mtime


def test_failed_stage_stops_and_names_its_log(tmp_path):
    r = _pipeline(
        tmp_path,
        "--only",
        "prepare,tiny-model,sft-planner",
        "sft.deepspeed=/nonexistent/zero3.json",
    )
    assert r.returncode == 1
    log = tmp_path / "run" / "logs" / "sft-planner.log"
    assert f"full log: {log}" in r.stderr
    assert "FAILED" in r.stdout and "DeepSpeed config not found" in log.read_text()
    assert "mine-planner" not in r.stdout


def test_unknown_stage_is_an_error(tmp_path):
    r = _pipeline(tmp_path, "--only", "sft-plannerr")
    assert r.returncode != 0 and "unknown stage" in r.stderr
