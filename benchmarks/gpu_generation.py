"""GPU check of the generation engine (bf16, CUDA, NCCL): correctness, determinism, throughput.

Run under torchrun with one process per GPU (the process group is NCCL on CUDA, gloo on CPU):

    torchrun --nproc_per_node=1 -m benchmarks.gpu_generation --models DIR --prompts FILE --out DIR

``DIR`` holds ``tiny/`` (an `esc-dist tiny-model` output); ``FILE`` is a JSON list of chat prompts
(``[[{"role", "content"}, ...], ...]``). Needs torch, transformers and accelerate only (no
datasets, deepspeed or wandb). Checks, written to OUT/gpu_generation.json:

A. greedy: our batched KV-cache loop (padded-batch prefill, the GPU default, and per-row prefill)
   gives the same texts as ``model.generate`` on the same left-padded batch (bf16);
B. the sharded engine: two runs into fresh directories give identical records; a deleted chunk
   is recomputed identically; a rerun computes nothing;
C. throughput with a random-init Llama of ~0.37B parameters (24 layers, hidden 1024; bf16):
   the engine vs one prompt at a time with ``model.generate`` (sampling, temperature 0.7,
   top-p 0.95, a fixed number of new tokens).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def check_greedy(tiny: Path, prompts, n_new: int) -> dict:
    import torch

    from esc_dist.generation import Replica, Sampling, WorkItem, load_tokenizer, prompt_ids

    tok = load_tokenizer(tiny)
    out = {}
    for prefill in ("batched", "per_row"):
        rep = Replica(tiny, tok, prefill=prefill)
        with torch.no_grad():
            for p in rep.model.parameters():
                p.mul_(3.0)
        items = [WorkItem(str(i), m, Sampling(max_new_tokens=n_new)) for i, m in enumerate(prompts)]
        ids = [prompt_ids(tok, m) for m in prompts]
        ours = rep.generate_batch(items, ids, [0] * len(items))
        enc = tok.pad({"input_ids": ids}, return_tensors="pt").to(rep.device)
        with torch.inference_mode():
            ref = rep.model.generate(
                **enc, max_new_tokens=n_new, do_sample=False, pad_token_id=tok.pad_token_id
            )
        refs = [tok.decode(r[enc["input_ids"].shape[1] :], skip_special_tokens=True) for r in ref]
        same = sum(a["text"] == b for a, b in zip(ours, refs))
        out[prefill] = {
            "rows": len(items),
            "equal_to_hf_generate": same,
            "dtype": str(rep.dtype),
            "device": str(rep.device),
            "example": ours[0]["text"][:80],
        }
        del rep
    return out


def check_engine(tiny: Path, prompts, work: Path) -> dict:
    from esc_dist.generation import EngineConfig, Sampling, WorkItem, generate, merge

    s = Sampling(max_new_tokens=24, do_sample=True, temperature=0.7, top_p=0.95)
    items = [
        WorkItem(f"p{i:04d}#s{k}", m, s, key=f"p{i:04d}", sample=k)
        for i, m in enumerate(prompts)
        for k in range(2)
    ]
    cfg = EngineConfig(batch_size=8, chunk_size=16, seed=1, stream="gpu")
    a = generate(items, tiny, work / "a", cfg)
    generate(items, tiny, work / "b", cfg)
    ra, rb = merge(work / "a"), merge(work / "b")
    (work / "b" / "chunk-000001.jsonl").unlink()
    c = generate(items, tiny, work / "b", cfg)
    rc = merge(work / "b")
    d = generate(items, tiny, work / "b", cfg)
    return {
        "items": len(items),
        "identical_runs": ra == rb,
        "recomputed_identical": rc == ra,
        "recomputed_chunks": c["chunks_computed"],
        "rerun_computed": d["chunks_computed"],
        "distinct_texts": len({r["text"] for r in ra}),
        "items_per_s": a["items_per_s"],
        "device": a["device"],
        "dtype": a["dtype"],
    }


def throughput(tiny: Path, prompts, work: Path, n_new: int, baseline_n: int, batch: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from esc_dist.generation import (
        EngineConfig,
        Sampling,
        WorkItem,
        generate,
        load_tokenizer,
        prompt_ids,
    )

    tok = load_tokenizer(tiny)
    big = work / "llama-0.37b"
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(big))
    tok.save_pretrained(str(big))
    model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    ids = [prompt_ids(tok, m) for m in prompts]
    # baseline: one prompt at a time (one warm-up call first)
    kw = dict(
        do_sample=True,
        temperature=0.7,
        top_p=0.95,
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        pad_token_id=tok.pad_token_id,
    )
    with torch.inference_mode():
        x = torch.tensor([ids[0]], device=model.device)
        model.generate(x, attention_mask=torch.ones_like(x), **kw)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for p in ids[:baseline_n]:
            x = torch.tensor([p], device=model.device)
            model.generate(x, attention_mask=torch.ones_like(x), **kw)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        base_s = time.perf_counter() - t0
    del model
    s = Sampling(max_new_tokens=n_new, do_sample=True, temperature=0.7, top_p=0.95)
    items = [WorkItem(f"p{i:04d}", m, s) for i, m in enumerate(prompts)]
    res = {}
    for prefill in ("batched", "per_row"):
        g = generate(
            items,
            big,
            work / f"big-{prefill}",
            EngineConfig(batch_size=batch, chunk_size=batch, seed=0, stream="t", prefill=prefill),
        )
        res[prefill] = {
            "items": g["items"],
            "items_per_s": g["items_per_s"],
            "tokens_per_s": g["tokens_per_s"],
            "seconds": g["generation_seconds"],
        }
    return {
        "parameters": params,
        "new_tokens": n_new,
        "batch_size": batch,
        "mean_prompt_tokens": sum(map(len, ids)) / len(ids),
        "baseline": {
            "items": baseline_n,
            "seconds": round(base_s, 2),
            "items_per_s": baseline_n / base_s,
            "tokens_per_s": baseline_n * n_new / base_s,
        },
        "engine": res,
        "speedup_batched": res["batched"]["items_per_s"] / (baseline_n / base_s),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/esc-gpu-generation")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--baseline-n", type=int, default=16)
    ap.add_argument("--engine-n", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    import torch

    from esc_dist import dist

    dist.init(600)
    import torch.distributed as td

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    prompts = json.loads(Path(args.prompts).read_text())
    tiny = Path(args.models) / "tiny"
    report = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "backend": td.get_backend() if td.is_initialized() else None,
    }
    import transformers

    report["transformers"] = transformers.__version__
    steps = [
        ("greedy", lambda: check_greedy(tiny, prompts[:8], 16)),
        ("engine", lambda: check_engine(tiny, prompts[:40], work)),
        (
            "throughput",
            lambda: throughput(
                tiny, prompts[: args.engine_n], work, args.new_tokens, args.baseline_n, args.batch
            ),
        ),
    ]
    for name, fn in steps:
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as e:  # keep going: report what failed
            import traceback

            report[name] = {
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-3000:],
            }
        report[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(report[name])[:1500], flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_generation.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
