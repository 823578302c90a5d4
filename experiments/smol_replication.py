"""Mini-replication on SmolLM2: does Decoupled-DPO lower preference bias from a pretrained model?

For each seed, runs ``configs/mini-smol.yaml`` through ``esc-dist pipeline`` (``run.seed`` set to
the seed; a seed whose stages already finished resumes from them), the SmolLM2 zero-shot
baseline among its systems (``eval.zero_shot``: the converted base model as planner and as
generator, prompted with the same planner and generator prompts as the trained systems, no
fine-tuning, on the same test turns and decodes), and scores the four systems, the zero-shot
baseline and three label baselines
(majority, random by train prior, bag-of-words logistic regression; see
``experiments/mini_replication.py``) under the paper's protocol. As soon as a seed is scored its
numbers go to ``experiments/results/mini_smol/seed-K.json`` (commit it: run directories do not
survive a move to another machine).

Variants, each on one seed (``--variant-seed``, default the first seed), declared as overrides
of the seed's run (:data:`DECLARED`) and run as pipeline variants (``esc-dist pipeline
--reuse``) into RUN/extra/NAME through the stages of the systems they change, every stage whose
key they leave unchanged read from the seed's run (the seed's stages a variant reads run first
and are skipped when current, so a variant also runs on a seed whose run directory is gone):

- ``balanced``: ``judge.balance=true``: the planner and vanilla pairs judged again (kept pairs
  capped per chosen and per rejected strategy), their DPO, and Decoupled-DPO (with the seed's
  DPO generator, reused) and Vanilla-DPO inferred and scored again;
- ``no-tags``: ``data.history_strategy_tags=false``, the planner without past strategies in its
  prompts: the data prepared again, the planner's SFT, mining, judge and DPO, and
  Decoupled-SFT and Decoupled-DPO inferred and scored again with the seed's own generators
  (the generator's prompt never shows strategy tags, so its stages read the seed's prepared
  data and are reused: ``pipeline.data_tasks``).

Their numbers go to ``experiments/results/mini_smol/variant-NAME-seed-K.json``. The pipeline's
stages resume by their keys.

The report (every run of the script ends with it, and ``--report-only`` runs nothing else) is
built from the committed result files alone: ``experiments/results/mini_smol.json`` (mean and
sample std over seeds), the per-strategy preference plots ``experiments/results/mini_smol/*.png``,
the section between the ``mini-smol`` markers of ``experiments/RESULTS.md`` and the short table
between the ``mini-smol-summary`` markers of the README.

``--pairs mismatch`` runs the paper's planner pairs on every seed given (the ``mismatch`` arm:
``ipm.planner_pairs: mismatch``, the planner's DPO at the strength the planner study chose on
validation, under its guard) as a variant of the seed's run that reuses every stage it does not
change (``esc-dist pipeline --reuse``): the seed's judged run first, then the planner's pairs,
its DPO, Decoupled-DPO's inference and the scores again. Its numbers go to
``experiments/results/mini_smol_ipm/seed-K.json`` and its own section (``mini-smol-ipm``); the
README's table shows it once it covers every seed of the judged arm.

Usage: python -m experiments.smol_replication [--seeds 0,1,2] [--variants balanced,no-tags]
       [--variant-seed 0] [--pairs judged|mismatch] [--report-only]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from esc_dist.config import load_recipe
from esc_dist.constants import ROLES, SYSTEM_TITLES, SYSTEMS, ZERO_SHOT_SYSTEMS
from esc_dist.eval.baselines import BASELINES, strategy_baselines
from esc_dist.eval.compare import load_report
from esc_dist.eval.plots import plot_preferences
from esc_dist.eval.predictions import load_predictions
from esc_dist.eval.strategy import strategy_metrics
from esc_dist.io import atomic_write_json, read_json
from esc_dist.layout import RunLayout, work_dir
from esc_dist.psych.names import ERROR_TYPES
from esc_dist.strategies import STRATEGIES
from experiments import common
from experiments.common import (
    ROOT,
    mean_std,
    run_pipeline,
    run_reusing,
    stage_seconds,
    write_section,
)

CONFIG = ROOT / "configs" / "mini-smol.yaml"
README = ROOT / "README.md"
SUMMARY_START, SUMMARY_END = "<!-- mini-smol-summary:start -->", "<!-- mini-smol-summary:end -->"


@dataclass(frozen=True)
class Arm:
    """One way of building the planner's preference pairs, run over every seed: its overrides
    (on the seed's run, every stage they do not change reused: ``esc-dist pipeline --reuse``),
    result files and section of experiments/RESULTS.md."""

    name: str
    title: str
    overrides: tuple[str, ...]
    results: Path
    out_json: Path
    start: str
    end: str


ARMS = {
    "judged": Arm(
        "judged",
        "Mini-replication on SmolLM2-135M (CPU): does Decoupled-DPO lower preference bias?",
        (),  # the recipe's: the planner's pairs judged like the others'
        common.RESULTS / "mini_smol",
        common.RESULTS / "mini_smol.json",
        "<!-- mini-smol:start -->",
        "<!-- mini-smol:end -->",
    ),
    "mismatch": Arm(
        "mismatch",
        "Mini-replication on SmolLM2-135M (CPU) with the paper's planner pairs",
        # every mined mismatch a pair, unjudged; the planner's DPO at the strength chosen on
        # validation in the planner study, under the validation guard (best step exported);
        # the generator's and vanilla model's DPO as in the judged arm
        (
            "ipm.planner_pairs=mismatch",
            "dpo.roles.planner.learning_rate=1e-6",
            "dpo.roles.planner.max_steps=60",
            "dpo.roles.planner.per_device_train_batch_size=8",
            "dpo.roles.planner.validation_every=10",
            "dpo.roles.planner.validation_turns=200",
            "dpo.roles.planner.export_best=true",
        ),
        common.RESULTS / "mini_smol_ipm",
        common.RESULTS / "mini_smol_ipm.json",
        "<!-- mini-smol-ipm:start -->",
        "<!-- mini-smol-ipm:end -->",
    ),
}
JUDGED = ARMS["judged"]
RESULTS, OUT_JSON, START, END = JUDGED.results, JUDGED.out_json, JUDGED.start, JUDGED.end
ZERO_SHOT = next(iter(ZERO_SHOT_SYSTEMS))  # the pipeline's system (eval.zero_shot)
LABEL_BASELINES = BASELINES
TITLES = {**SYSTEM_TITLES, ZERO_SHOT: "SmolLM2 zero-shot", **LABEL_BASELINES}
ROWS = (*SYSTEMS, ZERO_SHOT, *LABEL_BASELINES)
STRATEGY_COLS = ("Q", "weighted_f1", "accuracy", "B", "B_converged", "used", "unparseable")
REPLY_COLS = ("bleu_2", "rouge_l", "distinct_2", "any_error", "adherence")
VARIANTS = ("balanced", "no-tags")
# the systems a variant changes (the others are the seed's own)
VARIANT_SYSTEMS = {
    "balanced": ("vanilla-dpo", "decoupled-dpo"),
    "no-tags": ("decoupled-sft", "decoupled-dpo"),
}
# variants declared as overrides of the seed's run: a pipeline run into RUN/extra/NAME that
# reuses every stage whose key they leave unchanged (esc-dist pipeline --reuse) and runs the
# pipeline's stages of VARIANT_SYSTEMS only. judge.balance changes the planner's and the joint
# model's judge stages alone (the generator's verdicts do not depend on it: JudgeConfig.for_role);
# the tags change the planner's and the joint model's data alone (data.tasks.PROMPT_SETTINGS)
DECLARED = {
    "balanced": ("judge.balance=true",),
    "no-tags": ("data.history_strategy_tags=false",),
}
# the seed's pipeline stages a variant reads (it runs them first; current ones are skipped)
_GENERATOR = ("sft-generator", "mine-generator", "judge-generator", "dpo-generator")
VARIANT_STAGES = {
    "balanced": (
        "prepare",
        "base-model",
        "sft-planner",
        "sft-vanilla",
        "mine-planner",
        "mine-vanilla",
        *_GENERATOR,
    ),
    "no-tags": ("prepare", "base-model", *_GENERATOR),
}


def seed_overrides(seed: int, runs: Path) -> list[str]:
    name = f"seed-{seed}"
    return [f"run.seed={seed}", f"run.output_dir={runs / name}", f"run.name=mini-smol-{name}"]


# ---------------------------------------------------------------------------------------------
# Scores


def _headline(report: dict, protocol: str) -> dict:
    return report["protocols"][protocol]["headline"]


def scores_of_report(report: dict) -> dict:
    """One system's row: the paper protocol's headline (mean over decodes), the converged B of
    ``ours``, the offline error rates and adherence (first decode), converged preferences."""
    paper, ours = _headline(report, "paper"), _headline(report, "ours")
    std = report["protocols"]["paper"]["std"] or {}
    errors = (report.get("psych_errors") or {}).get("offline") or {}
    adherence = report.get("adherence") or {}
    per = report["strategy"]["as_others"]["per_strategy"]
    return {
        "Q": paper["Q_as_others"],
        "weighted_f1": paper["weighted_f1_as_others"],
        "accuracy": paper["accuracy_as_others"],
        "B": paper["B_as_others"],
        "B_converged": ours["B_as_others"],
        "unparseable": paper["unparseable"],
        "bleu_2": paper["bleu_2"],
        "rouge_l": paper["rouge_l"],
        "distinct_2": paper["distinct_2"],
        "std_over_decodes": {
            k: std.get(f"{k}_as_others", std.get(k)) for k in ("Q", "B", "bleu_2", "rouge_l")
        },
        "errors": {e: r for e, r in (errors.get("rates") or {}).items() if r is not None},
        "any_error": errors.get("any_error"),
        "adherence": adherence.get("adherence"),
        "turns": paper["turns"],
        "decodes": report["decodes"],
        "predicted": report["counts"].get("predicted_strategies"),  # first decode
        "used": sum(
            1
            for k, v in (report["counts"].get("predicted_strategies") or {}).items()
            if k in STRATEGIES and v
        ),
        "preferences": [per[s]["preference"] for s in STRATEGIES],
    }


def scores_of_labels(gold: list[str], pred: list[str]) -> dict:
    m = strategy_metrics(gold, pred)["as_others"]
    return {
        "Q": m["Q"],
        "weighted_f1": m["weighted_f1"],
        "accuracy": m["accuracy"],
        "B": m["B_kang"],
        "B_converged": m["B"],
        "unparseable": 0,
        "used": len(set(pred)),
        "predicted": {s: pred.count(s) for s in STRATEGIES},
        **{k: None for k in REPLY_COLS},
        "errors": {},
        "turns": len(gold),
        "decodes": 1,
        "preferences": [m["per_strategy"][s]["preference"] for s in STRATEGIES],
    }


def seed_result(
    config: Path,
    runs: Path,
    seed: int,
    reports: dict[str, Path],
    variant: str | None = None,
    pairs: dict[str, Path] | None = None,
) -> dict:
    """The numbers of one finished seed (or variant): every system and the baselines;
    ``pairs``: each role's pairs directory (default: the seed run's, or the variant's)."""
    run = RunLayout(runs / f"seed-{seed}")
    rows = {s: scores_of_report(load_report(p / "report.json")) for s, p in reports.items()}
    recipe = load_recipe(config, seed_overrides(seed, runs))
    config = config.resolve()
    out = {
        "seed": seed,
        "variant": variant,
        "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{platform.system()}, Python {platform.python_version()}",
        "systems": rows,
    }
    if variant is None:
        stages = stage_seconds(recipe)
        zero = {f"infer-{ZERO_SHOT}", f"eval-{ZERO_SHOT}"}
        out["stage_seconds"] = {k: v for k, v in stages.items() if k not in zero}
        out["pipeline_seconds"] = round(sum(v or 0 for v in out["stage_seconds"].values()), 1)
        out["zero_shot_seconds"] = round(stages.get(f"infer-{ZERO_SHOT}") or 0, 1)
        pred = run.predictions("decoupled-sft") / "predictions.jsonl"
        gold, preds = strategy_baselines(run.data, seed, {p.id for p in load_predictions(pred)})
        out["systems"].update({k: scores_of_labels(gold, v) for k, v in preds.items()})
    judged = {}
    for role in ("planner", "generator", "vanilla"):
        stats = run.pairs(role) / "stats.json"
        if variant is not None:
            stats = work_dir(run.root, variant) / f"prefdial-{role}" / "stats.json"
        if pairs is not None:
            stats = pairs[role] / "stats.json"
        if stats.is_file():
            st = read_json(stats)
            judged[role] = {
                "pairs_in": st["pairs_in"],
                "kept": st["kept"],
                "rejected_kept": {
                    s: sum(row[s] for row in st["confusion_kept"].values())
                    for s in [*STRATEGIES, "unparseable"]
                },
                **({"balance": st["balance"]} if "balance" in st else {}),
            }
    out["judged"] = judged
    return out


def result_path(seed: int, variant: str | None = None, arm: Arm = JUDGED) -> Path:
    name = f"seed-{seed}" if variant is None else f"variant-{variant}-seed-{seed}"
    return arm.results / f"{name}.json"


def save_result(result: dict, seed: int, variant: str | None = None, arm: Arm = JUDGED) -> None:
    arm.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result_path(seed, variant, arm), result)
    print(f"wrote {result_path(seed, variant, arm)}", flush=True)


