"""The studies' sections of experiments/RESULTS.md (and the SmolLM2 mini-replication's short table
in the README) are what their drivers render from the committed result files: no number in them
is typed by hand or left over from an older run."""

import json
import re

from experiments import smol_replication as smol
from experiments.common import RESULTS_MD


def committed_section(start: str, end: str, path=RESULTS_MD) -> str:
    md = path.read_text(encoding="utf-8")
    found = re.search(re.escape(start) + ".*?" + re.escape(end), md, flags=re.S)
    assert found, f"{path} has no section {start} ... {end}"
    return found.group(0)


def test_mini_smol_section_is_rendered_from_the_result_files():
    seeds, variants = smol.load_results()
    assert seeds, f"no committed seed result in {smol.RESULTS}"
    agg = smol.aggregate(seeds)
    assert smol.render(seeds, variants, agg) == committed_section(smol.START, smol.END)
    assert smol.render_summary(*smol.summary_source()) == committed_section(
        smol.SUMMARY_START, smol.SUMMARY_END, smol.README
    )
    paper, paper_variants = smol.load_results(smol.ARMS["mismatch"])
    if paper:  # the paper's pairs, once run: their own section
        arm = smol.ARMS["mismatch"]
        text = smol.render(paper, paper_variants, smol.aggregate(paper), arm)
        assert text == committed_section(arm.start, arm.end)


def test_mini_smol_json_holds_the_committed_results():
    seeds, variants = smol.load_results()
    saved = json.loads(smol.OUT_JSON.read_text(encoding="utf-8"))
    assert saved["seeds"] == json.loads(json.dumps({str(k): r for k, r in seeds.items()}))
    assert saved["variants"] == json.loads(json.dumps(variants))
    assert saved["aggregate"] == json.loads(json.dumps(smol.aggregate(seeds)))


def test_the_seed_stages_a_variant_runs_hold_everything_they_read():
    """A variant on a seed whose run directory is gone runs the seed's stages it lists: each
    must be a stage of the recipe, and each listed stage's inputs made by another stage must be
    listed too, or the variant would read (or train from) a model that was never made."""
    from esc_dist.pipeline import plan

    recipe = smol.load_recipe(smol.CONFIG, smol.seed_overrides(0, smol.ROOT / "runs" / "x"))
    stages = {s.name: s for s in plan(recipe)}
    made_by = {s.out: s.name for s in stages.values()}
    for variant, names in smol.VARIANT_STAGES.items():
        assert set(names) <= set(stages), variant
        for name in names:
            for path in stages[name].inputs:
                assert made_by.get(path, name) in names, (variant, name, path)
        assert "dpo-generator" in names, variant  # Decoupled-DPO pairs a variant's planner with it


def test_planner_study_section_is_rendered_from_the_result_files():
    from experiments import planner_study as study

    assert study.render(*study.load_results()) == committed_section(study.START, study.END)


def test_the_paper_pairs_arm_changes_only_the_planners_pairs_and_dpo(tmp_path):
    """The mismatch arm runs as a variant of each seed's run: its overrides are a valid recipe
    and change the settings of the planner's judge and DPO stages only, so everything else
    (data, SFT, mining, the other roles' pairs and DPO) is reused from the seed's run."""
    from esc_dist.pipeline import plan, stage_key

    over = [f"run.output_dir={tmp_path}", "run.seed=0"]
    base = smol.load_recipe(smol.CONFIG, over)
    arm = smol.load_recipe(smol.CONFIG, [*over, *smol.ARMS["mismatch"].overrides])
    assert arm.for_role("planner").dpo.learning_rate == 1e-6
    assert arm.for_role("generator").dpo == base.for_role("generator").dpo
    before = {s.name: stage_key(s, base) for s in plan(base)}
    after = {s.name: stage_key(s, arm) for s in plan(arm)}
    assert before.keys() == after.keys()
    assert {n for n in before if before[n] != after[n]} == {"judge-planner", "dpo-planner"}


def test_a_sweep_point_changes_only_the_planners_dpo(tmp_path):
    """The mini-replication's sweep points are variants of the seed's run that change the
    planner's DPO settings alone: every other stage is reused, scored by the pipeline's own
    inference and eval stages."""
    from esc_dist.config import load_recipe
    from esc_dist.pipeline import plan, stage_key
    from experiments import mini_replication as mini

    runs = tmp_path / "runs"
    base = load_recipe(mini.CONFIG, mini.seed_overrides(0, runs))
    for point in mini.SWEEP:
        over = mini.sweep_overrides(0, runs, *point)
        point_recipe = load_recipe(mini.CONFIG, [*over[:-1], f"run.output_dir={runs / 'seed-0'}"])
        before = {s.name: stage_key(s, base) for s in plan(base)}
        after = {s.name: stage_key(s, point_recipe) for s in plan(point_recipe)}
        own = (base.dpo.beta, base.dpo.learning_rate, base.dpo.sft_weight) == point
        changed = {n for n in before if before[n] != after[n]}
        assert changed == (set() if own else {"dpo-planner"}), point  # the recipe's own: reused
        assert set(mini.SWEEP_STAGES) <= set(after)


def test_the_balanced_variant_changes_only_the_judge_of_the_strategy_pairs(tmp_path):
    """``balanced`` is a declared variant of the seed's run: ``judge.balance`` changes the keys
    of the planner's and the joint model's judge stages alone (the generator's verdicts do not
    depend on it), so the seed's generator, its pairs and every SFT model are reused; the
    stages it runs itself are those its two systems' scores read and that change."""
    from esc_dist.pipeline import plan, stage_key

    over = [f"run.output_dir={tmp_path}", "run.seed=0"]
    base = smol.load_recipe(smol.CONFIG, over)
    variant = smol.load_recipe(smol.CONFIG, [*over, *smol.DECLARED["balanced"]])
    before = {s.name: stage_key(s, base) for s in plan(base)}
    after = {s.name: stage_key(s, variant) for s in plan(variant)}
    assert {n for n in before if before[n] != after[n]} == {"judge-planner", "judge-vanilla"}


def test_the_no_tags_variant_changes_the_planners_and_joint_models_data_only(tmp_path):
    """``no-tags`` is a declared variant too: it changes one data setting, which the planner's
    and the joint model's prompts show and the generator's do not, so the variant reads the
    seed's prepared data for the generator's stages and reuses them (tests/unit/test_variants)."""
    from dataclasses import replace

    from esc_dist.data.tasks import settings_view

    over = [f"run.output_dir={tmp_path}", "run.seed=0"]
    base = smol.load_recipe(smol.CONFIG, over)
    variant = smol.load_recipe(smol.CONFIG, [*over, *smol.DECLARED["no-tags"]])
    assert replace(variant, data=base.data) == base
    for task, changed in (("generator", False), ("planner", True), ("vanilla", True)):
        assert (settings_view(variant.data, [task]) != settings_view(base.data, [task])) == changed
    assert set(smol.VARIANT_SYSTEMS["no-tags"]) == {"decoupled-sft", "decoupled-dpo"}
