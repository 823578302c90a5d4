"""Inferential Preference Mining: sample the SFT model on every training turn and build pairs.

:func:`mine` samples ``mine.n_samples`` completions per gold supporter turn of the training split
(the gold history as context, the role's own prompt) through the sharded engine of
:mod:`esc_dist.generation`, then turns each sample into at most one preference pair:

* **planner** -- chosen = the gold strategy name, rejected = the sample. A pair only when the
  parsed sampled strategy differs from the gold one; a sample that names no strategy is kept as a
  rejection with ``parse_error`` giving the reason.
* **generator** -- the prompt is the generator prompt under the gold strategy; chosen = the gold
  reply, rejected = the sampled reply (``sampled_strategy`` is the gold strategy it was
  conditioned on). No pair when the sample repeats the gold reply.
* **vanilla** -- chosen = "[gold strategy] gold reply", rejected = the joint sample, parsed with
  :func:`esc_dist.strategies.parse_tagged` into ``sampled_strategy`` / ``sampled_reply``. No pair
  when both parts equal the gold ones.

Output directory: ``chunks/`` (the engine's resumable chunk files and plan), ``pairs.jsonl`` (one
record per pair, sorted by id, the schema :func:`esc_dist.ipm.prefdial.read_pairs` reads),
``stats.json`` (turns, samples, pairs, same-as-gold, unparseable with reasons, finish reasons,
strategy confusion gold x sampled), ``manifest.json`` and ``COMPLETED`` (last). A killed run
resumes from its chunk files; a completed one with the same inputs is skipped.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .. import dist
from ..config import MineConfig, Recipe
from ..constants import ROLES, UNPARSEABLE
from ..errors import ConfigError
from ..generation import Sampling, WorkItem, merge, stage
from ..generation.stage import (
    GenerationStage,
    Phase,
    generation_summary,
    run_stage,
    settings_errors,
)
from ..io import atomic_write_json, output_record, read_json, write_jsonl
from ..layout import RunLayout
from ..log import get_logger
from ..strategies import STRATEGIES, format_tagged, parse_strategy, parse_tagged

log = get_logger(__name__)

CHUNKS = "chunks"


# ---------------------------------------------------------------------------------------------
# Work items


def mine_sampling(cfg: MineConfig, role: str) -> Sampling:
    max_new = cfg.max_new_tokens
    if role == "planner" and cfg.planner_max_new_tokens is not None:
        max_new = cfg.planner_max_new_tokens
    return Sampling(
        max_new_tokens=max_new,
        do_sample=cfg.temperature > 0,
        temperature=cfg.temperature if cfg.temperature > 0 else 1.0,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        min_new_tokens=min(cfg.min_new_tokens, max_new),
    )


def mine_items(data_dir: str | Path, role: str, cfg: MineConfig) -> list[WorkItem]:
    """One work item per (training turn, sample): the role's prompt, the turn's gold data."""
    from ..data.tasks import load_task

    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
    rows = sorted(load_task(data_dir, role)["train"], key=lambda r: r["id"])
    if cfg.max_turns is not None:
        rows = rows[: cfg.max_turns]
    history = {t["id"]: t["history"] for t in load_task(data_dir, "turns")["train"]}
    sampling = mine_sampling(cfg, role)
    items = []
    for row in rows:
        if row["id"] not in history:
            raise ValueError(
                f"{data_dir}: turn {row['id']} of the {role} dataset is missing "
                "from the turns dataset"
            )
        meta = {
            "turn_id": row["id"],
            "role": role,
            "history": history[row["id"]],
            "gold_strategy": row["strategy"],
            "gold_reply": row["reply"],
        }
        prompt = [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]
        for k in range(cfg.n_samples):
            items.append(
                WorkItem(
                    id=f"{row['id']}#s{k}",
                    messages=prompt,
                    sampling=sampling,
                    key=row["id"],
                    sample=k,
                    meta=meta,
                )
            )
    return items


# ---------------------------------------------------------------------------------------------
# Pairs


def _norm(text: str) -> str:
    return " ".join(text.split())


def parse_sample(
    role: str, text: str, gold_strategy: str
) -> tuple[str | None, str | None, str | None]:
    """(sampled strategy, sampled reply, parse error reason or None) of one sample."""
    text = text.strip()
    if role == "planner":
        if not text:
            return None, None, "empty_output"
        s = parse_strategy(text)
        return (s, None, None) if s else (None, None, "not_a_strategy")
    if role == "generator":
        return gold_strategy, text, None if text else "empty_output"
    if not text:
        return None, None, "empty_output"
    s, reply = parse_tagged(text)
    if s is None:
        reason = (
            "unknown_strategy_tag" if text.startswith("[") and "]" in text else "no_strategy_tag"
        )
        return None, reply, reason
    return s, reply, None


def build_pair(
    role: str,
    pair_id: str,
    turn_id: str,
    prompt: list[dict],
    history: list[dict],
    gold_strategy: str,
    gold_reply: str,
    text: str,
) -> tuple[dict | None, dict]:
    """The pair of one sample (None when it matches the gold turn) and what was found.

    ``info`` holds ``status`` ("pair" or "same_as_gold"), ``sampled_strategy`` and
    ``parse_error``, for the statistics.
    """
    sampled, reply, error = parse_sample(role, text, gold_strategy)
    raw = text.strip()
    if role == "planner":
        chosen = gold_strategy
        same = error is None and sampled == gold_strategy
    elif role == "generator":
        chosen = gold_reply
        same = error is None and _norm(raw) == _norm(gold_reply)
    else:
        chosen = format_tagged(gold_strategy, gold_reply)
        same = error is None and sampled == gold_strategy and _norm(reply) == _norm(gold_reply)
    info = {
        "status": "same_as_gold" if same else "pair",
        "sampled_strategy": sampled,
        "parse_error": error,
    }
    if same:
        return None, info
    pair = {
        "id": pair_id,
        "turn_id": turn_id,
        "role": role,
        "prompt": prompt,
        "history": history,
        "gold_strategy": gold_strategy,
        "gold_reply": gold_reply,
        "chosen": chosen,
        "rejected": raw,
        "sampled_strategy": sampled,
        "sampled_reply": reply,
        "parse_error": error,
    }
    return pair, info


def pairs_from_records(records: Iterable[Mapping[str, Any]]) -> tuple[list[dict], dict]:
    """Pairs (sorted by id) and mining statistics from the engine's merged records."""
    records = sorted(records, key=lambda r: r["id"])
    pairs, infos = [], []
    for r in records:
        m = r["meta"]
        pair, info = build_pair(
            m["role"],
            r["id"],
            m["turn_id"],
            r["messages"],
            m["history"],
            m["gold_strategy"],
            m["gold_reply"],
            r["text"],
        )
        info.update(
            turn_id=m["turn_id"],
            gold_strategy=m["gold_strategy"],
            finish_reason=r.get("finish_reason"),
            new_tokens=r.get("new_tokens", 0),
        )
        infos.append(info)
        if pair is not None:
            pairs.append(pair)
    return pairs, mining_stats(infos, records[0]["meta"]["role"] if records else None)


