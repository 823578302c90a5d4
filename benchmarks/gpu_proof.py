"""The GPU proof: what only a GPU shows, in one short run (about 5 minutes on one H100).

Models are built from a config with random weights (nothing is downloaded), with ESConv's tiny
tokenizer; a Llama model of a given shape stands in for Qwen2.5 (no attention biases). Parts:

- ``sft``: SFT through the project's trainer on the Qwen2.5-7B shape cut to ``--layers`` layers
  (per-layer MFU is what matters): no DeepSpeed, ZeRO-2 and ZeRO-3; with and without Liger's
  kernels where the machine can run them (CUDA and the package; else recorded as skipped with
  the reason), and padded vs padding-free (``sft.padding_free``: TRL's with flash attention,
  ours with a 4D mask on sdpa);
- ``dpo``: DPO pairs/s on generator pairs of the same model, prompts shared vs two sequences,
  and padding-free (``dpo.padding_free``: two sequences per pair on flash attention, shared
  prompts and a 4D mask on sdpa);
- ``mine``: new tokens/s of the generation engine mining a 0.5B-shaped model, with each of its
  decoding caches (``mine.decode``: dynamic, static, and compiled as CUDA graphs on a GPU);
- ``recipe``: the first SFT steps of ``configs/qwen2.5-7b.yaml`` through the real ``esc-dist
  sft`` stage (its ZeRO-3, precision, attention, Liger and packing settings) on the 7B shape
  cut to ``--layers`` layers.

Each measurement runs in its own process (DeepSpeed and accelerate keep process-wide state)
and writes one JSON file; the table printed at the end has tokens/s, MFU (6 x parameters x
tokens/s over the card's dense bf16 peak; none on CPU) and peak memory. ``--shape tiny`` runs
everything at toy sizes on CPU in a minute or two: the test suite's dry run, so the script
cannot rot.

Usage: python -m benchmarks.gpu_proof --out DIR [--shape gpu|tiny] [--esconv DIR] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from esc_dist.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "gpu": {
        "sft": dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
        ),  # Qwen2.5-7B
        "mine": dict(
            hidden_size=896,
            intermediate_size=4864,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            num_hidden_layers=24,
        ),
        "steps": 6,
        "warmup": 2,
        "batch": 4,
        "max_length": 1024,
        "turns": 512,
    },
    "tiny": {
        "sft": dict(
            hidden_size=64,
            intermediate_size=176,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=4096,
        ),
        "mine": dict(
            hidden_size=64,
            intermediate_size=176,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=4096,
            num_hidden_layers=2,
        ),
        "steps": 2,
        "warmup": 1,
        "batch": 2,
        "max_length": 256,
        "turns": 8,
    },
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def peak_memory_gb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB -> GB


def build_model(work: Path, name: str, shape: dict, layers: int | None) -> Path:
    """A random-weight Llama of ``shape`` (``layers`` overrides its depth) with the tiny
    tokenizer, saved once under ``work``."""
    out = work / f"model-{name}"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(work / "tiny"))
    cfg = LlamaConfig(
        **{**shape, **({"num_hidden_layers": layers} if layers else {})},
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def measure(part: str, spec: dict, args) -> dict:
    """One measurement, in this (fresh) process."""
    from dataclasses import replace

    from benchmarks.timing import TrainerMeter
    from esc_dist import dist
    from esc_dist.config import load_recipe
    from esc_dist.train.common import stage_paths

    work, shape = Path(args.work), SHAPES[args.shape]
    ds = spec.get("zero")
    deepspeed = f"ds_configs/zero{ds}.json" if ds else "null"
    common = [
        f"max_steps={shape['steps'] + shape['warmup']}",
        "save_steps=100000",
        "logging_steps=1000",
        f"per_device_train_batch_size={shape['batch']}",
        f"max_length={shape['max_length']}",
        "warmup_ratio=0",
        f"deepspeed={deepspeed}",
        f"liger={str(spec.get('liger', False)).lower()}",
        f"padding_free={str(spec.get('padding_free', False)).lower()}",
        "keep_checkpoints=true",
    ]
    recipe = load_recipe(
        None,
        [
            f"run.output_dir={work}",
            "wandb.mode=disabled",
            *[f"{s}.{c}" for s in ("sft", "dpo") for c in common],
            *(["model.attn_implementation=auto"] if spec.get("flash") else []),
        ],
    )
    dist.init(1800, deepspeed=bool(ds))
    model = work / "model-sft"
    out = work / "parts" / spec["name"]
    if part == "sft":
        from esc_dist.train.sft import build_sft_trainer

        trainer, _, _ = build_sft_trainer(
            recipe,
            "vanilla",
            str(RunLayout(work).data),
            str(model),
            stage_paths(recipe, "sft", "x", str(out)),
            _ds(recipe.sft),
            False,
        )
    else:
        from esc_dist.train.dpo import build_dpo_trainer

        recipe = replace(recipe, dpo=replace(recipe.dpo, shared_prompt=spec["shared"]))
        trainer, _, _ = build_dpo_trainer(
            recipe,
            "generator",
            str(work / "pairs"),
            str(model),
            stage_paths(recipe, "dpo", "x", str(out)),
            _ds(recipe.dpo),
            False,
        )
    meter = TrainerMeter(trainer, shape["warmup"], shape["steps"])
    trainer.train()
    r = meter.result()
    n = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in trainer.model.parameters())
    peak = peak_flops()
    flops = 6 * n * r["non_pad_tokens_per_s"] * (2 if part == "dpo" else 1)  # + the reference
    return {
        **spec,
        **r,
        "parameters": n,
        "peak_memory_gb": peak_memory_gb(),
        "mfu": flops / peak if peak else None,
    }


def _ds(cfg):
    from esc_dist.train.arguments import deepspeed_config

    return deepspeed_config(cfg)


def run_part(part: str, spec: dict, args) -> dict:
    """``measure`` in a child process (its own DeepSpeed and accelerate state)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WANDB_MODE": "disabled",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
    }
    env.pop("MASTER_PORT", None)
    t0 = time.time()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.gpu_proof",
            "--part",
            part,
            "--spec",
            json.dumps(spec),
            "--work",
            args.work,
            "--shape",
            args.shape,
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        return {
            **spec,
            "error": (r.stderr or r.stdout).strip().splitlines()[-1][:300],
            "seconds": round(time.time() - t0),
        }
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "seconds": round(time.time() - t0)}


