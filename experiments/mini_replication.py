"""Mini-replication on CPU: does Decoupled-DPO lower strategy preference bias at small scale?

For each seed, runs ``configs/mini-cpu.yaml`` through ``esc-dist pipeline`` (``run.seed`` and
``tiny_model.seed`` set to the seed; a seed that already finished stages resumes from them), then
scores the four systems (Vanilla-SFT, Vanilla-DPO, Decoupled-SFT, Decoupled-DPO) and three
baselines on the same test split:

- majority: always the most frequent training strategy;
- random by train prior: a strategy drawn from the training frequencies (seeded per seed);
- bag-of-words logistic regression: TF-IDF of the planner prompt's dialogue text (the same
  history the planner sees), word 1-2-grams, scikit-learn's ``LogisticRegression``.

With ``--sweep`` it also trains the planner's DPO for a grid of (beta, learning rate, SFT-loss
weight) from the first seed's SFT planner and judged pairs: each point a variant of the seed's
run that changes only ``dpo.roles.planner`` (``esc-dist pipeline --reuse``), scored as
Decoupled-DPO (with the seed's DPO generator) by the pipeline's own inference and eval stages
on the test split. (The committed sweep rows were made before, with the SFT generator writing
the replies; the strategy metrics in the table are the planner's either way.)

Writes ``experiments/results/mini_replication.json`` (every number, per seed), the per-strategy
preference plots ``experiments/results/mini_replication/*.png``, and the section between the
``mini-replication`` markers of ``experiments/RESULTS.md``.

Usage: python -m experiments.mini_replication [--seeds 0,1,2] [--sweep] [--skip-seeds]
       [--report-only]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from esc_dist.config import load_recipe
from esc_dist.constants import SYSTEM_TITLES, SYSTEMS
from esc_dist.eval.baselines import BASELINES, strategy_baselines
from esc_dist.eval.compare import load_report
from esc_dist.eval.plots import plot_preferences
from esc_dist.eval.predictions import load_predictions
from esc_dist.eval.strategy import strategy_metrics
from esc_dist.io import atomic_write_json, read_json
from esc_dist.layout import RunLayout, work_dir
from esc_dist.pipeline import plan
from esc_dist.strategies import STRATEGIES
from experiments.common import (
    RESULTS,
    ROOT,
    mean_std,
    run_pipeline,
    run_reusing,
    stage_seconds,
    write_section,
)

CONFIG = ROOT / "configs" / "mini-cpu.yaml"
OUT_JSON = RESULTS / "mini_replication.json"
PLOTS = RESULTS / "mini_replication"
START, END = "<!-- mini-replication:start -->", "<!-- mini-replication:end -->"
# (beta, learning rate, sft_weight)
SWEEP = [
    (0.1, 5e-5, 1.0),
    (0.1, 2e-4, 1.0),
    (0.1, 1e-3, 1.0),
    (0.5, 5e-5, 1.0),
    (0.5, 2e-4, 1.0),
    (0.5, 1e-3, 1.0),
    (0.1, 2e-4, 0.0),
]
STRATEGY_KEYS = ("Q", "weighted_f1", "accuracy", "B")
TEXT_KEYS = ("bleu_2", "rouge_l", "distinct_2")


def seed_overrides(seed: int, runs: Path) -> list[str]:
    return [
        f"run.seed={seed}",
        f"tiny_model.seed={seed}",
        f"run.output_dir={runs / f'seed-{seed}'}",
        f"run.name=mini-cpu-seed-{seed}",
    ]


def run_seed(config: Path, seed: int, runs: Path) -> None:
    """Run (or resume) one seed's pipeline."""
    run_pipeline(config, seed_overrides(seed, runs))


def scores_of_report(report: dict) -> dict:
    h = report["headline"]
    per = report["strategy"]["as_others"]["per_strategy"]
    return {
        **{k: h[f"{k}_as_others"] for k in STRATEGY_KEYS},
        **{k: h[k] for k in TEXT_KEYS},
        "unparseable": h["unparseable"],
        "turns": h["turns"],
        "preferences": [per[s]["preference"] for s in STRATEGIES],
    }


def scores_of_labels(gold: list[str], pred: list[str]) -> dict:
    m = strategy_metrics(gold, pred)["as_others"]
    return {
        **{k: m[k] for k in STRATEGY_KEYS},
        **{k: None for k in TEXT_KEYS},
        "unparseable": 0,
        "turns": len(gold),
        "preferences": [m["per_strategy"][s]["preference"] for s in STRATEGIES],
    }


def baselines(data_dir: Path, seed: int, ids: set[str]) -> dict:
    """The three baselines' scores on the test turns ``ids``."""
    gold, preds = strategy_baselines(data_dir, seed, ids)
    return {name: scores_of_labels(gold, pred) for name, pred in preds.items()}


