"""SmolLM2-135M-Instruct on this CPU: bf16 vs fp32, esc-dist's SFT vs TRL's defaults, and the
distance to the machine's measured matmul peak.

One process, all cores, no DeepSpeed, the converted SmolLM2 base (``esc-dist base-model``):

- **peak**: the FLOP/s of a large square matmul in fp32 and in bf16, measured in this run;
- **SFT**: non-pad tokens/s of esc-dist's SFT (fitted history, length-grouped batches,
  completion-only LM head) and of TRL's ``SFTTrainer`` with its defaults, in fp32 and bf16;
  achieved training FLOP/s = 6 x parameters x non-pad tokens/s, as a fraction of the peak of
  the same precision;
- **DPO**: esc-dist's DPO step (precomputed reference) tokens/s in fp32 and bf16;
- **mining**: the generation engine's new tokens/s (sampling, one rank) in fp32 and bf16.

On a CPU without native bf16 (no AVX512-BF16 / AMX) PyTorch's bf16 matmuls are far slower than
fp32; ``precision: auto`` then stays fp32, and the bf16 runs here are cut to one measured step
of one example of at most 128 tokens (DPO: 4 pairs) and 2 mined turns of 8 tokens (they only
show the ratio); TRL's bf16 run is left out.

Usage: python -m benchmarks.smol_cpu [--esconv DIR] [--base DIR] [--results RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.mining import ROOT, write_section
from esc_dist.layout import RunLayout

SECTION = "## SmolLM2-135M on CPU: bf16 vs fp32, esc-dist vs TRL, distance to the matmul peak"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak(dtype, n: int, seconds: float = 3.0) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or done < 2:
        a @ b
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - t0)


def recipe_for(args, work: Path, precision: str, steps: int, warmup: int, batch: int):
    from esc_dist.config import load_recipe

    total = steps + warmup
    split = Path(args.esconv) / "splits" / "decoupledesc_split.json"
    common = [
        f"max_steps={total}",
        f"save_steps={10 * total}",
        "logging_steps=1000",
        f"per_device_train_batch_size={batch}",
        f"max_length={args.max_length}",
        "warmup_ratio=0",
        "deepspeed=null",
        f"precision={precision}",
    ]
    return load_recipe(
        None,
        [
            f"run.output_dir={work}",
            f"data.esconv={Path(args.esconv) / 'esconv.json'}",
            f"data.split={split}",
            "data.max_dialogues.train=40",
            "data.max_history_messages=4",
            "wandb.mode=disabled",
            *[f"{s}.{c}" for s in ("sft", "dpo") for c in common],
            f"mine.precision={precision}",
            "mine.max_turns=32",
            "mine.batch_size=8",
            "mine.chunk_size=8",
            "mine.max_new_tokens=32",
            "mine.temperature=0.7",
        ],
    )


def mining(recipe, data: Path, model: Path, out: Path) -> dict:
    from esc_dist.ipm.mine import mine

    mine(recipe, "generator", model_dir=str(model), data_dir=str(data), out=str(out))
    g = json.loads((out / "manifest.json").read_text())["generation"]
    return {
        "turns": g["items"],
        "seconds": g["generation_seconds"],
        "tokens_per_s": g["tokens_per_s"],
        "dtype": g["dtype"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--esconv", default=str(ROOT.parent / "shared" / "data" / "esconv"))
    ap.add_argument("--base", help="converted SmolLM2 directory (default: convert into --work)")
    ap.add_argument("--work", default="/tmp/esc-smol-bench")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "smol-cpu.json"))
    ap.add_argument(
        "--only",
        choices=["fp32", "bf16"],
        help="measure one precision, adding to --json (accelerate fixes the "
        "precision once per process: the default runs one process each)",
    )
    args = ap.parse_args()
    if args.only is None:
        import subprocess
        import sys

        for precision in ("fp32", "bf16"):
            subprocess.run(
                [sys.executable, "-m", "benchmarks.smol_cpu", *sys.argv[1:], "--only", precision],
                check=True,
                cwd=ROOT,
            )
        write_section(Path(args.results), render(json.loads(Path(args.json).read_text())), SECTION)
        return 0

    import torch

    from benchmarks.dpo_throughput import make_pairs
    from benchmarks.dpo_throughput import run as dpo_run
    from benchmarks.sft_throughput import run as sft_run
    from esc_dist import dist
    from esc_dist.data.tasks import prepare
    from esc_dist.log import quiet_libraries
    from esc_dist.models.gguf import SMOLLM2, convert_gguf

    quiet_libraries()
    os.environ.setdefault("WANDB_MODE", "disabled")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        os.environ.pop(k, None)
    work = Path(args.work)
    native = dist.cpu_has_bf16()
    base = Path(args.base) if args.base else work / "base"
    if not (base / "config.json").is_file():
        convert_gguf(SMOLLM2, base)
    dist.init(3600)
    data, pairs = RunLayout(work).data, work / "pairs"
    recipe = recipe_for(args, work, "fp32", args.steps, 2, args.batch)
    if not (data / "COMPLETED").is_file():
        prepare(recipe.data, data)
    if not (pairs / "COMPLETED").is_file():
        make_pairs(data, pairs, 128)
    params = 134_515_008

    out = Path(args.json)
    res = json.loads(out.read_text()) if args.only == "bf16" and out.is_file() else {}
    res.update(
        {
            "date": datetime.date.today().isoformat(),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "native_bf16": native,
            "auto_precision": dist.resolve_precision("auto"),
            "batch": args.batch,
            "max_length": args.max_length,
            "parameters": params,
        }
    )
    if args.only == "fp32":
        res["peak_flops"] = {
            "fp32": matmul_peak(torch.float32, 2048),
            "bf16": matmul_peak(torch.bfloat16, 2048 if native else 512),
        }
    print(json.dumps(res, indent=1), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():  # after every measurement: a stopped run keeps what it measured
        out.write_text(json.dumps(res, indent=2) + "\n")

    save()
    precision = args.only
    slow = precision == "bf16" and not native  # a few tokens: only the ratio
    steps, batch = (1, 1) if slow else (args.steps, args.batch)
    r = recipe_for(args, work, precision, steps, 1, batch)
    if slow:
        r = replace(
            r,
            sft=replace(r.sft, max_length=128),
            dpo=replace(r.dpo, max_length=128),
            mine=replace(r.mine, max_turns=2, max_new_tokens=8),
        )
    for kind in ("esc-dist", "trl-default"):
        if kind == "trl-default" and slow:
            continue
        t = sft_run(kind, r, data, base, work / f"sft-{precision}", steps, 1)
        t["training_flops"] = 6 * params * t["non_pad_tokens_per_s"]
        t["fraction_of_peak"] = t["training_flops"] / res["peak_flops"][precision]
        res[f"sft/{kind}/{precision}"] = t
        print(kind, precision, json.dumps(t), flush=True)
        save()
    if slow:  # the reference pass alone would score 128 pairs
        pairs = work / "pairs-4"
        if not (pairs / "COMPLETED").is_file():
            make_pairs(data, pairs, 4)
    d = dpo_run(
        "esc-dist",
        replace(r, dpo=replace(r.dpo, per_device_train_batch_size=max(1, batch // 2))),
        pairs,
        base,
        work / f"dpo-{precision}",
        steps,
        1,
    )
    res[f"dpo/esc-dist/{precision}"] = d
    print("dpo", precision, json.dumps(d), flush=True)
    save()
    res[f"mine/{precision}"] = mining(r, data, base, work / f"mine-{precision}")
    print("mine", precision, json.dumps(res[f"mine/{precision}"]), flush=True)
    save()
    return 0


def render(r: dict) -> str:
    def rate(key, field="non_pad_tokens_per_s"):
        return r[key][field] if key in r else None

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "n/a"

    g = r["peak_flops"]
    lines = [
        SECTION,
        "",
        f"Machine: {r['cpu']}, {r['cores']} cores ({r['threads']} threads), native bf16: "
        f"{'yes' if r['native_bf16'] else 'no'} (precision auto = {r['auto_precision']}); "
        f"{r['date']}; `python -m benchmarks.smol_cpu`, one process, no DeepSpeed, "
        f"batch {r['batch']} x up to {r['max_length']} tokens; raw figures in "
        "`benchmarks/results/smol-cpu.json`.",
        "",
        f"Measured matmul peak: fp32 {g['fp32'] / 1e9:.1f} GFLOP/s, bf16 "
        f"{g['bf16'] / 1e9:.1f} GFLOP/s.",
        "",
        "| what | fp32 | bf16 | bf16 / fp32 |",
        "|---|---:|---:|---:|",
    ]
    for label, key, field in (
        ("SFT esc-dist, non-pad tokens/s", "sft/esc-dist", "non_pad_tokens_per_s"),
        ("SFT TRL defaults, non-pad tokens/s", "sft/trl-default", "non_pad_tokens_per_s"),
        ("DPO esc-dist, non-pad tokens/s", "dpo/esc-dist", "non_pad_tokens_per_s"),
        ("mining, new tokens/s", "mine", "tokens_per_s"),
    ):
        a, b = rate(f"{key}/fp32", field), rate(f"{key}/bf16", field)
        fa, fb = (f"{a:.1f}" if a else "n/a"), (f"{b:.1f}" if b else "n/a")
        lines.append(f"| {label} | {fa} | {fb} | {ratio(b, a)} |")
    lines.append("")
    if not r["native_bf16"]:
        lines.append(
            "- No native bf16 on this CPU: PyTorch's bf16 matmuls take slow paths whose "
            "speed depends on the shapes (the square matmul above, the model's own "
            "layers faster), so no bf16 peak is meaningful and bf16 ran one step of one "
            "example (DPO: of 4 pairs), 2 mined turns: the ratios are what "
            "`precision: auto` avoids by staying fp32 here."
        )
    for precision in ("fp32", "bf16") if r["native_bf16"] else ("fp32",):
        e, t = r.get(f"sft/esc-dist/{precision}"), r.get(f"sft/trl-default/{precision}")
        if e:
            lines.append(
                f"- {precision}: esc-dist SFT reaches {e['training_flops'] / 1e9:.1f} "
                f"GFLOP/s of training (6 N tokens/s), {100 * e['fraction_of_peak']:.0f}% "
                f"of the measured {precision} matmul peak"
                + (
                    f"; TRL's defaults {100 * t['fraction_of_peak']:.0f}%, esc-dist / "
                    f"TRL = {ratio(e['non_pad_tokens_per_s'], t['non_pad_tokens_per_s'])}"
                    f" in non-pad tokens/s (non-pad fraction {e['non_pad_fraction']:.2f}"
                    f" vs {t['non_pad_fraction']:.2f})"
                    if t
                    else ""
                )
                + "."
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