MINE_DECODES = {"dynamic": "", "static": ", static cache", "compiled": ", compiled decoding"}
# compiling the decoding step for each new batch shape must not eat the proof's 5 minutes
MINE_TIMEOUT_S = 180


def mining(args, work: Path, shape: dict, decode: str) -> dict:
    name = f"mine 0.5B shape{MINE_DECODES[decode]}"
    if decode == "compiled":
        import torch

        if not torch.cuda.is_available():
            return {"name": name, "skipped": "no CUDA (CUDA graphs)"}
    model = build_model(work, "mine", shape["mine"], None)
    out = work / "parts" / f"mine-{decode}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    argv = [
        sys.executable,
        "-m",
        "esc_dist",
        "mine",
        "--role",
        "generator",
        "--data",
        str(RunLayout(work).data),
        "--model",
        str(model),
        "--out",
        str(out),
        f"run.output_dir={work}",
        f"mine.max_turns={shape['turns']}",
        "mine.max_new_tokens=64",
        "mine.min_new_tokens=64",
        "mine.batch_size=64",
        f"mine.decode={decode}",
    ]
    try:
        r = subprocess.run(
            argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=MINE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"not done in {MINE_TIMEOUT_S} s"}
    if r.returncode != 0:
        return {"name": name, "error": r.stderr.strip().splitlines()[-1][:300]}
    g = json.loads((out / "manifest.json").read_text())["generation"]
    return {
        "name": name,
        "new_tokens_per_s": g["tokens_per_s"],
        "turns": g["items"],
        "seconds": g["generation_seconds"],
    }


def recipe_steps(args, work: Path, shape: dict) -> dict:
    """The 7B recipe's first SFT steps, through the real stage, on its shape cut short."""
    out = work / "parts" / "recipe-sft"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    t0 = time.time()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "esc_dist",
            "sft",
            "--role",
            "planner",
            "--config",
            str(ROOT / "configs" / "qwen2.5-7b.yaml"),
            "--data",
            str(RunLayout(work).data),
            "--model",
            str(work / "model-sft"),
            "--out",
            str(out),
            f"run.output_dir={work / 'recipe'}",
            f"sft.max_steps={shape['steps']}",
            "sft.save_steps=100000",
            "sft.logging_steps=1",
            "sft.eval_steps=0",
            "sft.global_batch_size=null",
            f"sft.per_device_train_batch_size={shape['batch']}",
            "sft.gradient_accumulation_steps=1",
            "wandb.mode=disabled",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    res = {"name": "qwen2.5-7b recipe, first SFT steps", "seconds": round(time.time() - t0)}
    if r.returncode != 0:
        return {**res, "error": r.stderr.strip().splitlines()[-1][:300]}
    m = json.loads((out / "manifest.json").read_text())
    return {
        **res,
        "steps": m["global_step"],
        "final_loss": m["final_loss"],
        "train_runtime_s": m["train_runtime_s"],
    }


