"""The planner study: does DPO on the paper's planner pairs lower preference bias B?

For each seed, runs ``configs/planner-smol.yaml`` (``run.seed`` set to the seed) through
``esc-dist pipeline --only prepare,base-model,sft-planner,mine-planner,judge-planner,dpo-planner``:
the SmolLM2 planner's SFT on 2,121 training turns, IPM mining on those turns, the paper's
mismatch pairs (``ipm.planner_pairs: mismatch``) and DPO with the validation guard. Then the SFT
and DPO planners predict the strategy of **every** test turn (1,792; planner-only inference, one
decode sampled as the paper samples, 0.7 / 0.95), and so does SmolLM2 zero-shot (the converted
base model as planner, same prompts; on the first seed only: it has no training). Scored with
:func:`esc_dist.eval.strategy.strategy_metrics` (unparseable as *Others*): Q, weighted-F1,
accuracy, B converged and B of the released 20-sweep fit, and each strategy's share of the
predictions; with the majority, random-by-prior and bag-of-words baselines of
``experiments/mini_replication.py`` trained on the study's training turns.

Pieces, each written as soon as it is done (commit them: run directories do not survive a move
to another machine):

- ``experiments/results/planner_study/seed-K.mining.json`` -- after mining: the pairs, what
  they teach (chosen minus rejected per strategy), the SFT and mining times;
- ``experiments/results/planner_study/seed-K.dpo.json`` -- after DPO: its time and the
  validation guard's trajectory (B, Q, shares every ``dpo.validation_every`` steps);
- ``experiments/results/planner_study/seed-K.json`` -- after the test predictions;
- ``experiments/results/planner_study/variant-judged-seed-K.json`` -- ``--variant judged``: the
  same seed's mined pairs through the offline judge (``ipm.planner_pairs: judged``), its DPO
  and test predictions, side by side with the mismatch pairs;
- ``experiments/results/planner_study/samples-probe-seed-K.json`` -- ``--samples-probe``: 4
  samples on each of the first 300 training turns, and the pairs 1, 2 and 4 samples make.

``--through mine`` stops each seed after mining (and the planner pairs built from it). The
checkpoints of a training stage are deleted once its export is complete. The report
(``--report-only`` runs nothing else) is rendered from the committed result files alone into
the section between the ``planner-study`` markers of ``experiments/RESULTS.md``.

- ``experiments/results/planner_study/sweep-seed-K-lrX.json`` -- ``--sweep X,...``: the
  DPO-strength sweep on validation (the guard's trajectory at each learning rate).

Usage: python -m experiments.planner_study [--seeds 0,1,2] [--through mine|all]
       [--variant judged] [--samples-probe] [--variant-seed 0] [--report-only]
       [--sweep LR,... [--sweep-steps 60] [--sweep-every 10]]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from esc_dist.config import load_recipe
from esc_dist.dist import resolve_precision
from esc_dist.eval.baselines import BASELINES, strategy_baselines
from esc_dist.eval.predictions import load_predictions
from esc_dist.eval.strategy import strategy_metrics
from esc_dist.io import COMPLETED, atomic_write_json, read_json
from esc_dist.layout import RunLayout, training_work, work_dir
from esc_dist.strategies import STRATEGIES
from experiments import common
from experiments.common import (
    ROOT,
    Study,
    launch,
    mean_std,
    run_pipeline,
    stage_seconds,
    write_section,
)

RESULTS = common.RESULTS / "planner_study"
START, END = "<!-- planner-study:start -->", "<!-- planner-study:end -->"
STUDY = Study(
    recipe=ROOT / "configs" / "planner-smol.yaml",
    seeds=(0, 1, 2),
    stages=("prepare", "base-model", "sft-planner", "mine-planner", "judge-planner", "dpo-planner"),
    # the same seed's run with the offline judge's planner pairs; data, SFT and mining reused
    variants={"judged": ("ipm.planner_pairs=judged",)},
)
CONFIG, STAGES = STUDY.recipe, STUDY.stages
THROUGH_MINE = STAGES[:5]  # through the (unjudged) planner pairs
SYSTEMS = {"sft": "SFT planner", "dpo": "DPO planner", "zero_shot": "SmolLM2 zero-shot"}
KEYS = ("Q", "weighted_f1", "accuracy", "B", "B_kang")


def overrides(seed: int, runs: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [f"run.seed={seed}", f"run.output_dir={runs / f'seed-{seed}'}", *extra]


def drop_checkpoints(run: RunLayout) -> None:
    """Remove the training checkpoints of the planner stages whose export is complete (a few
    GB each; the export is all later steps read)."""
    import shutil

    for stage in ("sft", "dpo"):
        export = run.model(stage, "planner")
        if (export / COMPLETED).is_file():
            shutil.rmtree(training_work(export) / "checkpoints", ignore_errors=True)


def machine() -> dict:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name")),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags,
        "precision": resolve_precision("auto"),
        "python": platform.python_version(),
    }


def pipeline(
    config: Path,
    seed: int,
    runs: Path,
    stages: tuple[str, ...],
    extra: tuple[str, ...] = (),
    reuse: Path | None = None,
) -> None:
    """``stages`` of the seed's run (``extra``: more overrides; ``reuse``: the run this one is
    a variant of, see ``esc-dist pipeline --reuse``)."""
    run_pipeline(config, overrides(seed, runs, extra), stages, reuse)


def predict(
    config: Path, seed: int, runs: Path, planner: Path, out: Path, extra: tuple[str, ...] = ()
) -> Path:
    """Planner-only predictions of every test turn (``esc-dist infer --mode planner``, which
    returns at once when ``out`` is complete for the same planner, data and settings, and
    refuses an output made from others)."""
    run = RunLayout(runs / f"seed-{seed}")
    out.parent.mkdir(parents=True, exist_ok=True)
    ov = overrides(seed, runs, extra)
    launch(
        load_recipe(config, ov),
        [
            "infer",
            "--mode",
            "planner",
            "--planner",
            str(planner),
            "--data",
            str(run.data),
            "--split",
            "test",
            "--out",
            str(out),
            "--config",
            str(config),
            *ov,
        ],
        out.parent / f"{out.name}.log",
    )
    return out / "predictions.jsonl"


def scores(gold: list[str], pred: list[str | None]) -> dict:
    m = strategy_metrics(gold, pred)
    a = m["as_others"]
    n = len(pred)
    return {
        **{k: a[k] for k in KEYS},
        "turns": n,
        "unparseable": m["unparseable"],
        "shares": {s: sum(1 for p in pred if p == s) / n for s in STRATEGIES},
        "preferences": [a["per_strategy"][s]["preference"] for s in STRATEGIES],
    }


def scores_of(path: Path) -> tuple[dict, dict[str, str]]:
    preds = sorted(load_predictions(path), key=lambda p: p.id)
    gold = {p.id: p.gold_strategy for p in preds}
    return scores([p.gold_strategy for p in preds], [p.pred_strategy for p in preds]), gold


def mining_summary(run: RunLayout) -> dict:
    """What the mined and kept planner pairs teach: per strategy, how often it is chosen minus
    how often it is rejected (the direction DPO pushes it)."""
    mined = read_json(run.mined("planner") / "stats.json")
    kept = read_json(run.pairs("planner") / "stats.json")
    conf = kept["confusion_kept"]
    chosen = {s: sum(conf[s].values()) for s in STRATEGIES}
    rejected = {s: sum(conf[g][s] for g in STRATEGIES) for s in STRATEGIES}
    return {
        "turns": mined["turns"],
        "samples": mined["samples"],
        "pairs_mined": mined["pairs"],
        "same_as_gold": mined["same_as_gold"],
        "unparseable": mined["unparseable"],
        "pairs_kept": kept["kept"],
        "planner_pairs": kept.get("planner_pairs"),
        "push": {s: chosen[s] - rejected[s] for s in STRATEGIES},
        "rejected_unparseable": sum(conf[g]["unparseable"] for g in STRATEGIES),
    }


def seed_piece_mining(config: Path, seed: int, runs: Path) -> dict:
    run = RunLayout(runs / f"seed-{seed}")
    recipe = load_recipe(config, overrides(seed, runs))
    secs = stage_seconds(recipe)
    out = {
        "seed": seed,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "config": str(config.relative_to(ROOT)),
        "train_turns": None,
        "seconds": {k: secs.get(k) for k in THROUGH_MINE},
        "mining": mining_summary(run),
    }
    out["train_turns"] = read_json(run.data / "manifest.json")["counts"]["train"]["turns"]
    return out


def seed_piece_dpo(config: Path, seed: int, runs: Path) -> dict:
    """After DPO: its time and summary, and the validation guard's trajectory (B, Q and the
    strategy shares on the validation turns at step 0 and every dpo.validation_every steps)."""
    run = RunLayout(runs / f"seed-{seed}")
    m = read_json(run.model("dpo", "planner") / "manifest.json")
    recipe = load_recipe(config, overrides(seed, runs))
    return {
        "seed": seed,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "seconds": stage_seconds(recipe).get("dpo-planner"),
        "dpo": {
            k: m.get(k)
            for k in (
                "global_step",
                "final_loss",
                "final_reward_accuracy",
                "final_reward_margin",
                "train_runtime_s",
            )
        },
        "settings": {
            k: getattr(recipe.dpo, k)
            for k in (
                "learning_rate",
                "beta",
                "num_train_epochs",
                "per_device_train_batch_size",
                "loss_type",
                "validation_every",
                "validation_turns",
                "shared_prompt",
            )
        },
        "world_size": m.get("world_size"),
        "guard": m.get("guard"),
        "trained_in": m.get("export_dir"),
    }  # a sweep point's directory when adopted


def sweep_point(config: Path, seed: int, runs: Path, lr: float, steps: int, every: int) -> dict:
    """The DPO-strength sweep on validation: one learning rate, ``steps`` steps from the seed's
    SFT planner on its pairs, the validation guard every ``every`` steps (the test split is not
    touched). The tokenized pairs and their cached reference log-probs are copied from the
    seed's DPO stage when it has them (same pairs, same reference: the pass is not repeated)."""
    import shutil

    run = RunLayout(runs / f"seed-{seed}")
    out = work_dir(run.root, "sweep") / f"lr{lr:g}"
    work = training_work(out)
    done = training_work(run.model("dpo", "planner"))
    if not work.exists() and (done / "tokenized").is_dir():
        work.mkdir(parents=True)
        shutil.copy(done / ".esc-dist-output", work)
        shutil.copytree(done / "tokenized", work / "tokenized")
    extra = (
        f"dpo.learning_rate={lr}",
        f"dpo.max_steps={steps}",
        f"dpo.validation_every={every}",
        "dpo.export_best=true",
        f"dpo.save_steps={steps}",
    )
    ov = overrides(seed, runs, extra)
    t0 = time.time()
    if not (out / COMPLETED).is_file():
        launch(
            load_recipe(config, ov),
            [
                "dpo",
                "--role",
                "planner",
                "--pairs",
                str(run.pairs("planner")),
                "--model",
                str(run.model("sft", "planner")),
                "--data",
                str(run.data),
                "--out",
                str(out),
                "--config",
                str(config),
                *ov,
            ],
            out.parent / f"{out.name}.log",
        )
    m = read_json(out / "manifest.json")
    return {
        "seed": seed,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "settings": {"learning_rate": lr, "max_steps": steps, "validation_every": every},
        "seconds": round(time.time() - t0),
        "guard": m.get("guard"),
        "dpo": {k: m.get(k) for k in ("global_step", "final_loss", "final_reward_accuracy")},
    }


