"""Sharded, resumable, batched generation with a plain model replica per rank.

Mining and inference both hand this module a list of :class:`WorkItem` (an id, a chat prompt,
per-item sampling settings, a sample index and JSON ``meta`` to carry through) and a model
directory. :func:`generate` computes every item exactly once over all ranks, writing results as
atomic chunk files; :func:`merge` reads them back, verified, in id order.

**Same result whatever the world size, and after any restart.** The whole item list is put in
one global order (prompt token length, longest first so that a too-large batch fails at once,
ties by id) and cut into fixed batches of ``batch_size``; consecutive batches form chunks of
``chunk_size`` items. Ranks get whole chunks (balanced by padded token cost with
:func:`esc_dist.dist.shard_balanced`), so each batch -- its rows, their order and padding -- is
the same on 1 rank, on 8 ranks, and after a restart. Sampling draws no random numbers from a
shared stream: each row has its own ``torch.Generator`` seeded from (run seed, stream, item key,
sample index), which yields one uniform number per generated token, and the token is picked by
inverse-CDF sampling over the temperature / top-k / top-p filtered distribution of that row.
A row's sample therefore depends only on its own logits and seed, never on its batch partners'
random draws or on the order in which chunks run. Greedy decoding uses no randomness. The
guarantee is bit-for-bit on the same hardware and software stack, as long as the same batch gives
the same logits: on CPU it does (tested: 2 ranks == 1 rank, byte for byte); on CUDA the engine
turns on PyTorch's deterministic algorithms (:func:`deterministic_cuda`), without which an H200
now and then flipped a near-tied sampled token between reruns. A GPU bf16 run and a CPU fp32 run
of the same items give different texts, which is why the device type and dtype are part of the
fingerprint that guards a resume.

**Nothing lost, nothing twice.** Each finished chunk is written to ``chunks/chunk-NNNNNN.jsonl``
through a temporary file and ``os.replace``; a (re)started rank skips chunks whose file exists.
``plan.json`` (written before any chunk) records the fingerprint of the inputs (items, model
files, batch and chunk sizes, seed, device type, dtype) and the ids each chunk must hold: a run
over a directory planned for other inputs is refused, and :func:`merge` checks that every
planned chunk exists and that every input id appears exactly once and no other id appears,
naming the chunk or id at fault.

**Decoding.** Prompts are used as given (``data.max_history_messages`` bounds their length).
Each prompt of a batch is prefilled on its own (the fast causal attention path) and the caches
are stacked, left-padded, for the batched decoding steps with a KV cache (``prefill="batched"``
prefills the padded batch in one call instead; see :func:`resolve_prefill`). Decoding stops at
the tokenizer's eos, the pad token and any eos id of the model's generation config, or after the
item's ``max_new_tokens``; the text is decoded without special tokens.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from . import dist
from .errors import ConfigError, MergeError, PlanMismatch
from .io import (atomic_write_json, atomic_write_text, iter_jsonl, jsonl_line, model_fingerprint,
                 read_json, read_manifest, sha256_json)
from .log import get_logger

log = get_logger(__name__)

ENGINE_VERSION = 1
PLAN = "plan.json"
CHUNK_PREFIX = "chunk-"
# Test/debug knob: seconds to sleep after each written chunk (makes a run slow enough to be
# interrupted at a known point). Not part of any result.
_DELAY_ENV = "ESC_DIST_CHUNK_DELAY_S"


# ---------------------------------------------------------------------------------------------
# Work items


@dataclass(frozen=True)
class Sampling:
    """How one item is decoded. ``top_k`` 0 and ``top_p`` 1.0 switch those filters off; the stop
    tokens are barred from the first ``min_new_tokens`` positions (as HF's ``min_new_tokens``)."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_new_tokens: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got "
                             f"{self.min_new_tokens}")
        if self.do_sample:
            if not self.temperature > 0:
                raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
            if not 0 < self.top_p <= 1:
                raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
            if self.top_k < 0:
                raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")


@dataclass
class WorkItem:
    id: str
    messages: list[dict]  # the chat prompt; the generation prompt is added by the template
    sampling: Sampling
    key: str | None = None  # seed key (default: id): e.g. the turn id shared by n samples
    sample: int = 0  # sample index, mixed into the seed
    meta: dict[str, Any] = field(default_factory=dict)  # carried into the result, JSON only

    @property
    def seed_key(self) -> str:
        return self.id if self.key is None else self.key


