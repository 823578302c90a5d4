"""The sharded run: one global layout of the items, chunk files committed atomically, merge.

The whole item list is put in one global order (prompt token length, longest first so that a
too-large batch fails at once, ties by id) and cut into fixed batches of ``batch_size``;
consecutive batches form chunks of ``chunk_size`` items. Ranks get whole chunks (balanced by
padded token cost with :func:`esc_dist.dist.shard_balanced`), so each batch is the same on any
number of ranks and after a restart. Each finished chunk is written to
``chunk-NNNNNN.jsonl`` through a temporary file and ``os.replace``; a (re)started rank skips
chunks whose file exists. ``plan.json`` (written before any chunk) records the fingerprint of
the inputs and the ids each chunk must hold; :func:`merge` checks the chunk files against it.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .. import dist
from ..errors import ConfigError, MergeError, PlanMismatch
from ..io import (
    atomic_write_json,
    atomic_write_text,
    iter_jsonl,
    jsonl_line,
    load_json,
    model_fingerprint,
    sha256_json,
)
from ..log import get_logger
from ..models.loading import model_context
from ..models.shape import shape_of
from .memory import AUTO_CPU_ROWS, AUTO_SERVER_ROWS, free_bytes, rows_that_fit
from .replica import (
    Replica,
    deterministic_cuda,
    device_and_dtype,
    fit_prompts,
    load_tokenizer,
    resolve_decode,
    resolve_prefill,
)
from .sampling import row_seed
from .server import (
    NodeServer,
    ServerReplica,
    check_served,
    server_context,
    stop_tokens,
    vllm_dtype,
)
from .work import EngineConfig, WorkItem, items_fingerprint

log = get_logger(__name__)

ENGINE_VERSION = 1
PLAN = "plan.json"
CHUNK_PREFIX = "chunk-"
# Test/debug knob: seconds to sleep after each written chunk (makes a run slow enough to be
# interrupted at a known point). Not part of any result.
_DELAY_ENV = "ESC_DIST_CHUNK_DELAY_S"


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


def plan_layout(
    items: Sequence[WorkItem], lengths: Sequence[int], batch_size: int, chunk_size: int
) -> list[Chunk]:
    """Cut the globally ordered items into fixed batches and group them into chunks.

    Order: prompt length descending, ties by id. A chunk's cost is its padded token count
    (rows × (longest prompt + most new tokens) summed over its batches).
    """
    order = sorted(range(len(items)), key=lambda i: (-lengths[i], items[i].id))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    per_chunk = chunk_size // batch_size
    chunks = []
    for k, start in enumerate(range(0, len(batches), per_chunk)):
        bs = batches[start : start + per_chunk]
        cost = sum(
            len(b) * (max(lengths[i] for i in b) + max(items[i].sampling.max_new_tokens for i in b))
            for b in bs
        )
        chunks.append(Chunk(chunk_name(k), bs, cost))
    return chunks


# ---------------------------------------------------------------------------------------------
# Chunk files


def chunk_path(work_dir: Path, name: str) -> Path:
    return Path(work_dir) / f"{name}.jsonl"


def _record(item: WorkItem, result: dict) -> dict:
    return {
        "id": item.id,
        "key": item.seed_key,
        "sample": item.sample,
        "messages": item.messages,
        "meta": item.meta,
        **result,
    }


def existing_chunks(work_dir: Path) -> set[str]:
    return {p.name[: -len(".jsonl")] for p in Path(work_dir).glob(f"{CHUNK_PREFIX}*.jsonl")}


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


def batch_sizes(
    cfg: EngineConfig,
    work_dir: Path,
    model_dir: str | Path,
    device,
    dtype,
    items: Sequence[WorkItem],
    lengths: Sequence[int],
) -> tuple[int, int]:
    """The batch and chunk sizes of a run: ``cfg``'s, or under ``batch_size: auto`` the rows
    that fit the free memory of the rank with the least (:mod:`.memory`; a fixed size on a CPU
    and for a server), or the size a plan of this output already chose (a resumed run keeps its
    layout). The chunk then holds as many whole batches as fit ``chunk_size`` (at least one)."""
    if cfg.batch_size != "auto":
        return cfg.batch_size, cfg.chunk_size
    fit = AUTO_SERVER_ROWS if cfg.backend == "vllm" else AUTO_CPU_ROWS
    free = None if cfg.backend == "vllm" or not items else free_bytes(device)
    if free is not None:
        longest, new = max(lengths), max(it.sampling.max_new_tokens for it in items)
        try:
            fit = rows_that_fit(shape_of(model_dir), dtype.itemsize, free, longest, new)
        except KeyError as e:  # every rank reads the same config: every rank stops here
            raise ConfigError(
                f"batch_size: auto sizes a batch from {Path(model_dir) / 'config.json'}, which "
                f"has no {e}: set batch_size to a number"
            ) from None
    fits = _agree(fit)
    chosen = min(fits)
    if dist.is_main():
        plan = Path(work_dir) / PLAN
        try:
            prev = load_json(plan, PLAN, lambda p, problem: PlanMismatch(problem, path=p))
        except (OSError, PlanMismatch):  # none yet, or broken: the plan check below says so
            prev = None
        if isinstance(prev, dict) and prev.get("batch_size_auto") is True:
            size = prev.get("batch_size")
            if isinstance(size, int) and size >= 1:
                chosen = size
    batch = _agree(chosen)[0]
    log.info(
        "batch_size auto: %d rows (%s)",
        batch,
        "the output's plan" if batch != min(fits) else f"fits of the ranks: {fits}",
    )
    return batch, max(1, cfg.chunk_size // batch) * batch


def _agree(value: Any) -> list[Any]:
    return dist.all_gather_object(value)


def _raise_any(errors: list[Any]) -> None:
    for e in errors:
        if e is not None:
            kind, msg = e
            raise {"PlanMismatch": PlanMismatch, "MergeError": MergeError}.get(kind, RuntimeError)(
                msg
            )


def _compute(todo, items, plist, dropped, replica, cfg, work_dir, label, stats) -> None:
    """Generate this rank's chunks (``todo``) with ``replica``, each written atomically."""
    delay = float(os.environ.get(_DELAY_ENV, "0") or 0)
    update, close = _progress(len(todo), f"{label} rank {stats['rank']}")
    t_gen = time.perf_counter()
    for c in todo:
        lines = []
        for b in c.batches:
            batch = [items[i] for i in b]
            seeds = [row_seed(cfg.seed, cfg.stream, it.seed_key, it.sample) for it in batch]
            results = replica.generate_batch(batch, [plist[i] for i in b], seeds)
            for i, it, res in zip(b, batch, results):
                if dropped[i]:
                    res["messages_dropped"] = dropped[i]
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