# settings that change when a run saves and logs, not the weights it trains
NOT_TRAINING = frozenset({"save_steps", "logging_steps", "keep_checkpoints"})


def adopt_sweep_point(config: Path, seed: int, runs: Path) -> str | None:
    """When the seed's DPO stage has not run for the recipe's settings but the sweep point at the
    recipe's learning rate has (same model, pairs, validation data and DPO settings, the save and
    log intervals aside), its export becomes the stage's output and is recorded as current, so
    that the same training is not run twice. Returns the sweep point's directory, or None."""
    import shutil
    from dataclasses import asdict

    from esc_dist.pipeline import find_stage, is_current, mark_current, resolve, stage_key

    recipe = resolve(load_recipe(config, overrides(seed, runs)))
    _, stage = find_stage(recipe, "dpo-planner")
    key = stage_key(stage, recipe)
    point = runs / f"seed-{seed}" / "sweep" / f"lr{recipe.dpo.learning_rate:g}"
    if is_current(stage, key) or not (point / COMPLETED).is_file():
        return None
    m = read_json(point / "manifest.json")
    ours = {k: v for k, v in asdict(recipe.dpo).items() if k not in NOT_TRAINING}
    theirs = {k: v for k, v in m["config"]["train"].items() if k not in NOT_TRAINING}
    same = (
        ours == theirs
        and m["config"]["model"] == asdict(recipe.model)
        and m["config"]["run"]["seed"] == recipe.run.seed
        and all(
            Path(m["inputs"][k]["path"]) == Path(p)
            for k, p in (
                ("pairs", stage.inputs[0]),
                ("model", stage.inputs[1]),
                ("validation", stage.inputs[2]),
            )
        )
    )
    if not same:
        return None
    if stage.out.exists():
        shutil.rmtree(stage.out)
    shutil.copytree(point, stage.out)
    mark_current(stage, key, None)
    print(f"seed {seed}: dpo-planner adopts the sweep point {point} (same settings)", flush=True)
    return str(point)