def run_seed(config: Path, runs: Path, seed: int, arm: Arm = JUDGED) -> None:
    """A seed's run (the recipe's, judged pairs) and its zero-shot baseline; for another arm,
    then the arm's overrides as a variant of that run into RUN/extra/ARM, reusing every stage
    they leave unchanged, and its four systems scored from where the plan put them."""
    overrides = seed_overrides(seed, runs)
    run_pipeline(config, overrides)
    run = RunLayout(runs / f"seed-{seed}")
    reports = {s: run.report(s) for s in (*SYSTEMS, ZERO_SHOT)}  # eval.zero_shot in the recipe
    pairs, replaced = None, {}
    if arm.overrides:
        own = [*overrides, *arm.overrides, f"run.output_dir={work_dir(run.root, arm.name)}"]
        out = run_reusing(config, own, run.root)
        ours = {s: out[f"eval-{s}"] for s in SYSTEMS}
        # the systems the arm made again, as the seed's own run (judged pairs) made them here
        replaced = {
            s: scores_of_report(load_report(reports[s] / "report.json"))
            for s in SYSTEMS
            if ours[s] != reports[s]
        }
        reports.update(ours)
        pairs = {role: out[f"judge-{role}"] for role in ROLES}
    result = seed_result(config, runs, seed, reports, pairs=pairs)
    if arm.overrides:
        result["pairs"], result["overrides"] = arm.name, list(arm.overrides)
        result["judged_systems"] = replaced
    save_result(result, seed, arm=arm)


