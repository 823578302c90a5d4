"""SFT throughput: esc-dist's SFT path vs TRL's default padded collator, same model and data.

Both runs train the same randomly initialised model (sizes below) on the same prepared
examples, with the same batch size and ``max_length``, for the same number of steps, in one
process. Reported: *non-pad* tokens per second (the tokens that carry information), the
fraction of non-pad tokens in the batches, and — on a GPU — model FLOPs utilisation (6·N·tokens/s
over the card's dense bf16 peak).

- esc-dist: our tokenization (history fitted to max_length), length-grouped global batches
  (``GlobalBatchLengthSampler``), completion-only loss;
- TRL default: ``SFTTrainer`` on the same prompt-completion dataset with its defaults (its own
  tokenization, random order, padding to the longest sequence of the batch).

Usage: python -m benchmarks.sft_throughput --esconv PATH --out results.json [--size tiny|0.5b|1b]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from benchmarks.timing import TrainerMeter
from esc_dist.layout import RunLayout

SIZES = {  # Llama-architecture shapes, random init; vocabulary = the ESConv tokenizer's
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=352),
    "0.5b": dict(
        hidden_size=1024, num_layers=24, num_heads=16, num_kv_heads=4, intermediate_size=4096
    ),
    "1b": dict(
        hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, intermediate_size=8192
    ),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM


def run(kind: str, recipe, data_dir: Path, model_dir: Path, work: Path, steps: int, warmup: int):
    from esc_dist.train.common import stage_paths
    from esc_dist.train.sft import build_sft_trainer

    paths = stage_paths(recipe, "sft", f"bench-{kind}", str(work / kind))
    if kind == "esc-dist":
        trainer, _, _ = build_sft_trainer(
            recipe, "vanilla", str(data_dir), str(model_dir), paths, None, False
        )
    else:
        from trl import SFTConfig, SFTTrainer

        from esc_dist.data.tasks import load_task
        from esc_dist.models.loading import load_tokenizer
        from esc_dist.train.arguments import trainer_arguments
        from esc_dist.train.models import load_policy

        cfg = recipe.sft
        args = SFTConfig(**trainer_arguments(cfg, recipe, paths, "bench", False, None))
        tok = load_tokenizer(str(model_dir))
        train = load_task(data_dir, "vanilla")["train"]
        trainer = SFTTrainer(
            model=load_policy(str(model_dir), recipe, cfg),
            args=args,
            train_dataset=train,
            processing_class=tok,
        )
    meter = TrainerMeter(trainer, warmup, steps)
    trainer.train()
    return {**meter.result(), "parameters": sum(p.numel() for p in trainer.model.parameters())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--esconv", required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--work", default="/tmp/esc-bench")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--dialogues", type=int, default=200)
    args = ap.parse_args()

    from esc_dist import dist
    from esc_dist.config import load_recipe
    from esc_dist.data.tasks import prepare
    from esc_dist.log import quiet_libraries
    from esc_dist.models.tiny import build_tiny_model

    quiet_libraries()
    os.environ.setdefault("WANDB_MODE", "disabled")
    work = Path(args.work)
    split = args.split or str(Path(args.esconv).parent / "splits" / "decoupledesc_split.json")
    total = args.steps + args.warmup
    recipe = load_recipe(
        None,
        [
            f"run.output_dir={work}",
            f"data.esconv={args.esconv}",
            f"data.split={split}",
            f"data.max_dialogues.train={args.dialogues}",
            "sft.deepspeed=null",
            f"sft.max_steps={total}",
            f"sft.save_steps={10 * total}",
            "sft.logging_steps=1000",
            f"sft.per_device_train_batch_size={args.batch}",
            f"sft.max_length={args.max_length}",
            "sft.warmup_ratio=0",
            "wandb.mode=disabled",
            *[f"tiny_model.{k}={v}" for k, v in SIZES[args.size].items()],
        ],
    )
    dist.init(600)
    data_dir, model_dir = RunLayout(work).data, work / f"model-{args.size}"
    if not (data_dir / "COMPLETED").is_file():
        prepare(recipe.data, data_dir)
    if not (model_dir / "config.json").is_file():
        build_tiny_model(recipe.tiny_model, args.esconv, model_dir)

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    results = {
        "size": args.size,
        "device": device,
        "batch": args.batch,
        "max_length": args.max_length,
        "date": time.strftime("%Y-%m-%d"),
        "cpu_cores": os.cpu_count(),
    }
    for kind in ("esc-dist", "trl-default"):
        results[kind] = run(kind, recipe, data_dir, model_dir, work, args.steps, args.warmup)
    results["speedup_non_pad_tokens_per_s"] = (
        results["esc-dist"]["non_pad_tokens_per_s"] / results["trl-default"]["non_pad_tokens_per_s"]
    )
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
    if peak:
        n = results["esc-dist"]["parameters"]
        for kind in ("esc-dist", "trl-default"):
            results[kind]["mfu"] = 6 * n * results[kind]["non_pad_tokens_per_s"] / peak
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
