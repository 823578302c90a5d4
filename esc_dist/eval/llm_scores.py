"""LLM scores of generated replies: fluency, professionalism, empathy and helpfulness on 0-5.

Each predicted reply is rated by the judge model of the recipe's ``judge`` section (any
OpenAI-compatible endpoint, through :mod:`esc_dist.llm_client`), given the dialogue so far when a
history text is supplied for its id. Answers are cached on disk, so rescoring the same predictions
costs no requests. Malformed answers are counted, not fatal; requests that failed for good fail
the scoring when they are more than ``judge.max_failed_share`` of all.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..config import JudgeConfig
from ..log import get_logger

log = get_logger(__name__)

DIMENSIONS: tuple[str, ...] = ("fluency", "professionalism", "empathy", "helpfulness")
PROMPT_VERSION = "reply-scores-v1"

SCORE_SYSTEM = (
    "You rate one reply of a supporter in an emotional-support conversation. Give each "
    "criterion a score from 0 (very poor) to 5 (excellent):\n"
    "- fluency: the reply is well-formed, natural and easy to read;\n"
    "- professionalism: it behaves as a skilled counsellor would -- respectful, appropriate, no "
    "harmful or careless statements;\n"
    "- empathy: it recognises and responds to the seeker's feelings and situation;\n"
    "- helpfulness: it moves the conversation forward in a way that helps the seeker.\n"
    "Answer with one JSON object and nothing else, exactly: {\"fluency\": n, "
    "\"professionalism\": n, \"empathy\": n, \"helpfulness\": n}, each n a number from 0 to 5."
)


def _get(record: Any, key: str) -> Any:
    if isinstance(record, Mapping):
        return record.get(key)
    return getattr(record, key, None)


def score_messages(history: str | None, reply: str) -> list[dict]:
    """The chat messages that ask for the scores of one reply."""
    context = history.strip() if history and history.strip() else \
        "(not available: rate the reply on its own)"
    user = (f"Conversation so far:\n{context}\n\nThe supporter's reply to rate:\n{reply}\n\n"
            "Answer with the JSON object only.")
    return [{"role": "system", "content": SCORE_SYSTEM}, {"role": "user", "content": user}]


def parse_scores(data: Mapping[str, Any]) -> dict[str, float]:
    """The four scores from the model's JSON; raises ValueError when any is missing or invalid."""
    if set(data) != set(DIMENSIONS):
        raise ValueError(f"expected keys {', '.join(DIMENSIONS)}, got {sorted(data)}")
    out = {}
    for k in DIMENSIONS:
        v = data[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or not 0 <= v <= 5:
            raise ValueError(f"{k!r} must be a number from 0 to 5, got {v!r}")
        out[k] = float(v)
    return out


def score_predictions(records: Iterable[Any], cfg: JudgeConfig, cache_dir: str | Path | None,
                      histories: Mapping[str, str] | None = None, *, client=None,
                      keep_per_item: bool = False) -> dict:
    """Score each record's ``pred_reply`` and summarise.

    ``records`` are prediction records (mappings or objects with ``id`` and ``pred_reply``);
    ``histories`` maps a record id to the dialogue text before the reply (optional; records
    without one are rated on the reply alone). Returns ``{"model", "n", "scored",
    "parse_failures", "request_failures", "means": {dim: mean or None}, "counts": {dim: n},
    "client": counters}`` and, with ``keep_per_item``, ``"items": {id: scores or None}``.
    """
    from ..llm_client import LLMClient, check_failures

    histories = histories or {}
    records = list(records)
    if client is None:
        client = LLMClient.from_config(cfg, cache_dir, PROMPT_VERSION)
    ids = [str(_get(r, "id")) for r in records]
    prompts = [score_messages(histories.get(i), str(_get(r, "pred_reply") or ""))
               for i, r in zip(ids, records)]
    results = client.map_json(prompts)
    check_failures(results, cfg.max_failed_share, "LLM scores")
    sums = dict.fromkeys(DIMENSIONS, 0.0)
    counts = dict.fromkeys(DIMENSIONS, 0)
    items: dict[str, dict | None] = {}
    parse_failures = request_failures = 0
    for rid, res in zip(ids, results):
        scores = None
        if res.ok:
            try:
                scores = parse_scores(res.data)
            except ValueError as e:
                log.debug("scores for %s are malformed: %s", rid, e)
                parse_failures += 1
        elif res.parse_failed:
            parse_failures += 1
        else:
            request_failures += 1
        items[rid] = scores
        if scores:
            for k, v in scores.items():
                sums[k] += v
                counts[k] += 1
    scored = sum(1 for s in items.values() if s)
    if parse_failures or request_failures:
        log.warning("LLM scores: %d malformed answer(s), %d failed request(s) out of %d",
                    parse_failures, request_failures, len(records))
    out = {
        "model": cfg.model,
        "n": len(records),
        "scored": scored,
        "parse_failures": parse_failures,
        "request_failures": request_failures,
        "means": {k: (round(sums[k] / counts[k], 4) if counts[k] else None) for k in DIMENSIONS},
        "counts": counts,
        "client": client.stats(),
    }
    if keep_per_item:
        out["items"] = items
    return out