def mining_stats(infos: Sequence[Mapping[str, Any]], role: str | None) -> dict:
    cols = list(STRATEGIES) + [UNPARSEABLE]
    confusion = {g: dict.fromkeys(cols, 0) for g in STRATEGIES}
    for i in infos:
        confusion[i["gold_strategy"]][i["sampled_strategy"] or UNPARSEABLE] += 1
    turns = Counter(i["turn_id"] for i in infos)
    with_pair = {i["turn_id"] for i in infos if i["status"] == "pair"}
    reasons = Counter(i["parse_error"] for i in infos if i["parse_error"])
    n = len(infos)
    return {
        "role": role,
        "turns": len(turns),
        "samples": n,
        "pairs": sum(1 for i in infos if i["status"] == "pair"),
        "same_as_gold": sum(1 for i in infos if i["status"] == "same_as_gold"),
        "turns_without_pair": len(turns) - len(with_pair),
        "unparseable": sum(reasons.values()),
        "unparseable_reasons": dict(sorted(reasons.items())),
        "finish_reasons": dict(sorted(Counter(i["finish_reason"] for i in infos).items())),
        "mean_new_tokens": round(sum(i["new_tokens"] for i in infos) / n, 3) if n else 0.0,
        "confusion": confusion,
    }


# ---------------------------------------------------------------------------------------------
# Output

