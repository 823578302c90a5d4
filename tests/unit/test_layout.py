"""The run layout (esc_dist/layout.py): the pipeline's outputs, every command's defaults and
`esc-dist stage out` agree, because they all ask RunLayout."""

from esc_dist.config import load_recipe
from esc_dist.layout import RunLayout
from tests.helpers import ROOT, run_cli

EXPECTED = {  # the documented layout, written out once here to catch a change to it
    "prepare": "data",
    "tiny-model": "models/tiny",
    "sft-planner": "models/sft-planner",
    "mine-generator": "ipm/mine-generator",
    "judge-vanilla": "prefdial/vanilla",
    "dpo-generator": "models/dpo-generator",
    "infer-decoupled-dpo": "predictions/decoupled-dpo",
    "eval-vanilla-sft": "reports/vanilla-sft",
    "compare": "reports/comparison",
}


def test_the_plan_writes_where_the_layout_says(tmp_path):
    from esc_dist.pipeline import evaluated_systems, plan, recipe_file

    recipe = load_recipe(None, [f"run.output_dir={tmp_path}"])
    run = RunLayout.of(recipe)
    stages = {s.name: s for s in plan(recipe)}
    for name, rel in EXPECTED.items():
        assert stages[name].out == tmp_path / rel, name
    assert recipe_file(recipe) == run.recipe == tmp_path / "recipe.yaml"
    # each stage reads what the one before it wrote
    assert stages["dpo-planner"].inputs[:2] == [run.pairs("planner"), run.model("sft", "planner")]
    assert stages["judge-planner"].inputs == [run.mined("planner")]
    assert stages["infer-decoupled-sft"].inputs[1:] == [
        run.model("sft", "planner"),
        run.model("sft", "generator"),
    ]
    assert stages["compare"].inputs == [run.report(s) for s in evaluated_systems(recipe)]


def test_command_defaults_and_stage_out_agree_with_the_plan(tmp_path):
    from esc_dist.chat import run_models
    from esc_dist.train.common import stage_paths

    recipe = load_recipe(None, [f"run.output_dir={tmp_path / 'run'}"])
    run = RunLayout.of(recipe)
    assert stage_paths(recipe, "dpo", "planner").export == run.model("dpo", "planner")
    assert stage_paths(recipe, "sft", "vanilla").work == tmp_path / "run/models/sft-vanilla.work"
    assert run_models(run.root, "dpo")["generator"] == run.model("dpo", "generator")
    asked = {}
    for name in ("compare", "infer-decoupled-sft", "mine-planner", "slurm-logs", "recipe"):
        r = run_cli(["stage", "out", name, f"run.output_dir={tmp_path / 'run'}"], tmp_path)
        assert r.returncode == 0, r.stderr
        asked[name] = tmp_path / r.stdout.strip()  # relative to the working directory
    assert asked == {
        "compare": run.comparison,
        "infer-decoupled-sft": run.predictions("decoupled-sft"),
        "mine-planner": run.mined("planner"),
        "slurm-logs": tmp_path / "run/logs/slurm",
        "recipe": run.recipe,
    }
    r = run_cli(["stage", "out", "no-such-stage"], tmp_path)
    assert r.returncode == 2 and "unknown stage 'no-such-stage'" in r.stderr


def test_the_layout_is_documented_as_it_is():
    doc = (ROOT / "esc_dist" / "layout.py").read_text()
    for rel in set(EXPECTED.values()) - {"models/tiny", "data"}:
        head = rel.split("/")[0]
        assert f"RUN/{head}/" in doc, rel


def test_the_zero_shot_system_is_the_base_model_in_both_roles(tmp_path):
    """``eval.zero_shot``: one more system, the untrained base model as planner and generator,
    inferred and evaluated like the others, in the comparison, a Slurm job of its own that
    waits for the base model only."""
    from esc_dist.pipeline import plan, slurm_jobs

    recipe = load_recipe(None, [f"run.output_dir={tmp_path}", "eval.zero_shot=true"])
    run = RunLayout.of(recipe)
    stages = {s.name: s for s in plan(recipe)}
    infer = stages["infer-zero-shot"]
    assert infer.inputs == [run.data, run.tiny] and infer.out == run.predictions("zero-shot")
    args = infer.args
    assert args[args.index("--mode") + 1] == "decoupled"
    assert args[args.index("--planner") + 1] == args[args.index("--generator") + 1] == str(run.tiny)
    assert stages["eval-zero-shot"].inputs == [run.predictions("zero-shot"), run.data]
    assert run.report("zero-shot") in stages["compare"].inputs
    assert "Zero-shot" in stages["compare"].args[stages["compare"].args.index("--names") + 1]
    jobs = {j.name: j for j in slurm_jobs(recipe)}
    assert jobs["infer-zero-shot"].template == "infer_eval"
    assert jobs["infer-zero-shot"].deps == {"prepare"}  # data and the tiny model: one job
    assert jobs["infer-zero-shot"].env == {"SYSTEM": "zero-shot"}
    # off by default; a real base model is named as it is
    assert "infer-zero-shot" not in {s.name for s in plan(load_recipe(None))}
    real = load_recipe(None, [f"run.output_dir={tmp_path}", "eval.zero_shot=true", "model.base=/m"])
    zero = next(s for s in plan(real) if s.name == "infer-zero-shot")
    assert zero.inputs == [RunLayout.of(real).data] and "/m" in zero.args