def generate(
    items: Sequence[WorkItem],
    model_dir: str | Path,
    work_dir: str | Path,
    cfg: EngineConfig,
    label: str = "generate",
    source: str | Path | None = None,
) -> dict:
    """Compute every item once over all ranks into ``work_dir``'s chunk files.

    Every rank calls this with the same items. Prompts are fitted to the model's context
    (:func:`~esc_dist.generation.replica.fit_prompts`; ``source``, the data the items come
    from, is named when one cannot fit). Returns (on every rank) the run's statistics:
    chunks reused and computed, prompts shortened, per-rank seconds, items/s and tokens/s. Ends
    with all ranks synchronised; read the results with :func:`merge`.
    """
    t0 = time.perf_counter()
    deterministic_cuda()  # before any cuBLAS call of this process, if it is the first
    work_dir = Path(work_dir)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"duplicate work item id {dup!r}")
    model_fp = model_fingerprint(model_dir)  # refuses a broken model directory first
    tok = load_tokenizer(model_dir, cfg.trust_remote_code)
    context = model_context(model_dir, tok)
    if cfg.backend == "vllm":
        context = server_context(cfg.server, context)
    plist, dropped = fit_prompts(items, tok, context, source)
    shortened = sum(1 for n in dropped if n)
    if shortened:
        log.warning(
            "%s: %d of %d prompts shortened to the model's context of %d tokens "
            "(oldest history messages dropped)",
            label,
            shortened,
            len(items),
            context,
        )
    lengths = [len(p) for p in plist]
    device, dtype = device_and_dtype(cfg.precision)
    batch_size, chunk_size = batch_sizes(cfg, work_dir, model_dir, device, dtype, items, lengths)
    chunks = plan_layout(items, lengths, batch_size, chunk_size)
    decode = (
        "dynamic" if cfg.backend == "vllm" else resolve_decode(cfg.decode, device.type == "cuda")
    )
    fingerprint = sha256_json(
        {
            "engine": ENGINE_VERSION,
            "items": items_fingerprint(items),
            "model": model_fp,
            "batch_size": batch_size,
            "chunk_size": chunk_size,
            "seed": cfg.seed,
            "stream": cfg.stream,
            "device": device.type,
            "dtype": str(dtype).replace("torch.", ""),
            "attn_implementation": cfg.attn_implementation,
            "prefill": resolve_prefill(cfg.prefill),
            # the vLLM backend samples with its own random numbers (.server)
            **({"backend": "vllm"} if cfg.backend == "vllm" else {}),
            # a static cache decodes the same tokens on CPU, but kernels differ: no chunks of
            # both in one output (the growing cache's plans, made before, stay as they were)
            **({"decode": decode} if decode != "dynamic" else {}),
        }
    )
    layout_sha = sha256_json([[c.name, [ids[i] for i in c.indices]] for c in chunks])
    plan = {
        "engine_version": ENGINE_VERSION,
        "fingerprint": fingerprint,
        "label": label,
        "model": str(model_dir),
        "items": len(items),
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        **({"batch_size_auto": True} if cfg.batch_size == "auto" else {}),
        "seed": cfg.seed,
        "stream": cfg.stream,
        "device": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        "prefill": resolve_prefill(cfg.prefill),
        "decode": decode,
        "layout_sha256": layout_sha,
        "chunks": [
            {"name": c.name, "ids": [ids[i] for i in c.indices], "cost": c.cost} for c in chunks
        ],
    }

    # Rank 0 checks or writes the plan; every rank must have computed the same layout.
    error, present = None, None
    if dist.is_main():
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
            old = work_dir / PLAN
            if old.is_file():
                prev = load_json(old, PLAN, lambda p, problem: PlanMismatch(problem, path=p))
                prev_fp = prev.get("fingerprint") if isinstance(prev, dict) else None
                if prev_fp != fingerprint:
                    raise PlanMismatch(
                        f"{work_dir} holds chunks computed for other inputs (model, items, "
                        f"batch/chunk size, seed or device differ: plan fingerprint "
                        f"{str(prev_fp)[:12]} != {fingerprint[:12]}); remove "
                        "the directory or write to another output"
                    )
            else:
                stray = existing_chunks(work_dir)
                if stray:
                    raise PlanMismatch(
                        f"{work_dir} holds chunk files but no {PLAN}: remove "
                        "them or write to another output"
                    )
                atomic_write_json(old, plan)
            present = sorted(existing_chunks(work_dir))
        except PlanMismatch as e:
            error = ("PlanMismatch", str(e))
    gathered = _agree((error, present, layout_sha))
    _raise_any([g[0] for g in gathered])
    present = set(gathered[0][1])
    if len({g[2] for g in gathered}) != 1:
        raise RuntimeError(
            "ranks computed different chunk layouts (different tokenizer or inputs per rank?)"
        )

    remaining = [c for c in chunks if c.name not in present]
    world, me = dist.world_size(), dist.rank()
    mine = set(dist.shard_balanced([(c.name, c.cost) for c in remaining], world, me))
    todo = [c for c in remaining if c.name in mine]
    log.info(
        "%s: %d items in %d chunks; %d already done, %d to compute on %d rank(s), %d here",
        label,
        len(items),
        len(chunks),
        len(present),
        len(remaining),
        world,
        len(todo),
    )

    node = None
    if remaining and cfg.backend == "vllm":  # every rank: the node's server serves them all
        node = NodeServer(cfg.server, model_dir, work_dir, vllm_dtype(dtype), cfg.seed, context)
    with node if node is not None else nullcontext():
        if todo and node is None:
            t_load = time.perf_counter()
            replica = Replica(
                model_dir,
                tok,
                cfg.trust_remote_code,
                cfg.attn_implementation,
                cfg.prefill,
                cfg.precision,
                cfg.decode,
            )
            load = time.perf_counter() - t_load
        elif todo:
            replica = ServerReplica(
                node.url,
                check_served(node.url, model_dir),
                stop_tokens(tok, model_dir),
                cfg.server["request_timeout_s"],
            )
            load = 0.0
        stats = {
            "rank": me,
            "chunks": 0,
            "items": 0,
            "prompt_tokens": 0,
            "new_tokens": 0,
            "seconds": 0.0,
            "load_seconds": 0.0,
        }
        if todo:
            stats["load_seconds"] = round(load, 3)
            _compute(todo, items, plist, dropped, replica, cfg, work_dir, label, stats)
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
        "label": label,
        "world_size": world,
        "items": len(items),
        "chunks": len(chunks),
        "chunks_reused": len(present),
        "chunks_computed": sum(r["chunks"] for r in per_rank),
        "items_computed": computed,
        "new_tokens": new_tokens,
        "seconds": round(wall, 3),
        "generation_seconds": round(gen_wall, 3),
        "items_per_s": round(computed / gen_wall, 3) if gen_wall else None,
        "tokens_per_s": round(new_tokens / gen_wall, 3) if gen_wall else None,
        "device": device.type,
        "dtype": str(dtype).replace("torch.", ""),
        "context": context,
        "prompts_shortened": shortened,
        "fingerprint": fingerprint,
        "per_rank": per_rank,
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
        raise MergeError(
            f"{work_dir}: no {PLAN} (not a generation work directory, or the run never started)"
        )

    def bad(path: Path, problem: str) -> MergeError:
        return MergeError(problem, path=path)

    plan = load_json(plan_file, PLAN, bad)
    try:
        chunks = [
            {"name": str(c["name"]), "ids": [str(i) for i in c["ids"]]} for c in plan["chunks"]
        ]
    except (KeyError, TypeError):
        raise bad(
            plan_file,
            "not a plan written by esc-dist (expected chunks with names and "
            "ids); rerun the stage into a new output",
        ) from None
    expected: dict[str, str] = {}
    for c in chunks:
        for i in c["ids"]:
            expected[i] = c["name"]
    missing_chunks = [c for c in chunks if not chunk_path(work_dir, c["name"]).is_file()]
    if missing_chunks:
        c = missing_chunks[0]
        more = f" (and {len(missing_chunks) - 1} more)" if len(missing_chunks) > 1 else ""
        raise MergeError(
            f"{work_dir}: missing chunk {c['name']}.jsonl{more}: its "
            f"{len(c['ids'])} item(s) {', '.join(c['ids'][:5])}"
            f"{', ...' if len(c['ids']) > 5 else ''} were never written; rerun "
            "the stage to compute them"
        )
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
                raise MergeError(
                    f"{work_dir}: unknown id {rid!r} in {where} (not one of "
                    f"the {len(expected)} planned items)"
                )
            if rid in seen:
                raise MergeError(f"{work_dir}: duplicated id {rid!r}: in {seen[rid]} and {where}")
            seen[rid] = where
            records.append(rec)
    lost = [i for i in expected if i not in seen]
    if lost:
        raise MergeError(
            f"{work_dir}: id {lost[0]!r} is missing (planned in "
            f"{expected[lost[0]]}.jsonl)"
            f"{f' and {len(lost) - 1} more' if len(lost) > 1 else ''}"
        )
    records.sort(key=lambda r: r["id"])
    return records


def throughput_summary(stats: dict) -> str:
    ips, tps = stats.get("items_per_s"), stats.get("tokens_per_s")
    if not stats.get("items_computed"):
        return f"{stats['label']}: nothing to compute ({stats['chunks_reused']} chunks reused)"
    return (
        f"{stats['label']}: {stats['items_computed']} items in {stats['chunks_computed']} "
        f"chunks on {stats['world_size']} rank(s), {ips:.1f} items/s, {tps:.1f} tokens/s"
        + (f" ({stats['chunks_reused']} chunks reused)" if stats["chunks_reused"] else "")
    )
