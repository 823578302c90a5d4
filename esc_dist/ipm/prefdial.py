"""IPM-PrefDial: judge mined pairs and keep those whose rejected side shows a psychological error.

:func:`build_prefdial` reads the mining stage's pairs file (JSON Lines, one record per (turn,
sample)), judges every pair (:func:`esc_dist.ipm.judge.judge_pairs`) and writes, atomically:

``judged.jsonl``   every pair with its ``verdict``
``pairs.jsonl``    the kept pairs
``dataset/``       the kept pairs as a ``datasets.Dataset`` in TRL's conversational DPO format
                   (``prompt`` messages, ``chosen``/``rejected`` one assistant message each, and
                   ``id``, ``turn_id``, ``role``, ``gold_strategy``, ``sampled_strategy``)
``stats.json``     counts, kept ratio, error counts per side, parse errors, strategy confusion
``manifest.json``  input hash, redacted judge config, counts, the judge requests that failed for
                   good (at most ``judge.max_failed_share`` of them), every output file's sha256
``COMPLETED``      written last

The directory is built beside ``out_dir`` and moved into place only when complete, so a crash
leaves the previous output as it was.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .. import __version__
from ..config import JudgeConfig, Recipe, redact
from ..constants import BALANCED_ROLES, ROLES, UNPARSEABLE
from ..errors import PairsError
from ..io import (
    atomic_write_json,
    directory_outputs,
    iter_jsonl,
    mark_completed,
    require_verified,
    sha256_file,
    write_jsonl,
    write_manifest,
)
from ..log import get_logger
from ..outputs import check_output, staged_dir
from ..strategies import STRATEGIES, normalize_strategy
from .balance import balance
from .judge import ERRORS, judge_pairs, judge_version, verdict

log = get_logger(__name__)

PAIR_KEYS: tuple[str, ...] = (
    "id",
    "turn_id",
    "role",
    "prompt",
    "history",
    "gold_strategy",
    "gold_reply",
    "chosen",
    "rejected",
    "sampled_strategy",
    "sampled_reply",
    "parse_error",
)
_PROMPT_ROLES = {"system", "user", "assistant"}
_HISTORY_ROLES = {"seeker", "supporter"}
MISMATCH = "mismatch"  # the verdicts' judge under ipm.planner_pairs: mismatch


# ---------------------------------------------------------------------------------------------
# Reading and validating pairs


def _check_pair(rec: Any, path: Path, line: int, role: str | None) -> dict:
    def bad(problem: str) -> PairsError:
        return PairsError(path, line, problem)

    if not isinstance(rec, dict):
        raise bad(f"a pair must be a JSON object, got {type(rec).__name__}")
    missing = [k for k in PAIR_KEYS if k not in rec]
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    extra = sorted(set(rec) - set(PAIR_KEYS))
    if extra:
        raise bad(f"unexpected key(s) {', '.join(extra)}")
    for k in ("id", "turn_id", "chosen", "rejected", "gold_reply"):
        if not isinstance(rec[k], str):
            raise bad(f"'{k}' must be a string, got {type(rec[k]).__name__}")
    for k in ("id", "turn_id", "chosen"):
        if not rec[k].strip():
            raise bad(f"'{k}' is empty")
    if rec["role"] not in ROLES:
        raise bad(f"unknown role {rec['role']!r} (expected one of {', '.join(ROLES)})")
    if role is not None and rec["role"] != role:
        raise bad(f"role {rec['role']!r} in a {role} pairs file")
    if normalize_strategy(rec["gold_strategy"]) != rec["gold_strategy"]:
        raise bad(f"'gold_strategy' {rec['gold_strategy']!r} is not one of the 8 strategies")
    s = rec["sampled_strategy"]
    if s is not None and normalize_strategy(s) != s:
        raise bad(f"'sampled_strategy' {s!r} is neither null nor one of the 8 strategies")
    for k in ("sampled_reply", "parse_error"):
        if rec[k] is not None and not isinstance(rec[k], str):
            raise bad(f"'{k}' must be a string or null, got {type(rec[k]).__name__}")
    prompt = rec["prompt"]
    if not isinstance(prompt, list) or not prompt:
        raise bad("'prompt' must be a non-empty list of messages")
    for j, m in enumerate(prompt):
        if not (
            isinstance(m, dict)
            and m.get("role") in _PROMPT_ROLES
            and isinstance(m.get("content"), str)
        ):
            raise bad(f"prompt[{j}] must be {{'role': system|user|assistant, 'content': str}}")
    history = rec["history"]
    if not isinstance(history, list):
        raise bad("'history' must be a list")
    for j, m in enumerate(history):
        if not (
            isinstance(m, dict)
            and m.get("role") in _HISTORY_ROLES
            and isinstance(m.get("text"), str)
            and (m.get("strategy") is None or isinstance(m.get("strategy"), str))
        ):
            raise bad(
                f"history[{j}] must be {{'role': seeker|supporter, 'text': str, "
                "'strategy': str|null}"
            )
    return rec


def iter_pairs(path: str | Path, role: str | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, pair) from a pairs file, validating each record."""
    path = Path(path)
    seen: dict[str, int] = {}
    for lineno, rec in iter_jsonl(path, lambda line, problem: PairsError(path, line, problem)):
        pair = _check_pair(rec, path, lineno, role)
        if pair["id"] in seen:
            raise PairsError(
                path, lineno, f"duplicate id {pair['id']!r} (first on line {seen[pair['id']]})"
            )
        seen[pair["id"]] = lineno
        yield lineno, pair