@dataclass
class EngineConfig:
    batch_size: int
    chunk_size: int  # items per chunk file; a multiple of batch_size
    seed: int = 0
    stream: str = ""  # mixed into the seeds, so that two phases of one job draw independently
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    prefill: str = "auto"  # auto (= per_row) | batched | per_row: see resolve_prefill

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.chunk_size < self.batch_size or self.chunk_size % self.batch_size:
            raise ValueError(f"chunk_size ({self.chunk_size}) must be a positive multiple of "
                             f"batch_size ({self.batch_size})")


def row_seed(seed: int, stream: str, key: str, sample: int) -> int:
    """The 63-bit seed of one row: a hash of (run seed, stream, item key, sample index)."""
    h = hashlib.sha256(f"{seed}\x1f{stream}\x1f{key}\x1f{sample}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def messages_sha(messages: Sequence[dict]) -> str:
    return sha256_json([{"role": m["role"], "content": m["content"]} for m in messages])


# ---------------------------------------------------------------------------------------------
# Fingerprints


def items_fingerprint(items: Sequence[WorkItem]) -> str:
    return sha256_json([[it.id, it.seed_key, it.sample, messages_sha(it.messages),
                         asdict(it.sampling), sha256_json(it.meta)] for it in items])


# ---------------------------------------------------------------------------------------------
# Layout: global order, batches, chunks


@dataclass
class Chunk:
    name: str
    batches: list[list[int]]  # item indices
    cost: int

    @property
    def indices(self) -> list[int]:
        return [i for b in self.batches for i in b]


def chunk_name(k: int) -> str:
    return f"{CHUNK_PREFIX}{k:06d}"


def plan_layout(items: Sequence[WorkItem], lengths: Sequence[int], batch_size: int,
                chunk_size: int) -> list[Chunk]:
    """Cut the globally ordered items into fixed batches and group them into chunks.

    Order: prompt length descending, ties by id. A chunk's cost is its padded token count
    (rows × (longest prompt + most new tokens) summed over its batches).
    """
    order = sorted(range(len(items)), key=lambda i: (-lengths[i], items[i].id))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    per_chunk = chunk_size // batch_size
    chunks = []
    for k, start in enumerate(range(0, len(batches), per_chunk)):
        bs = batches[start:start + per_chunk]
        cost = sum(len(b) * (max(lengths[i] for i in b)
                             + max(items[i].sampling.max_new_tokens for i in b)) for b in bs)
        chunks.append(Chunk(chunk_name(k), bs, cost))
    return chunks


# ---------------------------------------------------------------------------------------------
# Token choice


def choose_tokens(logits, do_sample, temperature, top_p, top_k, u):
    """Next token of each row: argmax, or an inverse-CDF draw with the row's own uniform ``u``.

    ``logits`` [B, V] float32; ``do_sample`` bool [B]; ``temperature``, ``top_p``, ``u`` float
    [B]; ``top_k`` long [B] (0 = off). Filters as in HF: temperature, then top-k, then top-p on
    the renormalised top-k distribution (the smallest prefix of the sorted tokens whose mass
    reaches top_p; the most likely token is always kept). A row's result depends only on its
    own logits, settings and ``u``.
    """
    import torch

    tokens = logits.argmax(dim=-1)
    if not bool(do_sample.any()):
        return tokens
    rows = do_sample.nonzero().squeeze(1)
    scaled = logits[rows] / temperature[rows].unsqueeze(1)
    sorted_l, order = torch.sort(scaled, dim=-1, descending=True, stable=True)
    vocab = sorted_l.shape[-1]
    rank = torch.arange(vocab, device=logits.device).unsqueeze(0)
    k = top_k[rows]
    k = torch.where(k > 0, k, torch.full_like(k, vocab)).unsqueeze(1)
    sorted_l = sorted_l.masked_fill(rank >= k, float("-inf"))
    probs = torch.softmax(sorted_l, dim=-1)
    before = probs.cumsum(dim=-1) - probs
    drop = before >= top_p[rows].unsqueeze(1)
    drop[:, 0] = False
    probs = probs.masked_fill(drop, 0.0)
    cdf = probs.cumsum(dim=-1)
    target = u[rows].unsqueeze(1) * cdf[:, -1:]
    pos = torch.searchsorted(cdf, target, right=True)
    last = (probs > 0).sum(dim=-1, keepdim=True) - 1  # kept tokens are a prefix
    pos = torch.minimum(pos, last)
    tokens[rows] = order.gather(1, pos).squeeze(1)
    return tokens


# ---------------------------------------------------------------------------------------------
# The model replica


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def prompt_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    out = tokenizer.apply_chat_template(list(messages), tokenize=True,
                                        add_generation_prompt=True)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


class Replica:
    """A plain (non-ZeRO) model on this rank's device: bf16 on CUDA, fp32 on CPU."""

    def __init__(self, model_dir: str | Path, tokenizer, trust_remote_code: bool = False,
                 attn_implementation: str | None = None, prefill: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM

        self.device, self.dtype = device_and_dtype()
        self.prefill = resolve_prefill(prefill)
        deterministic_cuda()
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=self.dtype, trust_remote_code=trust_remote_code, **extra)
        self.model.to(self.device).eval()
        self.tok = tokenizer
        self.pad_id = tokenizer.pad_token_id
        stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        stops.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        self.stop_ids = torch.tensor(sorted(s for s in stops if s is not None),
                                     device=self.device)
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.first_kw = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def _forward(self, ids, mask, pos, cache, first: bool):
        kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        if cache is not None:
            kw[self.cache_kw] = cache
        if first:
            kw.update(self.first_kw)
        out = self.model(**kw)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.logits[:, -1, :].float(), new_cache

    def _prefill_per_row(self, ids_list, width: int):
        """Prefill each prompt alone (no padding mask: the fast causal attention path, which on
        CPU is several times faster than a padded batch), then stack the per-row caches, left-
        padded with zeros, into one batched cache for the batched decoding steps. Returns None
        (the caller falls back to a padded batch prefill) when the model's cache is not a plain
        DynamicCache of full-attention layers."""
        import torch
        from transformers import DynamicCache

        logits, rows = [], []
        for p in ids_list:
            x = torch.tensor([p], dtype=torch.long, device=self.device)
            pos = torch.arange(len(p), device=self.device).unsqueeze(0)
            lg, cache = self._forward(x, None, pos, None, first=True)
            kv = _plain_kv(cache)
            if kv is None:
                return None
            logits.append(lg)
            rows.append(kv)
        merged = DynamicCache()
        for layer in range(len(rows[0])):
            ks, vs = [], []
            for kv in rows:
                k, v = kv[layer]
                pad = width - k.shape[-2]
                ks.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                vs.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            merged.update(torch.cat(ks), torch.cat(vs), layer)
        return torch.cat(logits), merged

    def generate_batch(self, items: Sequence[WorkItem], ids_list: Sequence[list[int]],
                       seeds: Sequence[int]) -> list[dict]:
        """Decode one batch with a KV cache; returns text, finish reason and token counts."""
        import torch

        with torch.inference_mode():
            return self._generate(items, ids_list, seeds)

    def _generate(self, items, ids_list, seeds):
        import torch

        n, width = len(items), max(len(p) for p in ids_list)
        dev = self.device
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for r, p in enumerate(ids_list):
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        s = [it.sampling for it in items]
        max_new = [x.max_new_tokens for x in s]
        steps = max(max_new)
        # One uniform number per token position from each sampled row's own generator.
        u = torch.zeros((n, steps), dtype=torch.float64)
        for r, (x, seed) in enumerate(zip(s, seeds)):
            if x.do_sample:
                g = torch.Generator().manual_seed(seed)
                u[r, :x.max_new_tokens] = torch.rand(x.max_new_tokens, generator=g,
                                                     dtype=torch.float64)
        u = u.to(device=dev, dtype=torch.float32)
        do_sample = torch.tensor([x.do_sample for x in s], device=dev)
        temperature = torch.tensor([x.temperature if x.do_sample else 1.0 for x in s],
                                   dtype=torch.float32, device=dev)
        top_p = torch.tensor([x.top_p for x in s], dtype=torch.float32, device=dev)
        top_k = torch.tensor([x.top_k for x in s], dtype=torch.long, device=dev)
        limit = torch.tensor(max_new, device=dev)
        min_new = torch.tensor([x.min_new_tokens for x in s], device=dev)
        bar_steps = max(x.min_new_tokens for x in s)  # steps at which some row may not stop

        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        done = self._prefill_per_row(ids_list, width) if self.prefill == "per_row" else None
        logits, cache = done if done is not None else self._forward(ids, mask, pos, None,
                                                                     first=True)
        next_pos = pos[:, -1:] + 1
        finished = torch.zeros(n, dtype=torch.bool, device=dev)
        if bar_steps:
            stop_vocab = torch.zeros(logits.shape[-1], dtype=torch.bool, device=dev)
            stop_vocab[self.stop_ids[self.stop_ids < logits.shape[-1]]] = True
        out_tokens = []
        for step in range(steps):
            if step < bar_steps:  # too early to stop: bar the stop tokens
                bar = (min_new > step).unsqueeze(1) & stop_vocab.unsqueeze(0)
                logits = logits.masked_fill(bar, float("-inf"))
            tok = choose_tokens(logits, do_sample, temperature, top_p, top_k, u[:, step])
            tok = torch.where(finished, torch.full_like(tok, self.pad_id), tok)
            out_tokens.append(tok)
            finished |= torch.isin(tok, self.stop_ids) | (step + 1 >= limit)
            if step + 1 == steps or bool(finished.all()):
                break
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=dev)], dim=1)
            logits, cache = self._forward(tok.unsqueeze(1), mask, next_pos, cache, first=False)
            next_pos = next_pos + 1
        gen = torch.stack(out_tokens, dim=1).tolist()
        stop = set(self.stop_ids.tolist())
        results = []
        for r, row in enumerate(gen):
            row = row[:max_new[r]]
            cut = next((j for j, t in enumerate(row) if t in stop), None)
            kept = row if cut is None else row[:cut]
            results.append({
                "text": self.tok.decode(kept, skip_special_tokens=True),
                "finish_reason": "length" if cut is None else "stop",
                "prompt_tokens": len(ids_list[r]),
                "new_tokens": len(kept),
            })
        return results


