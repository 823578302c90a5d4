"""DPO step throughput: precomputed vs live reference, and esc-dist vs TRL's defaults.

Same model (the tiny default, or a bigger random-init Llama), same preference pairs, same batch
size and ``max_length``, one process, no DeepSpeed:

- esc-dist, precomputed reference (the default): reference log-probs in one pass before training;
- esc-dist, live reference: a second model scored at every step;
- TRL defaults: ``DPOTrainer`` on the same conversational pairs with its own tokenization and
  truncation, random order, live reference.

Pairs: generator-task prompts from ESConv; chosen = the gold reply, rejected = the gold reply of
another turn (realistic lengths). Reported per run: steps/s and non-pad tokens/s over the measured
steps, and the seconds spent building the trainer (for the precomputed run this includes the
reference pass).

Usage: python -m benchmarks.dpo_throughput --esconv PATH --out results.json [--size tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.sft_throughput import SIZES
from benchmarks.timing import TrainerMeter
from esc_dist.layout import RunLayout


def make_pairs(data_dir: Path, out: Path, n: int, role: str = "generator") -> None:
    """``n`` pairs of the first training turns: generator, chosen = the gold reply and rejected
    = the gold reply of another turn (realistic lengths); planner, chosen = the gold strategy
    and rejected = the next strategy in the list (a mismatch pair's shape)."""
    from datasets import load_from_disk

    from esc_dist.io import mark_completed
    from esc_dist.ipm.prefdial import save_dataset
    from esc_dist.strategies import STRATEGIES

    rows = load_from_disk(str(data_dir / role))["train"].select(range(n))
    replies = rows["reply"]

    def other(r, i):
        if role == "generator":
            return replies[(i + 7) % n], r["strategy"]
        s = STRATEGIES[(STRATEGIES.index(r["strategy"]) + 1) % len(STRATEGIES)]
        return s, s

    pairs = [
        {
            "id": r["id"] + "#s0",
            "turn_id": r["id"],
            "role": role,
            "prompt": r["prompt"],
            "chosen": r["reply" if role == "generator" else "strategy"],
            "rejected": other(r, i)[0],
            "gold_strategy": r["strategy"],
            "sampled_strategy": other(r, i)[1],
        }
        for i, r in enumerate(rows)
    ]
    save_dataset(pairs, out / "dataset")
    mark_completed(out)


def run(
    kind: str,
    recipe,
    pairs_dir: Path,
    model_dir: Path,
    work: Path,
    steps: int,
    warmup: int,
    role: str = "generator",
) -> dict:
    from esc_dist.train.common import stage_paths
    from esc_dist.train.dpo import build_dpo_trainer

    t0 = time.perf_counter()
    if kind == "trl-default":
        from trl import DPOConfig, DPOTrainer

        from esc_dist.models.loading import load_tokenizer
        from esc_dist.train.arguments import trainer_arguments
        from esc_dist.train.dpo import load_pairs
        from esc_dist.train.models import load_policy

        paths = stage_paths(recipe, "dpo", "bench-trl", str(work / kind))
        args = DPOConfig(**trainer_arguments(recipe.dpo, recipe, paths, "bench", False, None))
        trainer = DPOTrainer(
            model=load_policy(str(model_dir), recipe, recipe.dpo),
            args=args,
            train_dataset=load_pairs(pairs_dir),
            processing_class=load_tokenizer(str(model_dir)),
        )
    else:  # esc-dist[-live|-two-sequence][-padding-free] (shared prompt off, one row on)
        reference = "live" if kind.startswith("esc-dist-live") else "precomputed"
        recipe = replace(
            recipe,
            dpo=replace(
                recipe.dpo,
                reference=reference,
                shared_prompt="two-sequence" not in kind,
                padding_free=kind.endswith("padding-free"),
            ),
        )
        paths = stage_paths(recipe, "dpo", f"bench-{kind}", str(work / kind))
        trainer, _, _ = build_dpo_trainer(
            recipe, role, str(pairs_dir), str(model_dir), paths, None, False
        )
    build_s = time.perf_counter() - t0
    meter = TrainerMeter(trainer, warmup, steps)
    trainer.train()
    return {**meter.result(), "build_seconds": build_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--esconv", required=True)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--work", default="/tmp/esc-dpo-bench")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()

    from esc_dist import dist
    from esc_dist.config import load_recipe
    from esc_dist.data.tasks import prepare
    from esc_dist.log import quiet_libraries
    from esc_dist.models.tiny import build_tiny_model

    quiet_libraries()
    os.environ.setdefault("WANDB_MODE", "disabled")
    work = Path(args.work)
    total = args.steps + args.warmup
    recipe = load_recipe(
        None,
        [
            f"run.output_dir={work}",
            f"data.esconv={args.esconv}",
            f"data.split={Path(args.esconv).parent / 'splits' / 'decoupledesc_split.json'}",
            "data.max_dialogues.train=100",
            "data.max_history_messages=8",
            "dpo.deepspeed=null",
            f"dpo.max_steps={total}",
            f"dpo.save_steps={10 * total}",
            "dpo.logging_steps=1000",
            f"dpo.per_device_train_batch_size={args.batch}",
            f"dpo.max_length={args.max_length}",
            "dpo.warmup_ratio=0",
            "wandb.mode=disabled",
            *[f"tiny_model.{k}={v}" for k, v in SIZES[args.size].items()],
        ],
    )
    dist.init(600)
    data_dir, model_dir, pairs_dir = (
        RunLayout(work).data,
        work / f"model-{args.size}",
        work / "pairs",
    )
    if not (data_dir / "COMPLETED").is_file():
        prepare(recipe.data, data_dir)
    if not (model_dir / "config.json").is_file():
        build_tiny_model(recipe.tiny_model, args.esconv, model_dir)
    if not (pairs_dir / "COMPLETED").is_file():
        make_pairs(data_dir, pairs_dir, args.pairs)

    import torch

    results = {
        "size": args.size,
        "batch": args.batch,
        "max_length": args.max_length,
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "cpu_cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    for kind in ("esc-dist-precomputed", "esc-dist-live", "trl-default"):
        results[kind] = run(kind, recipe, pairs_dir, model_dir, work, args.steps, args.warmup)
    pre, live, trl = (
        results[k]["steps_per_s"] for k in ("esc-dist-precomputed", "esc-dist-live", "trl-default")
    )
    results["ratio_precomputed_vs_live_steps"] = pre / live
    results["ratio_precomputed_vs_trl_default_steps"] = pre / trl
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