def seed_piece_all(config: Path, seed: int, runs: Path, first_seed: bool) -> dict:
    run = RunLayout(runs / f"seed-{seed}")
    out = seed_piece_mining(config, seed, runs)
    recipe = load_recipe(config, overrides(seed, runs))
    out["seconds"] = {k: v for k, v in stage_seconds(recipe).items() if k in STAGES}
    systems, gold, seconds = {}, None, 0.0
    for name, planner in (
        ("sft", run.model("sft", "planner")),
        ("dpo", run.model("dpo", "planner")),
        *([("zero_shot", run.base)] if first_seed else []),
    ):
        path = predict(config, seed, runs, planner, work_dir(run.root, f"planner-{name}-test"))
        systems[name], gold = scores_of(path)
        # the time the inference recorded: the same when a rerun finds it complete
        seconds += read_json(path.parent / "manifest.json")["seconds"]
    out["seconds"]["test_predictions"] = round(seconds)
    ids = set(gold)
    gold_list, base = strategy_baselines(run.data, seed, ids)
    systems.update({b: scores(gold_list, pred) for b, pred in base.items()})
    out["gold_shares"] = {
        s: sum(1 for g in gold_list if g == s) / len(gold_list) for s in STRATEGIES
    }
    out["systems"] = systems
    out["guard"] = read_json(run.model("dpo", "planner") / "manifest.json").get("guard")
    return out