def _plain_kv(cache) -> list[tuple] | None:
    """Per-layer (keys, values) of a DynamicCache whose layers are all plain full-attention
    layers (transformers 4.x lists or 5.x layers); None for anything else."""
    from transformers import DynamicCache

    if type(cache) is not DynamicCache:
        return None
    layers = getattr(cache, "layers", None)
    if layers is not None:
        from transformers.cache_utils import DynamicLayer

        if not layers or any(type(l) is not DynamicLayer or not getattr(l, "is_initialized", True)
                             for l in layers):
            return None
        return [(l.keys, l.values) for l in layers]
    keys, values = getattr(cache, "key_cache", None), getattr(cache, "value_cache", None)
    if not keys or values is None or len(keys) != len(values):
        return None
    return list(zip(keys, values))


def resolve_prefill(prefill: str) -> str:
    """``auto`` is ``per_row``: prefilling prompts one by one and stacking the caches was faster
    than one padded batch both on CPU (about 3x on the prefill) and on an H200 (1.6x end to end,
    0.37B model, ~830-token prompts, batch 32), because attention with a padding mask leaves
    the fast causal kernels. Models whose cache cannot be stacked fall back to ``batched``."""
    if prefill not in ("auto", "batched", "per_row"):
        raise ValueError(f"prefill must be auto, batched or per_row, got {prefill!r}")
    return "per_row" if prefill == "auto" else prefill