def seed_results(runs: Path, seed: int) -> dict | None:
    run = RunLayout(runs / f"seed-{seed}")
    reports = {s: run.report(s) / "report.json" for s in SYSTEMS}
    if not all(p.is_file() for p in reports.values()):
        return None
    out = {s: scores_of_report(load_report(p)) for s, p in reports.items()}
    predicted = run.predictions("decoupled-sft") / "predictions.jsonl"
    ids = {p.id for p in load_predictions(predicted)}
    out.update(baselines(run.data, seed, ids))
    return out


def sweep_overrides(seed: int, runs: Path, beta: float, lr: float, sft_weight: float) -> list[str]:
    """A sweep point: the seed's run with the planner's DPO settings only (``dpo.roles``), into
    RUN/extra/sweep-TAG."""
    tag = f"beta{beta:g}-lr{lr:g}-sft{sft_weight:g}"
    return [
        *seed_overrides(seed, runs),
        f"dpo.roles.planner.beta={beta}",
        f"dpo.roles.planner.learning_rate={lr}",
        f"dpo.roles.planner.sft_weight={sft_weight}",
        f"run.output_dir={work_dir(runs / f'seed-{seed}', f'sweep-{tag}')}",
    ]


SWEEP_STAGES = ("dpo-planner", "infer-decoupled-dpo", "eval-decoupled-dpo")


def sweep(config: Path, runs: Path, seed: int, points) -> list[dict]:
    """Planner DPO for each (beta, lr, sft_weight): a variant of the seed's run (``esc-dist
    pipeline --reuse``) that changes the planner's DPO settings only, so everything else is
    read from the seed's run; Decoupled-DPO (the point's planner, the seed's DPO generator)
    inferred and scored by the pipeline's own stages (error rates, adherence, W&B included)."""
    base = RunLayout(runs / f"seed-{seed}")
    results = []
    for beta, lr, sft_weight in points:
        tag = f"beta{beta:g}-lr{lr:g}-sft{sft_weight:g}"
        own = sweep_overrides(seed, runs, beta, lr, sft_weight)
        t0 = time.time()
        out = run_reusing(config, own, base.root, SWEEP_STAGES)
        report = load_report(out["eval-decoupled-dpo"] / "report.json")
        manifest = read_json(out["dpo-planner"] / "manifest.json")
        results.append(
            {
                "beta": beta,
                "learning_rate": lr,
                "sft_weight": sft_weight,
                "steps": manifest.get("global_step"),
                "final_reward_accuracy": manifest.get("final_reward_accuracy"),
                "seconds": round(time.time() - t0, 1),
                **scores_of_report(report),
            }
        )
        print(f"sweep {tag}: Q {100 * results[-1]['Q']:.1f} B {results[-1]['B']:.3f}", flush=True)
    return results


def aggregate(per_seed: dict[str, dict]) -> dict:
    systems = [*SYSTEMS, *BASELINES]
    agg = {}
    for s in systems:
        rows = [per_seed[k][s] for k in sorted(per_seed)]
        agg[s] = {
            k: mean_std([r[k] for r in rows]) for k in (*STRATEGY_KEYS, *TEXT_KEYS, "unparseable")
        }
        agg[s]["preferences"] = np.mean([r["preferences"] for r in rows], axis=0).tolist()
    return agg


def fmt(key: str, value: tuple[float | None, float | None]) -> str:
    mean, std = value
    if mean is None:
        return "–"
    scale, digits = (1, 3) if key == "B" else (1, 0) if key == "unparseable" else (100, 1)
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def title(system: str) -> str:
    return SYSTEM_TITLES.get(system) or BASELINES[system]


def plot_all(per_seed: dict[int, dict], agg: dict) -> list[Path]:
    PLOTS.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_preferences(
            {title(s): agg[s]["preferences"] for s in agg},
            PLOTS / "preferences_all.png",
            "Strategy preferences, mean over seeds (ideal 1.0)",
        )
    ]
    for s in SYSTEMS:
        series = {f"seed {k}": per_seed[k][s]["preferences"] for k in sorted(per_seed)}
        paths.append(
            plot_preferences(
                series, PLOTS / f"preferences_{s}.png", f"{title(s)}: strategy preferences per seed"
            )
        )
    return paths