def run_variant(config: Path, runs: Path, seed: int, variant: str) -> None:
    """A variant on a seed: the seed's stages it reads first (skipped when current, so a seed
    whose run directory did not survive a move to another machine runs only those again), then
    the variant's own steps; its time counts the latter only."""
    run_pipeline(config, seed_overrides(seed, runs), VARIANT_STAGES[variant])
    t0 = time.time()
    reports, pairs = declared_variant(config, runs, seed, variant)
    result = seed_result(config, runs, seed, reports, variant, pairs)
    result["seconds_this_run"] = round(time.time() - t0, 1)  # 0-ish when all was done before
    save_result(result, seed, variant)


def declared_variant(
    config: Path, runs: Path, seed: int, variant: str
) -> tuple[dict[str, Path], dict[str, Path]]:
    """A variant of :data:`DECLARED` on the seed's run: the pipeline with its overrides into
    RUN/extra/VARIANT, through the stages of its systems, every unchanged stage reused; the
    report directory per system and the pairs directory per role (the variant's or reused)."""
    run = RunLayout(runs / f"seed-{seed}")
    own = [
        *seed_overrides(seed, runs),
        *DECLARED[variant],
        f"run.output_dir={work_dir(run.root, variant)}",
    ]
    systems = VARIANT_SYSTEMS[variant]
    out = run_reusing(config, own, run.root, tuple(f"eval-{s}" for s in systems))
    return {s: out[f"eval-{s}"] for s in systems}, {r: out[f"judge-{r}"] for r in ROLES}