def deterministic_cuda() -> None:
    """Make CUDA kernels reproducible for this process (a no-op on CPU).

    Without it, a rerun of the same batch on an H200 now and then picked other kernels and one
    sampled row in 80 flipped a near-tied token; with PyTorch's deterministic algorithms and
    cuBLAS's fixed workspace, six reruns were identical. ``CUBLAS_WORKSPACE_CONFIG`` only takes
    effect if no cuBLAS call was made before in the process; ops without a deterministic
    implementation warn instead of failing.
    """
    import torch

    if not torch.cuda.is_available():
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def device_and_dtype():
    import torch

    if torch.cuda.is_available():
        dev = torch.device("cuda", dist.local_rank())
        return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.device("cpu"), torch.float32


# ---------------------------------------------------------------------------------------------
# Chunk files


def chunk_path(work_dir: Path, name: str) -> Path:
    return Path(work_dir) / f"{name}.jsonl"


def _record(item: WorkItem, result: dict) -> dict:
    return {"id": item.id, "key": item.seed_key, "sample": item.sample,
            "messages": item.messages, "meta": item.meta, **result}


def existing_chunks(work_dir: Path) -> set[str]:
    return {p.name[:-len(".jsonl")] for p in Path(work_dir).glob(f"{CHUNK_PREFIX}*.jsonl")}