def samples_probe(config: Path, seed: int, runs: Path, turns: int = 300, n: int = 4) -> dict:
    """Mining with ``n`` samples per turn on the first ``turns`` training turns: the pairs the
    first 1, 2 and 4 samples make (a sample's random stream depends on its turn and index only,
    so the first k samples of this run are what ``mine.n_samples: k`` draws)."""
    from collections import Counter

    from esc_dist.ipm.prefdial import read_pairs

    run = RunLayout(runs / f"seed-{seed}")
    out = work_dir(run.root, f"mine-probe-n{n}")
    ov = overrides(seed, runs, (f"mine.n_samples={n}", f"mine.max_turns={turns}"))
    t0 = time.time()  # the mining command returns at once when the probe is complete
    out.parent.mkdir(parents=True, exist_ok=True)
    launch(
        load_recipe(config, ov),
        [
            "mine",
            "--role",
            "planner",
            "--data",
            str(run.data),
            "--model",
            str(run.model("sft", "planner")),
            "--out",
            str(out),
            "--config",
            str(config),
            *ov,
        ],
        out.parent / f"mine-probe-n{n}.log",
    )
    pairs = read_pairs(out / "pairs.jsonl", "planner")
    per_k = {}
    for k in sorted({1, 2, n}):
        sub = [p for p in pairs if int(p["id"].rsplit("#s", 1)[1]) < k]
        chosen = Counter(p["gold_strategy"] for p in sub)
        rejected = Counter(p["sampled_strategy"] for p in sub)
        per_k[str(k)] = {
            "pairs": len(sub),
            "turns_with_pair": len({p["turn_id"] for p in sub}),
            "distinct_pairs": len({(p["turn_id"], p["rejected"]) for p in sub}),
            "push": {st: chosen[st] - rejected[st] for st in STRATEGIES},
        }
    return {
        "seed": seed,
        "turns": turns,
        "n_samples": n,
        "seconds": round(time.time() - t0),
        "per_k": per_k,
    }