# ---------------------------------------------------------------------------------------------
# Report (from the committed result files only)


def load_results(arm: Arm = JUDGED) -> tuple[dict[int, dict], dict[str, dict]]:
    seeds, variants = {}, {}
    for path in sorted(arm.results.glob("*.json")):
        r = read_json(path)
        if r.get("variant"):
            variants[f"{r['variant']}-seed-{r['seed']}"] = r
        else:
            seeds[int(r["seed"])] = r
    return dict(sorted(seeds.items())), variants


def aggregate(seeds: dict[int, dict]) -> dict:
    agg = {}
    for s in ROWS:
        rows = [r["systems"][s] for r in seeds.values() if s in r["systems"]]
        if not rows:
            continue
        agg[s] = {k: mean_std([r.get(k) for r in rows]) for k in (*STRATEGY_COLS, *REPLY_COLS)}
        # the 20-sweep B undefined in any seed: no mean over the others
        agg[s]["B_undefined_seeds"] = sum(r.get("B") is None for r in rows)
        if agg[s]["B_undefined_seeds"]:
            agg[s]["B"] = (None, None)
        agg[s]["errors"] = {
            e: mean_std([r["errors"].get(e) for r in rows])
            for e in ERROR_TYPES
            if any(e in r["errors"] for r in rows)
        }
        prefs = [r["preferences"] for r in rows if all(p is not None for p in r["preferences"])]
        agg[s]["preferences"] = [sum(col) / len(col) for col in zip(*prefs)] if prefs else None
        agg[s]["seeds"] = len(rows)
    return agg