# ---------------------------------------------------------------------------------------------
# The sharded run


def _progress(total: int, desc: str):
    """tqdm on a terminal; otherwise a callable that logs every ~30 s and at the end."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="chunk", position=dist.rank(), leave=False)
        return bar.update, bar.close
    t0, last = time.perf_counter(), [time.perf_counter()]
    done = [0]

    def update(k: int = 1):
        done[0] += k
        now = time.perf_counter()
        if now - last[0] >= 30 or done[0] == total:
            last[0] = now
            log.info("%s: %d/%d chunks (%.0f s)", desc, done[0], total, now - t0)

    return update, lambda: None


def _agree(value: Any) -> list[Any]:
    return dist.all_gather_object(value)


def _raise_any(errors: list[Any]) -> None:
    for e in errors:
        if e is not None:
            kind, msg = e
            raise {"PlanMismatch": PlanMismatch, "MergeError": MergeError}.get(
                kind, RuntimeError)(msg)


def generate(items: Sequence[WorkItem], model_dir: str | Path, work_dir: str | Path,
             cfg: EngineConfig, label: str = "generate") -> dict:
    """Compute every item once over all ranks into ``work_dir``'s chunk files.

    Every rank calls this with the same items. Returns (on every rank) the run's statistics:
    chunks reused and computed, per-rank seconds, items/s and tokens/s. Ends with all ranks
    synchronised; read the results with :func:`merge`.
    """
    t0 = time.perf_counter()
    deterministic_cuda()  # before any cuBLAS call of this process, if it is the first
    work_dir = Path(work_dir)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"duplicate work item id {dup!r}")
    tok = load_tokenizer(model_dir, cfg.trust_remote_code)
    cache: dict[str, list[int]] = {}
    plist = []
    for it in items:
        h = messages_sha(it.messages)
        if h not in cache:
            cache[h] = prompt_ids(tok, it.messages)
        plist.append(cache[h])
    lengths = [len(p) for p in plist]
    chunks = plan_layout(items, lengths, cfg.batch_size, cfg.chunk_size)
    device, dtype = device_and_dtype()
    fingerprint = sha256_json({
        "engine": ENGINE_VERSION, "items": items_fingerprint(items),
        "model": model_fingerprint(model_dir), "batch_size": cfg.batch_size,
        "chunk_size": cfg.chunk_size, "seed": cfg.seed, "stream": cfg.stream,
        "device": device.type, "dtype": str(dtype).replace("torch.", ""),
        "attn_implementation": cfg.attn_implementation,
        "prefill": resolve_prefill(cfg.prefill),
    })
    layout_sha = sha256_json([[c.name, [ids[i] for i in c.indices]] for c in chunks])
    plan = {"engine_version": ENGINE_VERSION, "fingerprint": fingerprint, "label": label,
            "model": str(model_dir), "items": len(items), "batch_size": cfg.batch_size,
            "chunk_size": cfg.chunk_size, "seed": cfg.seed, "stream": cfg.stream,
            "device": device.type, "dtype": str(dtype).replace("torch.", ""),
            "prefill": resolve_prefill(cfg.prefill), "layout_sha256": layout_sha,
            "chunks": [{"name": c.name, "ids": [ids[i] for i in c.indices], "cost": c.cost}
                       for c in chunks]}

    # Rank 0 checks or writes the plan; every rank must have computed the same layout.
    error, present = None, None
    if dist.is_main():
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
            old = work_dir / PLAN
            if old.is_file():
                prev = read_json(old)
                if prev.get("fingerprint") != fingerprint:
                    raise PlanMismatch(
                        f"{work_dir} holds chunks computed for other inputs (model, items, "
                        f"batch/chunk size, seed or device differ: plan fingerprint "
                        f"{str(prev.get('fingerprint'))[:12]} != {fingerprint[:12]}); remove "
                        "the directory or write to another output")
            else:
                stray = existing_chunks(work_dir)
                if stray:
                    raise PlanMismatch(f"{work_dir} holds chunk files but no {PLAN}: remove "
                                       "them or write to another output")
                atomic_write_json(old, plan)
            present = sorted(existing_chunks(work_dir))
        except PlanMismatch as e:
            error = ("PlanMismatch", str(e))
    gathered = _agree((error, present, layout_sha))
    _raise_any([g[0] for g in gathered])
    present = set(gathered[0][1])
    if len({g[2] for g in gathered}) != 1:
        raise RuntimeError("ranks computed different chunk layouts (different tokenizer or "
                           "inputs per rank?)")

    remaining = [c for c in chunks if c.name not in present]
    world, me = dist.world_size(), dist.rank()
    mine = set(dist.shard_balanced([(c.name, c.cost) for c in remaining], world, me))
    todo = [c for c in remaining if c.name in mine]
    log.info("%s: %d items in %d chunks; %d already done, %d to compute on %d rank(s), %d here",
             label, len(items), len(chunks), len(present), len(remaining), world, len(todo))

    stats = {"rank": me, "chunks": 0, "items": 0, "prompt_tokens": 0, "new_tokens": 0,
             "seconds": 0.0, "load_seconds": 0.0}
    if todo:
        t_load = time.perf_counter()
        replica = Replica(model_dir, tok, cfg.trust_remote_code, cfg.attn_implementation,
                          cfg.prefill)
        stats["load_seconds"] = round(time.perf_counter() - t_load, 3)
        delay = float(os.environ.get(_DELAY_ENV, "0") or 0)
        update, close = _progress(len(todo), f"{label} rank {me}")
        t_gen = time.perf_counter()
        for c in todo:
            lines = []
            for b in c.batches:
                batch = [items[i] for i in b]
                seeds = [row_seed(cfg.seed, cfg.stream, it.seed_key, it.sample) for it in batch]
                results = replica.generate_batch(batch, [plist[i] for i in b], seeds)
                for it, res in zip(batch, results):
                    lines.append(jsonl_line(_record(it, res)))
                    stats["prompt_tokens"] += res["prompt_tokens"]
                    stats["new_tokens"] += res["new_tokens"]
            atomic_write_text(chunk_path(work_dir, c.name), "\n".join(lines) + "\n")
            stats["chunks"] += 1
            stats["items"] += len(lines)
            update(1)
            if delay:
                time.sleep(delay)
        close()
        stats["seconds"] = round(time.perf_counter() - t_gen, 3)
        del replica
    secs = stats["seconds"]
    stats["items_per_s"] = round(stats["items"] / secs, 3) if secs else None
    stats["tokens_per_s"] = round(stats["new_tokens"] / secs, 3) if secs else None
    per_rank = _agree(stats)  # also the barrier: every chunk is on disk after this
    wall = time.perf_counter() - t0
    computed = sum(r["items"] for r in per_rank)
    new_tokens = sum(r["new_tokens"] for r in per_rank)
    gen_wall = max((r["seconds"] for r in per_rank), default=0.0)
    return {
        "label": label, "world_size": world, "items": len(items), "chunks": len(chunks),
        "chunks_reused": len(present), "chunks_computed": sum(r["chunks"] for r in per_rank),
        "items_computed": computed, "new_tokens": new_tokens,
        "seconds": round(wall, 3), "generation_seconds": round(gen_wall, 3),
        "items_per_s": round(computed / gen_wall, 3) if gen_wall else None,
        "tokens_per_s": round(new_tokens / gen_wall, 3) if gen_wall else None,
        "device": device.type, "dtype": str(dtype).replace("torch.", ""),
        "fingerprint": fingerprint, "per_rank": per_rank,
    }


# ---------------------------------------------------------------------------------------------
# Merge


def merge(work_dir: str | Path) -> list[dict]:
    """Every record of ``work_dir``'s chunk files, sorted by id, after checking them against the
    plan: each planned chunk present, each planned id exactly once, no other id. Raises
    :class:`MergeError` naming the missing chunk or the missing, duplicated or unknown id.
    Read-only: any rank may call it."""
    work_dir = Path(work_dir)
    plan_file = work_dir / PLAN
    if not plan_file.is_file():
        raise MergeError(f"{work_dir}: no {PLAN} (not a generation work directory, or the run "
                         "never started)")
    plan = read_json(plan_file)
    expected: dict[str, str] = {}
    for c in plan["chunks"]:
        for i in c["ids"]:
            expected[i] = c["name"]
    missing_chunks = [c for c in plan["chunks"]
                      if not chunk_path(work_dir, c["name"]).is_file()]
    if missing_chunks:
        c = missing_chunks[0]
        more = f" (and {len(missing_chunks) - 1} more)" if len(missing_chunks) > 1 else ""
        raise MergeError(f"{work_dir}: missing chunk {c['name']}.jsonl{more}: its "
                         f"{len(c['ids'])} item(s) {', '.join(c['ids'][:5])}"
                         f"{', ...' if len(c['ids']) > 5 else ''} were never written; rerun "
                         "the stage to compute them")
    seen: dict[str, str] = {}
    records = []
    for path in sorted(work_dir.glob(f"{CHUNK_PREFIX}*.jsonl")):
        def bad(line: int | None, problem: str, path: Path = path) -> MergeError:
            return MergeError(problem, path=path, line=line)

        for n, rec in iter_jsonl(path, bad):
            where = f"{path.name} line {n}"
            rid = rec.get("id") if isinstance(rec, dict) else None
            if not isinstance(rid, str):
                raise bad(n, "a record without a string 'id'")
            if rid not in expected:
                raise MergeError(f"{work_dir}: unknown id {rid!r} in {where} (not one of "
                                 f"the {len(expected)} planned items)")
            if rid in seen:
                raise MergeError(f"{work_dir}: duplicated id {rid!r}: in {seen[rid]} and "
                                 f"{where}")
            seen[rid] = where
            records.append(rec)
    lost = [i for i in expected if i not in seen]
    if lost:
        raise MergeError(f"{work_dir}: id {lost[0]!r} is missing (planned in "
                         f"{expected[lost[0]]}.jsonl){f' and {len(lost) - 1} more' if len(lost) > 1 else ''}")
    records.sort(key=lambda r: r["id"])
    return records


def finalize_on_main(out: str | Path, finalize: Callable[[], dict]) -> dict:
    """Run ``finalize`` (merge the chunk files, write the output and its manifest) on rank 0
    only and return the manifest on every rank; a failure on rank 0 is raised on every rank."""
    error = None
    if not dist.is_main():
        _share_error(None)
        return read_manifest(out)
    try:
        return finalize()
    except Exception as e:  # tell the other ranks, then raise everywhere
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        _share_error(error)


def _share_error(error: str | None) -> None:
    errors = [e for e in dist.all_gather_object(error) if e]
    if errors and not dist.is_main():
        raise RuntimeError(f"rank 0 failed to merge: {errors[0]}")


def claim_output(out: str | Path, job: dict, name: str) -> dict | None:
    """Prepare a stage's output directory for ``job`` (a dict with a ``fingerprint``).

    Returns the manifest when ``out`` is already complete for the same fingerprint (nothing to
    do). Raises :class:`esc_dist.config.ConfigError` when ``out`` holds a complete or partial
    output of another job, so that chunks of different inputs are never mixed. Otherwise rank 0
    records the job in ``out/job.json`` (what ``esc-dist merge`` reads) and None is returned.
    Every rank calls this and reaches the same answer.
    """
    from .io import is_completed, read_manifest

    out = Path(out)
    if is_completed(out):
        prev = read_manifest(out) or {}
        if prev.get("fingerprint") == job["fingerprint"]:
            log.info("%s: %s is already complete for these inputs; nothing to do", name, out)
            return prev
        raise ConfigError(f"{out} already holds a completed {prev.get('stage', '')} output "
                          "for other inputs (model, data or settings differ); remove it or "
                          "choose another --out")
    job_file = out / "job.json"
    if job_file.is_file() and read_json(job_file).get("fingerprint") != job["fingerprint"]:
        raise ConfigError(f"{out} holds an unfinished run for other inputs (model, data or "
                          "settings differ); remove it or choose another --out")
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(job_file, job)
    return None


def throughput_summary(stats: dict) -> str:
    ips, tps = stats.get("items_per_s"), stats.get("tokens_per_s")
    if not stats.get("items_computed"):
        return f"{stats['label']}: nothing to compute ({stats['chunks_reused']} chunks reused)"
    return (f"{stats['label']}: {stats['items_computed']} items in {stats['chunks_computed']} "
            f"chunks on {stats['world_size']} rank(s), {ips:.1f} items/s, {tps:.1f} tokens/s"
            + (f" ({stats['chunks_reused']} chunks reused)" if stats["chunks_reused"] else ""))


__all__ = ["Sampling", "WorkItem", "EngineConfig", "MergeError", "PlanMismatch", "generate",
           "merge", "choose_tokens", "row_seed", "model_fingerprint",
           "items_fingerprint", "plan_layout", "Replica", "load_tokenizer", "prompt_ids",
           "throughput_summary", "resolve_prefill", "deterministic_cuda",
           "claim_output"]