def variant_judged(config: Path, seed: int, runs: Path) -> dict:
    """The seed's mined planner pairs through the offline judge, their DPO, the test
    predictions: the pipeline with ``ipm.planner_pairs=judged`` into RUN/extra/judged, reusing
    the seed's run for every stage the setting does not touch (data, SFT, mining)."""
    run = RunLayout(runs / f"seed-{seed}")
    var = RunLayout(work_dir(run.root, "judged"))
    extra = STUDY.variants["judged"]
    t0 = time.time()
    pipeline(config, seed, runs, STAGES, (*extra, f"run.output_dir={var.root}"), reuse=run.root)
    drop_checkpoints(var)
    path = predict(
        config,
        seed,
        runs,
        var.model("dpo", "planner"),
        work_dir(var.root, "planner-dpo-test"),
        extra,
    )
    kept = read_json(var.pairs("planner") / "stats.json")
    conf = kept["confusion_kept"]
    return {
        "seed": seed,
        "variant": "judged",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "seconds": round(time.time() - t0),
        "pairs_kept": kept["kept"],
        "push": {
            s: sum(conf[s].values()) - sum(conf[g][s] for g in STRATEGIES) for s in STRATEGIES
        },
        "dpo": scores_of(path)[0],
        "guard": read_json(var.model("dpo", "planner") / "manifest.json").get("guard"),
    }


# ---------------------------------------------------------------------------------------------
# Report: from the committed result files only


def load_results() -> tuple[dict, dict, dict, dict, dict, dict]:
    """(mining pieces, finished seeds, judged variants, sample probes, DPO pieces) by seed,
    and the sweep points by (seed, learning rate), from the result files."""

    def by_seed(pattern: str) -> dict[int, dict]:
        out = {}
        for f in sorted(RESULTS.glob(pattern)):
            r = read_json(f)
            out[int(r["seed"])] = r
        return out

    sweeps = {}
    for f in sorted(RESULTS.glob("sweep-seed-*-lr*.json")):
        r = read_json(f)
        sweeps[(int(r["seed"]), float(r["settings"]["learning_rate"]))] = r
    return (
        by_seed("seed-*.mining.json"),
        by_seed("seed-[0-9].json"),
        by_seed("variant-judged-seed-*.json"),
        by_seed("samples-probe-seed-*.json"),
        by_seed("seed-*.dpo.json"),
        sweeps,
    )