PERCENT = {
    "Q",
    "weighted_f1",
    "accuracy",
    "bleu_2",
    "rouge_l",
    "distinct_2",
    "any_error",
    "adherence",
    *ERROR_TYPES,
}
NAMES = {
    "Q": "Q %",
    "weighted_f1": "weighted-F1 %",
    "accuracy": "accuracy %",
    "B": "B (paper)",
    "B_converged": "B (converged)",
    "used": "strategies used",
    "unparseable": "unparseable",
    "bleu_2": "BLEU-2 %",
    "rouge_l": "ROUGE-L %",
    "distinct_2": "Distinct-2 %",
    "any_error": "any error %",
    "adherence": "adherence %",
}


def fmt(key: str, value) -> str:
    mean, std = value if isinstance(value, tuple) else (value, None)
    if mean is None:
        return "–"
    scale, digits = (
        (100, 1) if key in PERCENT else (1, 1) if key in ("unparseable", "used") else (1, 3)
    )
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def table(rows: dict[str, dict], cols: tuple[str, ...], order=ROWS, titles=None) -> list[str]:
    titles = titles or TITLES
    out = [
        "| system | " + " | ".join(NAMES.get(c, c) for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for s in order:
        if s in rows:
            out.append(
                f"| {titles[s]} | " + " | ".join(fmt(c, rows[s].get(c)) for c in cols) + " |"
            )
    return out


def error_table(rows: dict[str, dict], order=ROWS) -> list[str]:
    types = [e for e in ERROR_TYPES if any(e in (rows[s].get("errors") or {}) for s in rows)]
    out = [
        "| system | " + " | ".join(f"{e} %" for e in types) + " | any error % |",
        "|---" * (len(types) + 2) + "|",
    ]
    for s in order:
        if s in rows and rows[s].get("errors"):
            out.append(
                f"| {TITLES[s]} | "
                + " | ".join(fmt(e, rows[s]["errors"].get(e)) for e in types)
                + " | "
                + fmt("any_error", rows[s].get("any_error"))
                + " |"
            )
    return out


def per_seed_lines(seeds: dict[int, dict]) -> list[str]:
    """Per seed: B (paper and converged) and Q of the four systems, the deltas the question is
    about."""
    out = [
        "| seed | " + " | ".join(f"{TITLES[s]} Q / B / B conv." for s in SYSTEMS) + " |",
        "|---" * (len(SYSTEMS) + 1) + "|",
    ]
    for k, r in seeds.items():
        cells = []
        for s in SYSTEMS:
            x = r["systems"][s]
            cells.append(
                f"{fmt('Q', x['Q'])} / {fmt('B', x['B'])} / {fmt('B_converged', x['B_converged'])}"
            )
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    return out


def judged_lines(seeds: dict[int, dict]) -> list[str]:
    """For an arm: per seed, the systems it made again beside the same run's own (judged pairs,
    the same machine and SFT models), and that run's SFT system for reference."""
    if not any(r.get("judged_systems") for r in seeds.values()):
        return []
    cols = ("Q", "accuracy", "B", "B_converged", "used", "any_error")
    out = [
        "**Beside the judged pairs of the same run** (per seed: the arm's system, the same "
        "seed's run with the judged planner pairs -- same machine, same SFT models -- and "
        "their SFT system)",
        "",
        "| seed | system | " + " | ".join(NAMES.get(c, c) for c in cols) + " |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for k, r in seeds.items():
        for s, judged in (r.get("judged_systems") or {}).items():
            sft = s.replace("-dpo", "-sft")
            for title, row in (
                (f"{TITLES[s]} (paper pairs)", r["systems"][s]),
                (f"{TITLES[s]} (judged pairs)", judged),
                (TITLES[sft], r["systems"].get(sft)),
            ):
                if row:
                    cells = " | ".join(fmt(c, row.get(c)) for c in cols)
                    out.append(f"| {k} | {title} | {cells} |")
    return [*out, ""]


def plot_all(seeds: dict[int, dict], agg: dict, arm: Arm = JUDGED) -> None:
    arm.results.mkdir(parents=True, exist_ok=True)
    plot_preferences(
        {TITLES[s]: agg[s]["preferences"] for s in agg if agg[s]["preferences"]},
        arm.results / "preferences_all.png",
        "Strategy preferences (converged fit), mean over seeds (ideal 1.0)",
    )
    for s in (*SYSTEMS, ZERO_SHOT):
        series = {
            f"seed {k}": r["systems"][s]["preferences"]
            for k, r in seeds.items()
            if s in r["systems"] and None not in r["systems"][s]["preferences"]
        }
        if series:
            plot_preferences(
                series,
                arm.results / f"preferences_{s}.png",
                f"{TITLES[s]}: strategy preferences per seed",
            )


def render(seeds: dict[int, dict], variants: dict[str, dict], agg: dict, arm: Arm = JUDGED) -> str:
    first = next(iter(seeds.values()))
    folder = arm.results.relative_to(common.RESULTS.parent)  # results/mini_smol...
    turns = int(first["systems"]["decoupled-sft"]["turns"])
    decodes = first["systems"]["decoupled-sft"]["decodes"]
    times = {
        k: r.get("pipeline_seconds", 0) + r.get("zero_shot_seconds", 0) for k, r in seeds.items()
    }
    lines = [
        arm.start,
        f"## {arm.title}",
        "",
        f"Produced by `python -m experiments.smol_replication"
        f"{'' if arm is JUDGED else f' --pairs {arm.name}'}` from the result files in "
        f"`experiments/{folder}/` (last seed scored "
        f"{max(r['date'] for r in seeds.values())}, "
        f"{first['machine']}); recipe `{first['config']}`, {len(seeds)} seed"
        f"{'s' * (len(seeds) > 1)} ({', '.join(map(str, seeds))}; `run.seed`). Test: the "
        f"first 20 DecoupledESC test dialogues by id, {turns} supporter turns, the same for "
        f"every system; paper protocol: {decodes} sampled decodes (temperature 0.7, top-p "
        "0.95) per system and seed, metrics averaged over the decodes, then mean ± sample "
        "std over seeds. Strategy metrics count an unparseable prediction as *Others*. "
        "B (paper) is the released 20-sweep fit, B (converged) the fitted Bradley-Terry "
        "model; ideal 0 for both, – where the 20-sweep fit divides 0 by 0 (in any seed: "
        "some strategy never predicted). *Strategies used*: how many of the 8 the first "
        "decode predicts at all. Error rates (offline rules, the same rules the IPM judge "
        "keeps pairs by) and adherence are of the first decode. Every number is in "
        f"`experiments/{arm.out_json.relative_to(common.RESULTS.parent)}`."
        + (
            ""
            if arm is JUDGED
            else " The arm's overrides, on each seed's run (every stage they leave unchanged "
            "reused from it): " + ", ".join(f"`{o}`" for o in arm.overrides) + "."
        ),
        "",
        "**Strategy**",
        "",
        *table(agg, STRATEGY_COLS),
        "",
        "**Replies** (paper definitions)",
        "",
        *table(agg, REPLY_COLS, order=(*SYSTEMS, ZERO_SHOT)),
        "",
        "**Psychological error rates by type** (offline rules; the types they can see)",
        "",
        *error_table(agg),
        "",
        "**Per seed** (Q % / B paper / B converged)",
        "",
        *per_seed_lines(seeds),
        "",
        *judged_lines(seeds),
        "Per-strategy preferences (converged Bradley-Terry fit, ideal 1.0 each), mean over "
        f"seeds: ![preferences]({folder}/preferences_all.png); per seed: "
        + ", ".join(f"[{TITLES[s]}]({folder}/preferences_{s}.png)" for s in (*SYSTEMS, ZERO_SHOT))
        + ".",
        "",
        "Time per seed (pipeline stages + zero-shot inference): "
        + ", ".join(f"seed {k} {v / 60:.0f} min" for k, v in times.items())
        + ".",
        "",
    ]
    for name, r in variants.items():
        variant, seed = r["variant"], r["seed"]
        base = seeds.get(seed)
        changed = VARIANT_SYSTEMS[variant]
        title = {
            "balanced": "judge.balance: true (kept planner and vanilla pairs capped per "
            "chosen and rejected strategy)",
            "no-tags": "data.history_strategy_tags: false (no past strategies in the "
            "planner's prompts; the same generators)",
        }[variant]
        lines += [
            f"**Variant {variant}, seed {seed}**: {title}. First the variant's rows, then "
            f"the same systems of seed {seed} as specified.",
            "",
        ]
        rows = {s: r["systems"][s] for s in changed}
        both, order, titles = {}, [], dict(TITLES)
        for s in changed:
            both[f"{s}@v"] = rows[s]
            order.append(f"{s}@v")
            titles[f"{s}@v"] = f"{TITLES[s]} ({variant})"
            if base:
                both[s] = base["systems"][s]
                order.append(s)
        lines += [
            *table(both, (*STRATEGY_COLS, "bleu_2", "any_error"), order=order, titles=titles),
            "",
        ]
        for role, j in r.get("judged", {}).items():
            if "balance" in j:
                b = j["balance"]
                lines.append(
                    f"- {role} pairs: {b['kept_before']} kept by the judge, "
                    f"{b['kept_after']} after balancing (caps: {b['caps']['chosen']} per "
                    f"chosen, {b['caps']['rejected']} per rejected strategy)."
                )
            else:
                own = (base or {}).get("judged", {}).get(role)
                lines.append(
                    f"- {role} pairs: {j['kept']} of {j['pairs_in']} mined kept by the "
                    f"judge"
                    + (f" (as specified: {own['kept']} of {own['pairs_in']})" if own else "")
                    + "."
                )
        if r.get("seconds_this_run"):
            lines.append(f"- time: {r['seconds_this_run'] / 60:.0f} min.")
        lines.append("")
    if seeds:
        lines += [
            (
                "Pairs the judge kept (seed: planner / generator / vanilla of the pairs mined): "
                if arm is JUDGED
                else "Preference pairs (seed: planner -- every mined mismatch, not judged -- / "
                "generator / vanilla kept by the judge, of the pairs mined): "
            )
            + "; ".join(
                f"seed {k}: "
                + " / ".join(
                    f"{r['judged'][role]['kept']} of {r['judged'][role]['pairs_in']}"
                    for role in ("planner", "generator", "vanilla")
                    if role in r["judged"]
                )
                for k, r in seeds.items()
            )
            + ".",
            "",
        ]
    lines.append(arm.end)
    return "\n".join(lines)


def render_summary(seeds: dict[int, dict], agg: dict, arm: Arm = JUDGED) -> str:
    """The README's short table: the headline columns of the four systems, the zero-shot and
    bag-of-words baselines."""
    pairs = "" if arm is JUDGED else ", with the paper's planner pairs"
    return "\n".join(
        [
            SUMMARY_START,
            f"Mean ± sample std over seeds {', '.join(map(str, seeds))}{pairs}, as in "
            "`experiments/RESULTS.md` (written there and here by "
            "`python -m experiments.smol_replication`):",
            "",
            *table(
                agg,
                ("Q", "weighted_f1", "B_converged", "bleu_2", "any_error", "adherence"),
                order=(*SYSTEMS, ZERO_SHOT, "bow_lr"),
            ),
            "",
            SUMMARY_END,
        ]
    )


def report() -> str:
    """Each arm's section from its committed result files; the README's short table from the
    judged arm (the paper's pairs once every seed of the judged arm has them)."""
    texts = []
    for arm in ARMS.values():
        seeds, variants = load_results(arm)
        if not seeds:
            continue
        agg = aggregate(seeds)
        atomic_write_json(
            arm.out_json,
            {
                "seeds": {str(k): r for k, r in seeds.items()},
                "variants": variants,
                "aggregate": agg,
            },
        )
        plot_all(seeds, agg, arm)
        texts.append(render(seeds, variants, agg, arm))
        write_section(texts[-1], arm.start, arm.end)
    if not texts:
        raise SystemExit(f"no seed result in {JUDGED.results} yet")
    write_section(render_summary(*summary_source()), SUMMARY_START, SUMMARY_END, README)
    return "\n\n".join(texts)


def summary_source() -> tuple[dict[int, dict], dict, Arm]:
    """The arm the README's table shows: the paper's pairs once they cover every judged seed."""
    judged = load_results(JUDGED)[0]
    paper = load_results(ARMS["mismatch"])[0]
    arm, seeds = (
        (ARMS["mismatch"], paper) if paper and set(judged) <= set(paper) else (JUDGED, judged)
    )
    return seeds, aggregate(seeds), arm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument(
        "--runs",
        type=Path,
        default=Path("runs") / "mini-smol",
        help="one run directory per seed goes under here (relative paths: to the repository root)",
    )
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated; empty: none")
    ap.add_argument("--variants", default="", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--variant-seed", type=int, default=None)
    ap.add_argument(
        "--pairs",
        choices=tuple(ARMS),
        default="judged",
        help="the planner's pairs of the seeds run: judged (the recipe's) or mismatch (the "
        "paper's, a variant of each seed's run)",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing; rebuild the report from the committed result files",
    )
    args = ap.parse_args()
    args.config = args.config.resolve()
    os.chdir(ROOT)  # the pipeline's stage keys hold the run paths as written
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [v for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r} (expected {', '.join(VARIANTS)})")
    if not args.report_only:
        for seed in seeds:
            run_seed(args.config, args.runs, seed, ARMS[args.pairs])
        vseed = args.variant_seed if args.variant_seed is not None else (seeds or [0])[0]
        for v in variants:
            run_variant(args.config, args.runs, vseed, v)
    print(report())


if __name__ == "__main__":
    main()
