"""Per-rank bytes of model states (parameters + gradients + optimizer state) under ZeRO stages.

Run under a launcher with several ranks, once per DeepSpeed config (``none`` = plain DDP):

    torchrun --nproc_per_node 2 -m benchmarks.zero_memory --esconv PATH --zero none|2|3 --out F

Two SFT steps of the vanilla model are run through the project's own trainer; just before the
second optimizer step (gradients computed, optimizer state allocated by the first step) every
live tensor of the process is counted once per storage, so the figure is a measurement, not a
formula. Activations are freed by then; what remains is model states plus small buffers.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

from esc_dist.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]


def live_tensor_bytes() -> int:
    import torch

    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if not torch.is_tensor(obj):
                continue
            storage = obj.untyped_storage()
        except Exception:  # noqa: BLE001 - exotic objects in gc
            continue
        key = storage.data_ptr()
        if key and key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--esconv", required=True)
    ap.add_argument("--zero", choices=["none", "2", "3"], required=True)
    ap.add_argument("--work", default="/tmp/esc-zero-mem")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from transformers import TrainerCallback

    from esc_dist import dist
    from esc_dist.config import load_recipe
    from esc_dist.data.tasks import prepare
    from esc_dist.log import quiet_libraries
    from esc_dist.models.tiny import build_tiny_model
    from esc_dist.train.arguments import deepspeed_config
    from esc_dist.train.common import stage_paths
    from esc_dist.train.sft import build_sft_trainer

    quiet_libraries()
    work = Path(args.work)
    ds = "null" if args.zero == "none" else f"{ROOT}/esc_dist/ds_configs/zero{args.zero}.json"
    recipe = load_recipe(
        None,
        [
            f"run.output_dir={work}/{args.zero}",
            f"data.esconv={args.esconv}",
            f"data.split={Path(args.esconv).parent / 'splits' / 'decoupledesc_split.json'}",
            "data.max_dialogues.train=10",
            "data.max_history_messages=6",
            f"sft.deepspeed={ds}",
            "sft.max_steps=2",
            "sft.save_steps=100",
            "sft.per_device_train_batch_size=4",
            "wandb.mode=disabled",
        ],
    )
    dist.init(300, deepspeed=args.zero != "none")
    data = RunLayout(work).data
    if dist.is_main():
        if not (data / "COMPLETED").is_file():
            prepare(recipe.data, data)
        if not (work / "tiny" / "config.json").is_file():
            build_tiny_model(recipe.tiny_model, args.esconv, work / "tiny")
    dist.barrier()
    paths = stage_paths(recipe, "sft", "vanilla")
    trainer, _, _ = build_sft_trainer(
        recipe,
        "vanilla",
        str(data),
        str(work / "tiny"),
        paths,
        deepspeed_config(recipe.sft),
        False,
    )
    result = {}

    class Census(TrainerCallback):
        def on_pre_optimizer_step(self, a, state, control, **kw):
            if state.global_step == 1:
                gc.collect()
                result["bytes"] = live_tensor_bytes()

    trainer.add_callback(Census())
    trainer.train()
    n = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in trainer.model.parameters())
    per_rank = dist.all_gather_object(result["bytes"])
    if dist.is_main():
        out = {
            "zero": args.zero,
            "world_size": dist.world_size(),
            "parameters": n,
            "bytes_per_rank": per_rank,
            "bytes_per_parameter": [b / n for b in per_rank],
        }
        Path(args.out).write_text(json.dumps(out, indent=2))
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