def read_pairs(path: str | Path, role: str | None = None) -> list[dict]:
    """All pairs of a pairs file; raises :class:`PairsError` naming the file and line."""
    return [p for _, p in iter_pairs(path, role)]


# ---------------------------------------------------------------------------------------------
# Statistics


def _confusion(pairs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    cols = list(STRATEGIES) + [UNPARSEABLE]
    table = {g: dict.fromkeys(cols, 0) for g in STRATEGIES}
    for p in pairs:
        table[p["gold_strategy"]][p["sampled_strategy"] or UNPARSEABLE] += 1
    return table


def drop_category(verdict: Mapping[str, Any]) -> str:
    """Why a pair was dropped, as a short category for counting."""
    if verdict["chosen_errors"]:
        return "chosen_has_error"
    if verdict["reason"].startswith("dropped:"):
        return "rejected_has_no_error"
    if verdict["reason"].startswith("balance:"):
        return "balance"
    return verdict["reason"]  # unparseable_sample, identical, judge_parse_error, ...


def compute_stats(
    pairs: Sequence[Mapping[str, Any]],
    verdicts: Sequence[Mapping[str, Any]],
    judge_counters: Mapping[str, int] | None = None,
) -> dict:
    """The numbers of ``stats.json`` for pairs and their verdicts (same order)."""
    n = len(pairs)
    kept = [p for p, v in zip(pairs, verdicts) if v["keep"]]
    chosen_err = Counter(e for v in verdicts for e in v["chosen_errors"])
    rejected_err = Counter(e for v in verdicts for e in v["rejected_errors"])
    kept_err = Counter(e for v in verdicts if v["keep"] for e in v["rejected_errors"])
    reasons = Counter(drop_category(v) for v in verdicts if not v["keep"])
    mining_errors = Counter(p["parse_error"] for p in pairs if p["parse_error"])
    return {
        "pairs_in": n,
        "kept": len(kept),
        "dropped": n - len(kept),
        "kept_ratio": round(len(kept) / n, 4) if n else 0.0,
        "roles": dict(Counter(p["role"] for p in pairs)),
        "errors": {
            "chosen": {e: chosen_err.get(e, 0) for e in ERRORS},
            "rejected": {e: rejected_err.get(e, 0) for e in ERRORS},
            "rejected_kept": {e: kept_err.get(e, 0) for e in ERRORS},
        },
        "drop_reasons": dict(sorted(reasons.items())),
        "mining": {
            "parse_errors": sum(mining_errors.values()),
            "parse_error_reasons": dict(mining_errors.most_common()),
            "unparseable_strategy": sum(1 for p in pairs if p["sampled_strategy"] is None),
        },
        "judge": {
            "parse_errors": sum(1 for v in verdicts if v["reason"] == "judge_parse_error"),
            "request_errors": sum(1 for v in verdicts if v["reason"] == "judge_request_error"),
            **({"client": dict(judge_counters)} if judge_counters else {}),
        },
        "confusion": _confusion(pairs),
        "confusion_kept": _confusion(kept),
    }


# ---------------------------------------------------------------------------------------------
# Output


def dpo_row(pair: Mapping[str, Any]) -> dict:
    """One row of the DPO dataset (TRL's conversational preference format)."""
    return {
        "id": pair["id"],
        "turn_id": pair["turn_id"],
        "role": pair["role"],
        "prompt": [{"role": m["role"], "content": m["content"]} for m in pair["prompt"]],
        "chosen": [{"role": "assistant", "content": pair["chosen"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected"]}],
        "gold_strategy": pair["gold_strategy"],
        "sampled_strategy": pair["sampled_strategy"],
    }


def _features():
    from datasets import Features, List, Value

    msg = List({"role": Value("string"), "content": Value("string")})
    return Features(
        {
            "id": Value("string"),
            "turn_id": Value("string"),
            "role": Value("string"),
            "prompt": msg,
            "chosen": msg,
            "rejected": msg,
            "gold_strategy": Value("string"),
            "sampled_strategy": Value("string"),
        }
    )


def save_dataset(pairs: Sequence[Mapping[str, Any]], path: Path) -> None:
    from datasets import Dataset

    features = _features()
    rows = [dpo_row(p) for p in pairs]
    columns = {k: [r[k] for r in rows] for k in features}  # keeps the columns when empty
    # datasets writes no shard at all for an empty dataset unless told to write one.
    Dataset.from_dict(columns, features=features).save_to_disk(
        str(path), num_shards=1 if not rows else None
    )


def _log_wandb(run, stats: dict) -> None:
    import wandb

    flat = {
        "judge/pairs_in": stats["pairs_in"],
        "judge/kept": stats["kept"],
        "judge/kept_ratio": stats["kept_ratio"],
        "judge/mining_parse_errors": stats["mining"]["parse_errors"],
        "judge/unparseable_strategy": stats["mining"]["unparseable_strategy"],
        "judge/judge_parse_errors": stats["judge"]["parse_errors"],
        "judge/judge_request_errors": stats["judge"]["request_errors"],
    }
    for side in ("chosen", "rejected", "rejected_kept"):
        for e, c in stats["errors"][side].items():
            flat[f"judge/errors/{side}/{e}"] = c
    cols = list(STRATEGIES) + [UNPARSEABLE]
    table = wandb.Table(
        columns=["gold_strategy"] + cols,
        data=[[g] + [stats["confusion"][g][c] for c in cols] for g in STRATEGIES],
    )
    run.log({**flat, "judge/confusion": table})
    run.summary.update(flat)


def judge_name(cfg: JudgeConfig, planner_pairs: str, roles: Mapping[str, int]) -> str:
    """Who decided the verdicts: the judge backend, or ``mismatch`` for planner pairs kept
    unjudged (both, joined by ``+``, for a file of several roles)."""
    backend = "offline" if cfg.backend == "offline" else f"openai:{cfg.model}"
    if planner_pairs != "mismatch" or "planner" not in roles:
        return backend
    return MISMATCH if set(roles) == {"planner"} else f"{MISMATCH}+{backend}"


def default_cache_dir(out_dir: str | Path) -> Path:
    """Where the LLM judge's answers are cached: beside the output, shared by all roles."""
    return Path(out_dir).resolve().parent / "judge_cache"


def mismatch_verdict(pair: Mapping[str, Any]) -> dict:
    """The verdict on a planner pair under ``ipm.planner_pairs: mismatch``: kept, not judged
    (mining made it because the sampled strategy is not the gold one)."""
    what = (
        "the sample names no strategy"
        if pair["sampled_strategy"] is None
        else f"sampled {pair['sampled_strategy']}, gold {pair['gold_strategy']}"
    )
    return verdict(pair["id"], MISMATCH, f"kept: mismatch ({what})", keep=True)


def decide(
    pairs: Sequence[Mapping[str, Any]],
    cfg: JudgeConfig,
    planner_pairs: str,
    seed: int,
    out_dir: Path,
    cache_dir: str | Path | None,
    client,
) -> tuple[list, dict | None, Any]:
    """The verdict on every pair, the balancing report (or None) and the LLM client that judged
    (or None). Planner pairs under ``mismatch`` are all kept unjudged; the others are judged (and
    balanced with ``judge.balance``)."""
    unjudged = [planner_pairs == "mismatch" and p["role"] == "planner" for p in pairs]
    judged = [i for i, skip in enumerate(unjudged) if not skip]
    verdicts = [mismatch_verdict(p) if skip else None for p, skip in zip(pairs, unjudged)]
    balanced = None
    if judged:
        subset = [pairs[i] for i in judged]
        if cfg.backend == "openai" and client is None:
            from ..llm_client import LLMClient
            from .judge import PROMPT_VERSION

            cache_dir = cache_dir or default_cache_dir(out_dir)
            client = LLMClient.from_config(cfg, cache_dir, PROMPT_VERSION)
        found = judge_pairs(subset, cfg, cache_dir, client=client)
        if cfg.balance and any(p["role"] in BALANCED_ROLES for p in subset):
            found, balanced = balance(subset, found, seed)
        for i, v in zip(judged, found):
            verdicts[i] = v
    return verdicts, balanced, client if judged else None


def build_prefdial(
    pairs_jsonl: str | Path,
    out_dir: str | Path,
    cfg: JudgeConfig,
    recipe: Recipe | None = None,
    *,
    run=None,
    role: str | None = None,
    cache_dir: str | Path | None = None,
    client=None,
    planner_pairs: str | None = None,
) -> dict:
    """Judge a pairs file and write the IPM-PrefDial output to ``out_dir``; returns the manifest.

    ``planner_pairs`` (default: the recipe's ``ipm.planner_pairs``, else ``judged``): under
    ``mismatch`` every planner pair is kept without judging (:func:`mismatch_verdict`).
    ``role`` (optional) requires every pair to have that role. ``run`` is a W&B run to log the
    statistics to. ``cache_dir`` is where the LLM judge caches its answers (default:
    :func:`default_cache_dir`); ``client`` replaces the LLM client built from ``cfg``.
    """
    t0 = time.time()
    pairs_jsonl, out_dir = Path(pairs_jsonl), Path(out_dir)
    check_output(out_dir, "judge", [pairs_jsonl])
    require_verified(pairs_jsonl.parent)  # a mining output changed or cut since it was written
    pairs = read_pairs(pairs_jsonl, role)
    input_sha = sha256_file(pairs_jsonl)
    if planner_pairs is None:
        planner_pairs = recipe.ipm.planner_pairs if recipe is not None else "judged"
    verdicts, balanced, client = decide(
        pairs, cfg, planner_pairs, recipe.run.seed if recipe else 0, out_dir, cache_dir, client
    )
    counters = client.stats() if client is not None else None
    stats = compute_stats(pairs, verdicts, counters)
    stats["planner_pairs"] = planner_pairs
    if balanced is not None:
        stats["balance"] = balanced
    kept = [p for p, v in zip(pairs, verdicts) if v["keep"]]
    manifest = {
        "stage": "judge",
        "esc_dist_version": __version__,
        "role": role or (pairs[0]["role"] if pairs and len(stats["roles"]) == 1 else None),
        "inputs": {"pairs": {"path": str(pairs_jsonl), "sha256": input_sha}},
        "judge": redact(asdict(cfg)),
        "judge_name": judge_name(cfg, planner_pairs, stats["roles"]),
        "judge_version": judge_version(cfg),
        "planner_pairs": planner_pairs,
        "counts": {
            "pairs_in": stats["pairs_in"],
            "kept": stats["kept"],
            "dropped": stats["dropped"],
            "kept_ratio": stats["kept_ratio"],
        },
        # judge requests that failed for good (at most judge.max_failed_share of them)
        "request_failures": stats["judge"]["request_errors"],
    }
    if recipe is not None:
        manifest["recipe"] = redact(recipe.to_dict())
    with staged_dir(out_dir, "judge", [pairs_jsonl]) as tmp:
        write_jsonl(tmp / "judged.jsonl", ({**p, "verdict": v} for p, v in zip(pairs, verdicts)))
        write_jsonl(tmp / "pairs.jsonl", kept)
        save_dataset(kept, tmp / "dataset")
        atomic_write_json(tmp / "stats.json", stats)
        manifest["seconds"] = round(time.time() - t0, 2)
        manifest["outputs"] = directory_outputs(tmp)
        write_manifest(tmp, manifest)
        mark_completed(tmp)
    if run is not None:
        _log_wandb(run, stats)
    if balanced is not None:
        log.info(
            "balanced per chosen and rejected strategy (caps %s): %d of %d kept pairs stay",
            balanced["caps"],
            balanced["kept_after"],
            balanced["kept_before"],
        )
    log.info(
        "judged %d pairs from %s: kept %d (%.1f%%) -> %s",
        stats["pairs_in"],
        pairs_jsonl,
        stats["kept"],
        100 * stats["kept_ratio"],
        out_dir,
    )
    return manifest
