"""Mining throughput: esc-dist's batched, sharded engine vs one-turn-at-a-time ``model.generate``.

Same model (the default tiny model of ``esc-dist tiny-model``), same training turns, same
sampling settings (temperature 0.7, top-p 0.95, ``--max-new-tokens`` new tokens; an untrained
model rarely stops early, so both sides generate about the same number of tokens):

- baseline: one process, one turn at a time, ``model.generate(do_sample=True, ...)`` -- the way
  the paper's released code samples its preference data;
- esc-dist on 1 rank and on 2 ranks (``torchrun``): ``esc_dist.ipm.mine.mine`` (length-sorted
  fixed batches with a KV cache, chunk files, merge, pairs).

Reported: turns/s and generated tokens/s of the generation itself (model loading excluded on
both sides; the engine's figure is its slowest rank's generation time) and, for the engine, the
whole command's wall time. Every process uses one thread (``OMP_NUM_THREADS=1``), so the 2-rank
run uses 2 cores and the others 1.

Usage: python -m benchmarks.mining [--esconv PATH] [--turns 300] [--results benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from esc_dist.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]

SECTION = "## Mining throughput"


def overrides(args) -> list[str]:
    return [
        f"mine.max_turns={args.turns}",
        "mine.n_samples=1",
        "mine.temperature=0.7",
        "mine.top_p=0.95",
        f"mine.max_new_tokens={args.max_new_tokens}",
        f"mine.batch_size={args.batch_size}",
        f"mine.chunk_size={args.batch_size}",
        "wandb.mode=disabled",
        "run.dist_timeout_s=600",
    ]


def worker(args) -> None:
    from esc_dist.config import load_recipe
    from esc_dist.ipm.mine import mine

    recipe = load_recipe(None, overrides(args))
    mine(recipe, "vanilla", model_dir=args.model, data_dir=args.data, out=args.out)


def baseline(args, data: Path, model_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from esc_dist.data.tasks import load_task
    from esc_dist.generation import prompt_ids

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    rows = sorted(load_task(data, "vanilla")["train"], key=lambda r: r["id"])[: args.turns]
    prompts = [prompt_ids(tok, r["prompt"]) for r in rows]
    new_tokens = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids])
            out = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=True,
                temperature=0.7,
                top_p=0.95,
                max_new_tokens=args.max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
            new_tokens += out.shape[1] - x.shape[1]
    secs = time.perf_counter() - t0
    return {
        "turns": len(prompts),
        "seconds": round(secs, 2),
        "turns_per_s": len(prompts) / secs,
        "tokens_per_s": new_tokens / secs,
        "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts),
    }


def engine(args, data: Path, model_dir: Path, out: Path, nproc: int) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "WANDB_"))
    }
    env.update(
        OMP_NUM_THREADS="1",
        WANDB_MODE="disabled",
        DS_ACCELERATOR="cpu",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(ROOT),
    )
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        f"--nproc_per_node={nproc}",
        f"--master_port={29700 + nproc}",
        str(Path(__file__).resolve()),
        "--worker",
        "--data",
        str(data),
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--turns",
        str(args.turns),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--batch-size",
        str(args.batch_size),
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    g = json.loads((out / "manifest.json").read_text())["generation"]
    return {
        "ranks": nproc,
        "turns": g["items"],
        "seconds": g["generation_seconds"],
        "turns_per_s": g["items_per_s"],
        "tokens_per_s": g["tokens_per_s"],
        "wall_seconds": round(wall, 2),
        "per_rank_items": [p["items"] for p in g["per_rank"]],
    }


def write_section(path: Path, text: str, section: str = SECTION) -> None:
    """Replace the section headed ``section`` of ``path`` with ``text`` (or append it)."""
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = text.rstrip("\n") + "\n\n"
    new = (
        pattern.sub(lambda _: text, old)
        if pattern.search(old)
        else old.rstrip("\n") + "\n\n" + text
    )
    new = new.rstrip("\n") + "\n"
    path.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--esconv", default=str(ROOT.parent / "shared" / "data" / "esconv"))
    ap.add_argument("--turns", type=int, default=300)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--max-history",
        type=int,
        default=8,
        help="history messages kept in prompts (data.max_history_messages; 0: all)",
    )
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.max_history = args.max_history or None
    if args.worker:
        return worker(args)

    import torch

    from esc_dist.config import DataConfig, TinyModelConfig
    from esc_dist.data.tasks import prepare
    from esc_dist.log import quiet_libraries
    from esc_dist.models.tiny import build_tiny_model

    quiet_libraries()
    esconv = Path(args.esconv)
    work = Path(tempfile.mkdtemp(prefix="esc-mining-bench-"))
    data, model_dir = RunLayout(work).data, work / "tiny"
    counts = prepare(
        DataConfig(
            esconv=str(esconv / "esconv.json"),
            split=str(esconv / "splits" / "decoupledesc_split.json"),
            max_dialogues={"train": max(4, args.turns // 10), "validation": 1, "test": 1},
            max_history_messages=args.max_history,
        ),
        data,
    )["counts"]
    if counts["train"]["turns"] < args.turns:
        raise SystemExit(f"only {counts['train']['turns']} training turns; lower --turns")
    info = build_tiny_model(TinyModelConfig(), esconv / "esconv.json", model_dir)

    base = baseline(args, data, model_dir)
    print(f"baseline (sequential generate): {base['turns_per_s']:.2f} turns/s", flush=True)
    one = engine(args, data, model_dir, work / "mine-1", 1)
    print(f"esc-dist, 1 rank: {one['turns_per_s']:.2f} turns/s", flush=True)
    two = engine(args, data, model_dir, work / "mine-2", 2)
    print(f"esc-dist, 2 ranks: {two['turns_per_s']:.2f} turns/s", flush=True)
    same = (work / "mine-1" / "pairs.jsonl").read_bytes() == (
        work / "mine-2" / "pairs.jsonl"
    ).read_bytes()
    r_batch = one["turns_per_s"] / base["turns_per_s"]
    r_ranks = two["turns_per_s"] / one["turns_per_s"]
    r_total = two["turns_per_s"] / base["turns_per_s"]
    print(
        f"batched engine / sequential generate: {r_batch:.2f}x; 2 ranks / 1 rank: "
        f"{r_ranks:.2f}x; 2 ranks / sequential: {r_total:.2f}x; 2-rank pairs identical to "
        f"1-rank: {same}"
    )

    cpu = (
        next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").is_file()
        else platform.processor()
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cmd = "python -m benchmarks.mining " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in (
            ("turns", args.turns),
            ("max_new_tokens", args.max_new_tokens),
            ("batch_size", args.batch_size),
            ("max_history", args.max_history or 0),
        )
    )
    history = (
        f"the last {args.max_history} history messages"
        if args.max_history
        else "the whole dialogue history"
    )
    text = f"""{SECTION}