COUNTS = ("turns", "samples", "pairs", "same_as_gold", "turns_without_pair", "unparseable")


def write_pairs(out: Path, job: dict) -> tuple[dict, dict]:
    """Merge and verify the chunk files of ``out``; write pairs.jsonl and stats.json."""
    records = merge(out / CHUNKS)
    pairs, stats = pairs_from_records(records)
    write_jsonl(out / "pairs.jsonl", pairs)
    atomic_write_json(out / "stats.json", stats)
    return {"pairs": output_record(out, "pairs.jsonl")}, {k: stats[k] for k in COUNTS}


def finalize(
    out: str | Path, job: dict, generation: dict | None = None, t0: float | None = None
) -> dict:
    """Merge and verify the chunk files of ``out``, write pairs, stats, manifest and COMPLETED.

    Used at the end of :func:`mine` (rank 0) and alone by ``esc-dist merge``.
    """
    return stage.finalize(out, job, write_pairs, generation, t0)


def _wandb_summary(out: Path, manifest: dict, generation: dict) -> dict:
    stats = read_json(out / "stats.json")
    flat = {f"mine/{k}": stats[k] for k in COUNTS + ("mean_new_tokens",)}
    for reason, c in stats["unparseable_reasons"].items():
        flat[f"mine/unparseable/{reason}"] = c
    flat.update(
        generation_summary(
            "mine",
            generation,
            (
                "items_per_s",
                "tokens_per_s",
                "chunks_computed",
                "chunks_reused",
                "world_size",
                "generation_seconds",
            ),
        )
    )
    return flat


def _report(out: Path, manifest: dict) -> None:
    c = manifest["counts"]
    log.info(
        "mine %s: %d turns, %d samples -> %d pairs (%d same as gold, %d unparseable) in %s",
        manifest["role"],
        c["turns"],
        c["samples"],
        c["pairs"],
        c["same_as_gold"],
        c["unparseable"],
        out,
    )


def mine(
    recipe: Recipe,
    role: str,
    model_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
) -> dict:
    """Mine one role's pairs under any launcher (every rank calls this); returns the manifest.

    A completed output with the same inputs is returned as is; one completed for other inputs is
    an error (choose another ``out`` or remove it).
    """
    t0 = time.time()
    cfg = recipe.mine
    dist.init(recipe.run.dist_timeout_s)
    run = RunLayout.of(recipe)
    data_dir = Path(data_dir or run.data)
    model_dir = Path(model_dir or run.model("sft", role))
    out = Path(out or run.mined(role))
    with settings_errors("mine"):
        items = mine_items(data_dir, role, cfg)
    return run_stage(
        recipe,
        GenerationStage(
            name="mine",
            labels={"role": role},
            job_type=f"mine-{role}",
            out=out,
            data_dir=data_dir,
            models={"model": model_dir},
            settings=cfg,
            phases=[Phase(f"mine-{role}", model_dir, CHUNKS, items)],
            write_outputs=write_pairs,
            wandb_config={"items": len(items)},
            wandb_summary=_wandb_summary,
            report=_report,
        ),
        t0,
    )
