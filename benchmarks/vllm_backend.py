"""Mining throughput of the two generation backends on the same turns: the Transformers engine
(``mine.backend: hf``) against the vLLM backend (``mine.backend: vllm``, a server esc-dist starts
from ``.venv-vllm``), SmolLM2-135M-Instruct, one rank each.

Both mine the generator role on the first ``--turns`` training turns (gold history, one sample a
turn at 0.7 / 0.95, up to ``--max-new-tokens`` new tokens, ``--batch`` rows in flight, fp32).
Reported per backend: new tokens/s and turns/s of the generation (the engine's own figures: its
slowest rank's generation time, model loading and server start-up excluded) and the command's
wall time (for vLLM, with the server's start-up). Run it on an otherwise idle machine.

Usage: python -m benchmarks.vllm_backend [--esconv DIR] [--turns 256] [--max-new-tokens 32]
       [--batch 16] [--render-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import ROOT, write_section
from esc_dist.layout import RunLayout

RESULT = ROOT / "benchmarks" / "results" / "vllm_backend-cpu-smol.json"
START, END = "<!-- vllm-backend:start -->", "<!-- vllm-backend:end -->"


def mine(work: Path, base: Path, data: Path, backend: str, args, more: tuple = ()) -> dict:
    """Mine with ``backend`` (and the overrides ``more``, which name the output too)."""
    out = work / "-".join(["mine", backend, *(m.split("=")[1] for m in more)])
    extra = ["mine.backend=vllm", f"vllm.python={args.vllm_python}"] if backend == "vllm" else []
    extra += list(more)
    cmd = [
        sys.executable, "-m", "esc_dist", "mine", "--role", "generator", "--model", str(base),
        "--data", str(data), "--out", str(out), "mine.n_samples=1",
        f"mine.max_turns={args.turns}", "mine.temperature=0.7", "mine.top_p=0.95",
        f"mine.max_new_tokens={args.max_new_tokens}", f"mine.batch_size={args.batch}",
        f"mine.chunk_size={args.batch * 4}", "mine.precision=fp32", "wandb.mode=disabled",
        f"run.output_dir={work}", *extra,
    ]  # fmt: skip
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="2", PYTHONPATH=str(ROOT))
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: a finished output would be reused
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    wall = time.time() - t0
    gen = json.loads((out / "manifest.json").read_text())["generation"]
    row = {
        "backend": backend,
        "turns": gen["items"],
        "new_tokens": gen["new_tokens"],
        "generation_s": gen["generation_seconds"],
        "tokens_per_s": gen["tokens_per_s"],
        "turns_per_s": gen["items_per_s"],
        "wall_s": round(wall, 1),
    }
    return row


def inputs(args) -> tuple[Path, Path, Path]:
    """The work directory, SmolLM2 converted from its GGUF file and the prepared data (the
    first 40 training dialogues), made once under ``args.work``."""
    from esc_dist.config import DataConfig
    from esc_dist.data.tasks import prepare
    from esc_dist.models.gguf import SMOLLM2, convert_gguf

    work = Path(args.work)
    base, data = work / "base", RunLayout(work).data
    if not (base / "config.json").is_file():
        convert_gguf(SMOLLM2, base)
    if not (data / "manifest.json").is_file():
        esconv = Path(args.esconv)
        prepare(
            DataConfig(
                esconv=str(esconv / "esconv.json"),
                split=str(esconv / "splits" / "decoupledesc_split.json"),
                max_dialogues={"train": 40, "validation": 1, "test": 1},
                max_history_messages=6,
            ),
            data,
        )
    return work, base, data


def render(r: dict) -> str:
    hf, vl = (next(x for x in r["rows"] if x["backend"] == b) for b in ("hf", "vllm"))
    lines = [
        START,
        "## The vLLM backend against the Transformers engine (CPU, SmolLM2-135M)",
        "",
        f"`python -m benchmarks.vllm_backend`, {r['date']}, {r['cpu']} ({r['cores']} cores, "
        f"{'AVX-512 bf16' if r['native_bf16'] else 'no native bf16'}), fp32, one rank, mining "
        f"the generator role on the first {r['turns']} training turns (one sample a turn at "
        f"0.7 / 0.95, up to {r['max_new_tokens']} new tokens, {r['batch']} rows in flight); "
        f"vllm-cpu {r['vllm_version']} started by esc-dist (`vllm.python`). JSON: "
        f"`{RESULT.relative_to(ROOT)}`.",
        "",
        "| backend | new tokens | generation s | new tokens/s | turns/s | command wall s |",
        "|---|---|---|---|---|---|",
    ]
    for x in (hf, vl):
        # a wall time under the generation's: the command found its output finished (reused)
        wall = f"{x['wall_s']:.0f}" if x["wall_s"] >= x["generation_s"] else "– (reused)"
        lines.append(
            f"| {x['backend']} | {x['new_tokens']} | {x['generation_s']:.1f} | "
            f"{x['tokens_per_s']:.1f} | {x['turns_per_s']:.2f} | {wall} |"
        )
    ratio = vl["tokens_per_s"] / hf["tokens_per_s"]
    lines += [
        "",
        f"vLLM / Transformers engine, new tokens/s: {ratio:.2f}x; the vLLM command's wall time "
        f"beyond its generation ({vl['wall_s'] - vl['generation_s']:.0f} s) is mostly the "
        "server's start-up.",
        END,
    ]
    return "\n".join(lines)


def mining_parser(doc: str, work: str, turns: int) -> argparse.ArgumentParser:
    """The options of a SmolLM2 mining benchmark (this one and ``decode_cpu``)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--esconv", default=str(ROOT.parent / "shared" / "data" / "esconv"))
    ap.add_argument("--work", default=work)
    ap.add_argument("--turns", type=int, default=turns)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--render-only", action="store_true")
    return ap


def run_facts(args) -> dict:
    """When and where a mining benchmark ran, and its settings."""
    from benchmarks.smol_cpu import cpu_name
    from esc_dist import dist

    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "native_bf16": dist.cpu_has_bf16(),
        "turns": args.turns,
        "max_new_tokens": args.max_new_tokens,
        "batch": args.batch,
    }


def main() -> None:
    ap = mining_parser(__doc__, "/tmp/esc-vllm-bench", 256)
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    args = ap.parse_args()
    if args.render_only:
        write_section(render(json.loads(RESULT.read_text())), START, END)
        return

    work, base, data = inputs(args)
    rows = [mine(work, base, data, b, args) for b in ("hf", "vllm")]
    version = subprocess.run(
        [args.vllm_python, "-c", "import vllm; print(vllm.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    result = {
        **run_facts(args),
        "vllm_version": version.splitlines()[-1] if version else None,
        "rows": rows,
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    write_section(render(result), START, END)
    print(render(result))


if __name__ == "__main__":
    main()
