"""Packed DPO batches on CPU: step time of SmolLM2-135M on planner and generator pairs.

For each role, the same pairs, batch, ``max_length`` and precision (fp32), one process, no
DeepSpeed, measured steps after one of warm-up:

- ``esc-dist`` -- the default: one packed ``[prompt | chosen | rejected]`` sequence per pair
  (``dpo.shared_prompt``), precomputed reference;
- ``esc-dist-two-sequence`` -- the path before it (``dpo.shared_prompt=false``): two sequences
  per pair, precomputed reference;
- ``esc-dist-padding-free``, ``esc-dist-two-sequence-padding-free`` -- the same with
  ``dpo.padding_free=true``: the batch in one row, no padding, a 4D mask over the row (on
  sdpa; what decides ``padding_free: null`` = off there);
- ``trl-default`` -- TRL's ``DPOTrainer`` with its defaults (live reference, its fused head).

Pairs: the study's transcript prompts (``configs/planner-smol.yaml``'s data settings); planner,
chosen = the gold strategy and rejected = another strategy; generator, chosen = the gold reply
and rejected = another turn's reply. Then bf16 closeness: on a few pairs, the largest difference
of a completion token's and a pair's log-prob between the shared and the two-sequence bf16
computation, beside bf16's own error against fp32 (the tolerance docs/training.md states).

Usage: python -m benchmarks.dpo_shared_prompt [--esconv DIR] [--base SMOL_DIR] [--steps 4]
       [--batch 8] [--kinds esc-dist,...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks.report import ROOT, write_section
from esc_dist.layout import RunLayout

RESULT = ROOT / "benchmarks" / "results" / "dpo_shared_prompt-cpu-smol.json"
START, END = "<!-- dpo-shared-prompt:start -->", "<!-- dpo-shared-prompt:end -->"
KINDS = (
    "esc-dist",
    "esc-dist-two-sequence",
    "esc-dist-padding-free",
    "esc-dist-two-sequence-padding-free",
    "trl-default",
)


def real_pairs(data_dir, tokenizer, role: str, n: int = 4) -> list[dict]:
    """``n`` real ESConv pairs of ``role``, fitted as DPO fits them: the planner's chosen is the
    gold strategy and its rejected another strategy; the generator's chosen is the gold reply
    and its rejected the reply of another turn (replies of different lengths)."""
    from datasets import load_from_disk

    from esc_dist.train.dpo import dpo_row
    from esc_dist.train.tokens import PromptFitter

    rows = load_from_disk(str(data_dir / role))["train"].select(range(20, 20 + n + 1))
    fit = PromptFitter(tokenizer, 384)
    pairs = []
    for r, other in zip(rows, rows.select(range(1, n + 1))):
        rejected = (
            other["completion"]
            if role == "generator" or other["strategy"] != r["strategy"]
            else [{"role": "assistant", "content": "Others"}]
        )
        pairs.append(
            dpo_row(
                {
                    "id": r["id"],
                    "prompt": r["prompt"],
                    "chosen": r["completion"],
                    "rejected": rejected,
                },
                fit,
            )
        )
    return pairs


def bf16_closeness(base: Path, data: Path, role: str, n: int = 4) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    from esc_dist.models.loading import load_tokenizer
    from esc_dist.train.heads import add_completion_lm_head
    from esc_dist.train.packing import PairCollator

    tok = load_tokenizer(str(base), False)
    batch = PairCollator(DataCollatorForPreference(pad_token_id=tok.pad_token_id))(
        real_pairs(data, tok, role, n)
    )
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    plain = {k: batch[k] for k in ("input_ids", "attention_mask")}
    shared = {k: v for k, v in batch.items() if k.startswith("packed_")}
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype).eval()
        add_fused_lm_head(model)
        add_completion_lm_head(model)
        with torch.no_grad():
            out[dtype] = [
                model(**plain, **extra, labels=labels, fused_lm_head=True).log_probs
                for extra in ({}, shared)
            ]
    (two32, one32), (two16, one16) = out[torch.float32], out[torch.bfloat16]

    def gap(a, b):
        return {
            "token": (a - b).abs().max().item(),
            "pair": (a.sum(1) - b.sum(1)).abs().max().item(),
        }

    return {
        "pairs": n,
        "fp32_shared_vs_two": gap(one32, two32),
        "bf16_shared_vs_two": gap(one16, two16),
        "bf16_two_vs_fp32": gap(two16, two32),
        "bf16_shared_vs_fp32": gap(one16, two32),
    }


def render(r: dict) -> str:
    rows = [
        "| role | run | s/step | pair tokens/s | non-pad share of computed | vs two-sequence "
        "| vs TRL default |",
        "|---|---|---|---|---|---|---|",
    ]
    for role in ("planner", "generator"):
        two, trl = r[f"{role}/esc-dist-two-sequence"], r[f"{role}/trl-default"]
        for kind in (k for k in KINDS if f"{role}/{k}" in r):
            m = r[f"{role}/{kind}"]
            share = m.get("non_pad_fraction")
            rows.append(
                f"| {role} | {kind} | {1 / m['steps_per_s']:.1f} | "
                f"{m['non_pad_tokens_per_s']:,.0f} | "
                f"{'–' if share is None else f'{100 * share:.0f}%'} | "
                f"{m['steps_per_s'] / two['steps_per_s']:.2f}x | "
                f"{m['steps_per_s'] / trl['steps_per_s']:.2f}x |"
            )
    close = [
        "| role | fp32 shared vs two: token / pair | bf16 shared vs two: token / pair | "
        "bf16 two-sequence vs fp32: token / pair |",
        "|---|---|---|---|",
    ]
    for role in ("planner", "generator"):
        c = r[f"{role}/bf16"]
        close.append(
            "| "
            + " | ".join(
                [role]
                + [
                    f"{c[k]['token']:.2g} / {c[k]['pair']:.2g}"
                    for k in ("fp32_shared_vs_two", "bf16_shared_vs_two", "bf16_two_vs_fp32")
                ]
            )
            + " |"
        )
    return "\n".join(
        [
            START,
            "## Packed DPO batches on CPU: SmolLM2-135M, planner and generator pairs",
            "",
            f"`python -m benchmarks.dpo_shared_prompt`, {r['date']}, {r['cpu']} ({r['cores']} "
            f"cores, {'AVX-512 bf16' if r['native_bf16'] else 'no native bf16'}), one process, "
            f"fp32, batch {r['batch']} pairs, `max_length` {r['max_length']}, "
            f"{r['steps']} measured steps after 1 of warm-up, the planner study's transcript "
            f"prompts (JSON: `{RESULT.relative_to(ROOT)}`). Pair tokens: the tokens of both "
            "sequences of a pair, the same work unit for every run.",
            "",
            *rows,
            "",
            "Closeness of the log-probs (largest absolute difference over the completion tokens, "
            f"and over the pairs' summed log-probs; {r['planner/bf16']['pairs']} pairs per role):",
            "",
            *close,
            END,
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--esconv", default=str(ROOT.parent / "shared" / "data" / "esconv"))
    ap.add_argument("--base", help="converted SmolLM2 directory (default: convert into --work)")
    ap.add_argument("--work", default="/tmp/esc-shared-prompt-bench")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=320)
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, of the kinds above")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    if args.render_only:
        write_section(render(json.loads(RESULT.read_text())), START, END)
        return 0

    import torch

    from benchmarks.dpo_throughput import make_pairs, run
    from benchmarks.smol_cpu import cpu_name
    from esc_dist import dist
    from esc_dist.config import load_recipe
    from esc_dist.data.tasks import prepare
    from esc_dist.log import quiet_libraries
    from esc_dist.models.gguf import SMOLLM2, convert_gguf

    quiet_libraries()
    os.environ.setdefault("WANDB_MODE", "disabled")
    work = Path(args.work)
    base = Path(args.base) if args.base else work / "base"
    if not (base / "config.json").is_file():
        convert_gguf(SMOLLM2, base)
    total = args.steps + 1
    esconv = Path(args.esconv)
    recipe = load_recipe(
        ROOT / "configs" / "planner-smol.yaml",
        [
            f"run.output_dir={work}",
            f"data.esconv={esconv / 'esconv.json'}",
            f"data.split={esconv / 'splits' / 'decoupledesc_split.json'}",
            "data.max_dialogues.train=20",
            "dpo.deepspeed=null",
            "dpo.precision=fp32",
            f"dpo.max_steps={total}",
            f"dpo.save_steps={10 * total}",
            "dpo.logging_steps=1000",
            f"dpo.per_device_train_batch_size={args.batch}",
            f"dpo.max_length={args.max_length}",
            "dpo.warmup_ratio=0",
            "dpo.validation_every=0",
            "dpo.export_best=false",
            "wandb.mode=disabled",
        ],
    )
    dist.init(3600)
    data = RunLayout(work).data
    if not (data / "COMPLETED").is_file():
        prepare(recipe.data, data)
    res = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "native_bf16": dist.cpu_has_bf16(),
        "batch": args.batch,
        "max_length": args.max_length,
        "steps": args.steps,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    for role in ("planner", "generator"):
        pairs = work / f"pairs-{role}"
        if not (pairs / "COMPLETED").is_file():
            make_pairs(data, pairs, args.batch * total, role)
        for kind in (k for k in KINDS if k in args.kinds.split(",")):
            res[f"{role}/{kind}"] = run(kind, recipe, pairs, base, work / role, args.steps, 1, role)
            print(role, kind, json.dumps(res[f"{role}/{kind}"]), flush=True)
            RESULT.write_text(json.dumps(res, indent=2) + "\n")
        res[f"{role}/bf16"] = bf16_closeness(base, data, role)
        RESULT.write_text(json.dumps(res, indent=2) + "\n")
    write_section(render(res), START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