def variants(args) -> list[tuple[str, dict]]:
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    liger = cuda and importlib.util.find_spec("liger_kernel") is not None
    flash = cuda and importlib.util.find_spec("flash_attn") is not None
    out = [
        ("sft", {"name": f"sft ZeRO-{z}" if z else "sft no DeepSpeed", "zero": z})
        for z in (None, 2, 3)
    ]
    out.append(
        (
            "sft",
            {"name": "sft ZeRO-3 + Liger", "zero": 3, "liger": True}
            if liger
            else {"name": "sft ZeRO-3 + Liger", "skipped": "no CUDA or no liger-kernel"},
        )
    )
    free = "flash attention" if flash else "4D mask"
    out.append(
        (
            "sft",
            {
                "name": f"sft ZeRO-3 padding-free ({free})",
                "zero": 3,
                "padding_free": True,
                "flash": flash,
            },
        )
    )
    out += [
        (
            "dpo",
            {
                "name": "dpo ZeRO-3 " + ("shared prompt" if s else "two sequences"),
                "zero": 3,
                "shared": s,
            },
        )
        for s in (True, False)
    ]
    out.append(
        (
            "dpo",
            {
                "name": f"dpo ZeRO-3 padding-free ({free})",
                "zero": 3,
                "shared": not flash,
                "padding_free": True,
                "flash": flash,
            },
        )
    )
    return out


def table(rows: list[dict]) -> str:
    lines = ["| part | tokens/s | MFU | peak memory GB | s | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        tps = r.get("non_pad_tokens_per_s") or r.get("new_tokens_per_s")
        mfu, mem = r.get("mfu"), r.get("peak_memory_gb")
        cells = [
            r["name"],
            f"{tps:,.0f}" if tps else "–",
            f"{100 * mfu:.1f}%" if mfu else "–",
            f"{mem:.1f}" if mem else "–",
            str(r.get("seconds", "–")),
            r.get("skipped") or r.get("error") or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="directory for gpu_proof.json")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="gpu")
    ap.add_argument("--esconv", default=str(ROOT.parent / "shared" / "data" / "esconv"))
    ap.add_argument("--work", default="/tmp/esc-gpu-proof")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        print(json.dumps(measure(args.part, json.loads(args.spec), args)))
        return 0

    import torch

    from benchmarks.dpo_throughput import make_pairs
    from esc_dist.config import load_recipe
    from esc_dist.data.tasks import prepare
    from esc_dist.models.tiny import build_tiny_model

    work, shape = Path(args.work), SHAPES[args.shape]
    work.mkdir(parents=True, exist_ok=True)
    esconv = Path(args.esconv)
    recipe = load_recipe(
        None,
        [
            f"data.esconv={esconv / 'esconv.json'}",
            f"data.split={esconv / 'splits' / 'decoupledesc_split.json'}",
            "data.max_dialogues.train=30",
            "data.max_dialogues.validation=2",
            "data.max_dialogues.test=2",
            "data.max_history_messages=8",
        ],
    )
    data = RunLayout(work).data
    if not (data / "COMPLETED").is_file():
        prepare(recipe.data, data)
    if not (work / "tiny" / "config.json").is_file():
        build_tiny_model(recipe.tiny_model, esconv / "esconv.json", work / "tiny")
    build_model(work, "sft", {**shape["sft"], "num_hidden_layers": 0}, args.layers)
    if not (work / "pairs" / "COMPLETED").is_file():
        make_pairs(data, work / "pairs", 64, "generator")
    t0 = time.time()
    rows = []
    for part, spec in variants(args):
        rows.append(spec if "skipped" in spec else run_part(part, spec, args))
        print(f"{rows[-1]['name']}: done ({time.time() - t0:.0f} s)", flush=True)
    rows += [mining(args, work, shape, decode) for decode in MINE_DECODES]
    rows.append(recipe_steps(args, work, shape))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "shape": args.shape,
        "layers": args.layers,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "seconds": round(time.time() - t0),
        "rows": rows,
    }
    out = Path(args.out or work)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_proof.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    return 0 if not any("error" in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