Measured {datetime.date.today().isoformat()} on this project's CPU machine: \
{cpu}, **{os.cpu_count()}
cores** (so 2 ranks is the most it can show), {platform.system()}, Python
{platform.python_version()}, torch {torch.__version__}, no GPU. Command: `{cmd}`.

Model: the default tiny model (`esc-dist tiny-model`, {info["parameters"]:,} parameters, fp32).
Work: the first {args.turns} training turns of the vanilla task ({history}; mean prompt
{base["mean_prompt_tokens"]:.0f} tokens), one sample each, temperature 0.7, top-p 0.95, at most
{args.max_new_tokens} new tokens (the untrained model rarely stops earlier); esc-dist batch size
{args.batch_size}, chunk size {args.batch_size}. One thread per process (`OMP_NUM_THREADS=1`).
Generation time only (model loading excluded); 1-minute load average at the end: {load:.2f}.

| run | turns/s | tokens/s | generation s | whole command s |
|---|---|---|---|---|
| baseline: sequential `model.generate`, 1 process | {base["turns_per_s"]:.2f} | \
{base["tokens_per_s"]:.0f} | {base["seconds"]:.1f} | – |
| esc-dist `mine`, 1 rank | {one["turns_per_s"]:.2f} | {one["tokens_per_s"]:.0f} | \
{one["seconds"]:.1f} | {one["wall_seconds"]:.1f} |
| esc-dist `mine`, 2 ranks (torchrun, gloo) | {two["turns_per_s"]:.2f} | \
{two["tokens_per_s"]:.0f} | {two["seconds"]:.1f} | {two["wall_seconds"]:.1f} |

Ratios: batched engine vs sequential `generate` **{r_batch:.2f}x** (one process each); 2 ranks
vs 1 rank **{r_ranks:.2f}x**; 2 ranks vs the sequential baseline **{r_total:.2f}x**. The 2-rank
pairs file is byte-identical to the 1-rank one: {same} (items per rank: {two["per_rank_items"]}).
"""
    write_section(Path(args.results), text)
    print(f"wrote the '{SECTION[3:]}' section of {args.results}")


if __name__ == "__main__":
    main()