def render(results: dict) -> str:
    seeds = sorted(results["per_seed"], key=int)
    agg = results["aggregate"]
    cols = (*STRATEGY_KEYS, *TEXT_KEYS, "unparseable")
    names = {
        "Q": "Q (macro-F1 %)",
        "weighted_f1": "weighted-F1 %",
        "accuracy": "accuracy %",
        "B": "B",
        "bleu_2": "BLEU-2 %",
        "rouge_l": "ROUGE-L %",
        "distinct_2": "Distinct-2 %",
        "unparseable": "unparseable",
    }
    lines = [
        START,
        "## Mini-replication on CPU: does Decoupled-DPO lower preference bias?",
        "",
        f"Produced by `python -m experiments.mini_replication` on {results['date']}, "
        f"{results['machine']}; recipe `configs/mini-cpu.yaml`, "
        f"{len(seeds)} seed{'s' * (len(seeds) > 1)} ({', '.join(seeds)}; "
        f"`run.seed` and `tiny_model.seed` both set to the seed). Test split of "
        f"DecoupledESC, {results['test_turns']} supporter turns; mean ± sample std over "
        "seeds. Strategy metrics count an unparseable prediction as *Others*. Every "
        "number is in `experiments/results/mini_replication.json`.",
        "",
        "| system | " + " | ".join(names[c] for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for s in (*SYSTEMS, *BASELINES):
        lines.append(f"| {title(s)} | " + " | ".join(fmt(c, agg[s][c]) for c in cols) + " |")
    lines += [
        "",
        "Per-strategy preferences (Bradley-Terry, ideal 1.0 each), mean over seeds: "
        "![preferences](results/mini_replication/preferences_all.png); per seed: "
        + ", ".join(f"[{title(s)}](results/mini_replication/preferences_{s}.png)" for s in SYSTEMS)
        + ".",
        "",
    ]
    times = results.get("seconds_per_seed", {})
    if times:
        lines.append(
            "Time of each seed's pipeline (sum of its stages): "
            + ", ".join(f"seed {k} {v / 60:.0f} min" for k, v in sorted(times.items()))
            + "."
        )
        lines.append("")
    if results.get("sweep"):
        lines += [
            f"**Planner DPO sensitivity** (seed {results['sweep_seed']}: its SFT planner "
            "and judged planner pairs; Decoupled inference on the test split; one run per "
            "point). The first row is the SFT planner itself.",
            "",
            "| beta | lr | sft_weight | steps | reward acc. | Q % | weighted-F1 % | B | "
            "accuracy % | unparseable |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        sft = results["per_seed"].get(str(results["sweep_seed"]), {}).get("decoupled-sft")
        if sft:
            lines.append(
                "| – | – | – | 0 | – | "
                + " | ".join(
                    fmt(k, (sft[k], None))
                    for k in ("Q", "weighted_f1", "B", "accuracy", "unparseable")
                )
                + " |"
            )
        for r in results["sweep"]:
            acc = r["final_reward_accuracy"]
            lines.append(
                f"| {r['beta']:g} | {r['learning_rate']:g} | {r['sft_weight']:g} | "
                f"{r['steps']} | {'–' if acc is None else f'{acc:.2f}'} | "
                + " | ".join(
                    fmt(k, (r[k], None))
                    for k in ("Q", "weighted_f1", "B", "accuracy", "unparseable")
                )
                + " |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument(
        "--runs",
        type=Path,
        default=Path("runs") / "mini-cpu",
        help="one run directory per seed goes under here (relative paths: to the repository root)",
    )
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sweep", action="store_true", help="also run the planner DPO sweep")
    ap.add_argument(
        "--skip-seeds",
        action="store_true",
        help="do not run the seeds' pipelines; report the ones already finished",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing; report the seeds and sweep points already finished",
    )
    args = ap.parse_args()
    os.chdir(ROOT)  # the pipeline's stage keys hold the run paths as written
    seeds = [int(s) for s in args.seeds.split(",")]
    previous = read_json(OUT_JSON) if OUT_JSON.is_file() else {}
    seconds = {}
    for seed in seeds:
        if not (args.report_only or args.skip_seeds):
            run_seed(args.config, seed, args.runs)
        recipe = load_recipe(args.config, seed_overrides(seed, args.runs))
        stages = stage_seconds(recipe)
        if len(stages) == len(plan(recipe)) and all(v is not None for v in stages.values()):
            seconds[str(seed)] = sum(stages.values())  # else some stage's time was not kept
    per_seed = {str(k): r for k in seeds if (r := seed_results(args.runs, k)) is not None}
    if not per_seed:
        raise SystemExit("no seed has finished all four reports yet")
    # a sweep not run now is carried over with the seed it was run on
    sweep_rows, sweep_seed = previous.get("sweep", []), previous.get("sweep_seed", seeds[0])
    if args.sweep and not args.report_only:
        sweep_rows, sweep_seed = sweep(args.config, args.runs, seeds[0], SWEEP), seeds[0]
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{platform.system()}, Python {platform.python_version()}",
        "config": str(args.config.relative_to(ROOT))
        if args.config.is_relative_to(ROOT)
        else str(args.config),
        "test_turns": next(iter(per_seed.values()))["decoupled-sft"]["turns"],
        "per_seed": per_seed,
        "aggregate": aggregate(per_seed),
        "seconds_per_seed": {k: v for k, v in seconds.items() if k in per_seed},
        "sweep": sweep_rows,
        "sweep_seed": sweep_seed,
    }
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT_JSON, results)
    plot_all(per_seed, results["aggregate"])
    text = render(results)
    write_section(text, START, END)
    print(text)


if __name__ == "__main__":
    main()
