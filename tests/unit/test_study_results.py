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
    assert smol.render_summary(seeds, agg) == committed_section(
        smol.SUMMARY_START, smol.SUMMARY_END, smol.README
    )


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