def fmt(key: str, mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "–"
    scale, digits = (1, 3) if key.startswith("B") else (100, 1)
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def trajectory(seed: int, d: dict) -> list[str]:
    """The validation guard's evaluations of one seed's DPO run."""
    g, st = d["guard"], d["settings"]
    return guard_table(
        f"**DPO, seed {seed}** (lr {st['learning_rate']:g}, beta {st['beta']:g}, "
        f"{st['num_train_epochs']:g} epoch, {d['dpo']['global_step']} steps of "
        f"{st['per_device_train_batch_size'] * d['world_size']} pairs, "
        f"{(d['seconds'] or 0) / 60:.0f} min; final reward accuracy "
        f"{d['dpo']['final_reward_accuracy']:.2f}): greedy predictions on "
        f"{g['turns']} validation turns every {st['validation_every']} steps "
        "(step 0 = the SFT model; shares in %):",
        g,
    )


def sweep_tables(sweeps: dict) -> list[str]:
    """The DPO-strength sweep: the guard's trajectory at each learning rate (validation only)."""
    out = (
        [
            "**DPO-strength sweep on validation** (`--sweep`; the test split is not touched; "
            "*(best)* marks the step the guard's rule picks: the lowest validation B among the "
            "steps within a point of the SFT model's Q):",
            "",
        ]
        if sweeps
        else []
    )
    for (seed, lr), d in sorted(sweeps.items()):
        g = d["guard"]
        steps = (d.get("dpo") or {}).get("global_step") or d.get("stopped_at_step")
        note = f"; {d['note']}" if d.get("note") else ""
        out += guard_table(
            f"**Sweep, seed {seed}, lr {lr:g}** (beta 0.1, 16 pairs per step, "
            f"{steps} steps{note}): greedy predictions on {g['turns']} "
            "validation turns (shares in %):",
            g,
        )
    return out


def guard_table(title: str, g: dict) -> list[str]:
    out = [
        title,
        "",
        "| step | B | Q % | accuracy % | unparseable % | " + " | ".join(STRATEGIES) + " |",
        "|---" * (5 + len(STRATEGIES)) + "|",
    ]
    for h in g["history"]:
        mark = " (best)" if (g.get("best") or {}).get("step") == h["step"] else ""
        out.append(
            f"| {h['step']}{mark} | {h['B']:.3f} | {100 * h['Q']:.1f} | "
            f"{100 * h['accuracy']:.1f} | {100 * h['unparseable']:.1f} | "
            + " | ".join(f"{100 * h['shares'][s]:.0f}" for s in STRATEGIES)
            + " |"
        )
    return out + [""]


def render(
    mining: dict,
    seeds: dict,
    judged: dict,
    probes: dict,
    dpo: dict | None = None,
    sweeps: dict | None = None,
) -> str:
    lines = [
        START,
        "## The planner study: the paper's planner pairs, B on all 1,792 test turns",
        "",
    ]
    if not mining:
        return "\n".join(lines + ["No seed has finished mining yet.", "", END])
    first = next(iter(mining.values()))
    m = first["machine"]
    lines += [
        f"Produced by `python -m experiments.planner_study` from the result files in "
        "`experiments/results/planner_study/`; recipe `configs/planner-smol.yaml` "
        f"(SmolLM2-135M-Instruct planner, {first['train_turns']} training turns, "
        "transcript prompt of the last 6 messages, mismatch pairs); machine: "
        f"{m['cpu']}, {m['cores']} cores, "
        f"{'bf16' if m['precision'] == 'bf16' else 'fp32 (no native bf16)'}.",
        "",
        "**Mined pairs** (one sample per training turn at 0.7 / 0.95; every mismatch is "
        "a pair; *push* = times a strategy is chosen minus times it is rejected, the "
        "direction DPO moves it):",
        "",
        "| seed | turns | pairs | same as gold | unparseable | " + " | ".join(STRATEGIES) + " |",
        "|---" * (5 + len(STRATEGIES)) + "|",
    ]
    for seed, r in sorted(mining.items()):
        x = r["mining"]
        lines.append(
            f"| {seed} | {x['turns']} | {x['pairs_kept']} | {x['same_as_gold']} | "
            f"{x['unparseable']} | " + " | ".join(f"{x['push'][s]:+d}" for s in STRATEGIES) + " |"
        )
    secs = [
        f"seed {k}: "
        + ", ".join(f"{name} {v / 60:.0f} min" for name, v in r["seconds"].items() if v is not None)
        for k, r in sorted(mining.items())
    ]
    lines += ["", "Times: " + "; ".join(secs) + ".", ""]
    for seed, pr in sorted(probes.items()):
        lines += [
            f"**Samples per turn** (seed {seed}, the first {pr['turns']} training turns, "
            f"{pr['n_samples']} samples each, {pr['seconds'] / 60:.0f} min; the first k "
            "samples are what `mine.n_samples: k` draws; repeated samples stay separate "
            "pairs):",
            "",
            "| k | pairs | turns with a pair | distinct pairs | " + " | ".join(STRATEGIES) + " |",
            "|---" * (4 + len(STRATEGIES)) + "|",
        ]
        for k, x in pr["per_k"].items():
            lines.append(
                f"| {k} | {x['pairs']} | {x['turns_with_pair']} | "
                f"{x['distinct_pairs']} | "
                + " | ".join(f"{x['push'][st]:+d}" for st in STRATEGIES)
                + " |"
            )
        lines.append("")
    lines += sweep_tables(sweeps or {})
    for seed, d in sorted((dpo or {}).items()):
        lines += trajectory(seed, d)
    if not seeds:
        lines += ["The test predictions of these seeds have not finished yet.", "", END]
        return "\n".join(lines)
    systems = [*SYSTEMS, *BASELINES]
    titles = {**SYSTEMS, **BASELINES}
    lines += [
        f"**All {next(iter(seeds.values()))['systems']['sft']['turns']} test turns**, "
        f"{len(seeds)} seed(s) ({', '.join(map(str, sorted(seeds)))}), mean ± sample std "
        "over seeds (zero-shot: first seed only); B = converged fit, B (20-sweep) = the "
        "released fit (– where undefined):",
        "",
        "| system | Q % | weighted-F1 % | accuracy % | B | B (20-sweep) | unparseable |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in systems:
        rows = [r["systems"][s] for r in seeds.values() if s in r["systems"]]
        if not rows:
            continue
        cells = [fmt(k, *mean_std([x[k] for x in rows])) for k in KEYS]
        unp = mean_std([x["unparseable"] for x in rows])[0]
        lines.append(f"| {titles[s]} | " + " | ".join(cells) + f" | {unp:.0f} |")
    lines += [
        "",
        "**Predicted share of each strategy** (%, mean over seeds) against gold:",
        "",
        "| strategy | gold | " + " | ".join(SYSTEMS[s] for s in ("sft", "dpo")) + " |",
        "|---|---|---|---|",
    ]
    for st in STRATEGIES:
        gold = mean_std([r["gold_shares"][st] for r in seeds.values()])[0]
        cells = [
            fmt("share", *mean_std([r["systems"][s]["shares"][st] for r in seeds.values()]))
            for s in ("sft", "dpo")
        ]
        lines.append(f"| {st} | {100 * gold:.1f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Per seed**: DPO against SFT, and the step the validation guard exported "
        "(lowest validation B within a point of the SFT model's validation Q):",
        "",
        "| seed | SFT Q % | DPO Q % | SFT B | DPO B | exported step | validation B at "
        "that step (SFT) |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, r in sorted(seeds.items()):
        sft, dpo, g = r["systems"]["sft"], r["systems"]["dpo"], r.get("guard") or {}
        best, ref = g.get("best") or {}, g.get("reference") or {}
        lines.append(
            f"| {seed} | {fmt('Q', sft['Q'])} | {fmt('Q', dpo['Q'])} | "
            f"{fmt('B', sft['B'])} | {fmt('B', dpo['B'])} | {best.get('step', '–')} | "
            f"{fmt('B', best.get('B'))} ({fmt('B', ref.get('B'))}) |"
        )
    for seed, v in sorted(judged.items()):
        d = v["dpo"]
        lines += [
            "",
            f"**Judged pairs** (seed {seed}; the same mined pairs through the offline "
            f"judge: {v['pairs_kept']} kept): DPO planner Q {fmt('Q', d['Q'])}, "
            f"B {fmt('B', d['B'])}; push "
            + ", ".join(f"{s} {v['push'][s]:+d}" for s in STRATEGIES if v["push"][s])
            + ".",
        ]
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--runs", type=Path, default=Path("runs") / "planner-smol")
    ap.add_argument("--seeds", default=",".join(map(str, STUDY.seeds)))
    ap.add_argument("--through", choices=("mine", "all"), default="all")
    ap.add_argument("--variant", choices=tuple(STUDY.variants))
    ap.add_argument("--variant-seed", type=int, default=0)
    ap.add_argument(
        "--samples-probe",
        action="store_true",
        help="mine 4 samples on the first 300 training turns of --variant-seed",
    )
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument(
        "--sweep",
        metavar="LR,...",
        help="DPO-strength sweep on validation: these "
        "learning rates on --variant-seed, --sweep-steps steps each",
    )
    ap.add_argument("--sweep-steps", type=int, default=60)
    ap.add_argument("--sweep-every", type=int, default=10)
    args = ap.parse_args()
    os.chdir(ROOT)  # the pipeline's stage keys hold the run paths as written
    RESULTS.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not args.report_only:
        for seed in seeds:
            if args.through == "all":
                adopt_sweep_point(args.config, seed, args.runs)
            pipeline(
                args.config, seed, args.runs, THROUGH_MINE if args.through == "mine" else STAGES
            )
            drop_checkpoints(RunLayout(args.runs / f"seed-{seed}"))
            atomic_write_json(
                RESULTS / f"seed-{seed}.mining.json",
                seed_piece_mining(args.config, seed, args.runs),
            )
            if args.through == "all":
                atomic_write_json(
                    RESULTS / f"seed-{seed}.dpo.json", seed_piece_dpo(args.config, seed, args.runs)
                )
                atomic_write_json(
                    RESULTS / f"seed-{seed}.json",
                    seed_piece_all(args.config, seed, args.runs, seed == 0),
                )
        if args.samples_probe:
            atomic_write_json(
                RESULTS / f"samples-probe-seed-{args.variant_seed}.json",
                samples_probe(args.config, args.variant_seed, args.runs),
            )
        for lr in (float(x) for x in (args.sweep or "").split(",") if x.strip()):
            atomic_write_json(
                RESULTS / f"sweep-seed-{args.variant_seed}-lr{lr:g}.json",
                sweep_point(
                    args.config,
                    args.variant_seed,
                    args.runs,
                    lr,
                    args.sweep_steps,
                    args.sweep_every,
                ),
            )
        if args.variant == "judged":
            atomic_write_json(
                RESULTS / f"variant-judged-seed-{args.variant_seed}.json",
                variant_judged(args.config, args.variant_seed, args.runs),
            )
    text = render(*load_results())
    write_section(text, START, END)
    print(text)


if __name__ == "__main__":
    main()
