"""The Transformers engine's decoding caches on CPU: mining SmolLM2-135M-Instruct with
``mine.decode: dynamic`` (the growing cache, what ``auto`` means) and ``static`` (a cache
allocated once per batch shape, a fixed-width mask) on the same turns, one rank, fp32.
``compiled`` needs CUDA: ``benchmarks/gpu_proof.py`` times it on a GPU.

Both mine the generator role on the first ``--turns`` training turns (gold history, one sample a
turn at 0.7 / 0.95, up to ``--max-new-tokens`` new tokens, ``--batch`` rows a batch). Reported:
new tokens/s of the generation (model loading excluded) and whether the two wrote the same
samples. Run it on an otherwise idle machine.

Usage: python -m benchmarks.decode_cpu [--esconv DIR] [--turns 128] [--max-new-tokens 32]
       [--batch 16] [--render-only]
"""

from __future__ import annotations

import json

from benchmarks.report import ROOT, write_section
from benchmarks.vllm_backend import inputs, mine, mining_parser, run_facts

RESULT = ROOT / "benchmarks" / "results" / "decode_cpu-smol.json"
START, END = "<!-- decode-cpu:start -->", "<!-- decode-cpu:end -->"
DECODES = ("dynamic", "static")


def render(r: dict) -> str:
    dyn, sta = (next(x for x in r["rows"] if x["decode"] == d) for d in DECODES)
    lines = [
        START,
        "## Decoding caches of the Transformers engine on CPU (SmolLM2-135M)",
        "",
        f"`python -m benchmarks.decode_cpu`, {r['date']}, {r['cpu']} ({r['cores']} cores, "
        f"{'AVX-512 bf16' if r['native_bf16'] else 'no native bf16'}), fp32, one rank, mining "
        f"the generator role on the first {r['turns']} training turns (one sample a turn at "
        f"0.7 / 0.95, up to {r['max_new_tokens']} new tokens, {r['batch']} rows a batch). "
        f"JSON: `{RESULT.relative_to(ROOT)}`.",
        "",
        "| mine.decode | new tokens | generation s | new tokens/s | vs dynamic |",
        "|---|---|---|---|---|",
    ]
    for x in (dyn, sta):
        lines.append(
            f"| {x['decode']} | {x['new_tokens']} | {x['generation_s']:.1f} | "
            f"{x['tokens_per_s']:.1f} | {x['tokens_per_s'] / dyn['tokens_per_s']:.2f}x |"
        )
    same = "the same" if r["same_samples"] else "different"
    lines += ["", f"The two wrote {same} samples (pairs files compared byte for byte).", END]
    return "\n".join(lines)


def main() -> None:
    args = mining_parser(__doc__, "/tmp/esc-decode-bench", 128).parse_args()
    if args.render_only:
        write_section(render(json.loads(RESULT.read_text())), START, END)
        return

    work, base, data = inputs(args)
    rows = []
    for decode in DECODES:
        row = mine(work, base, data, "hf", args, (f"mine.decode={decode}",))
        rows.append({"decode": decode, **row})
    pairs = [(work / f"mine-hf-{d}" / "pairs.jsonl").read_bytes() for d in DECODES]
    result = {
        **run_facts(args),
        "same_samples": pairs[0] == pairs[1],
        "rows": rows,
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    write_section(render(result), START, END)
    print(render(result))


if __name__ == "__main__":
    main()
