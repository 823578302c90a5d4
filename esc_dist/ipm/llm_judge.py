"""The LLM judge: the same three errors asked of a model behind any OpenAI-compatible endpoint.

The prompt, the answer format and how answers become verdicts are documented in
``docs/judge.md`` (section "The LLM backend").
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import JudgeConfig
from ..data.esconv import render_history
from ..log import get_logger
from ..strategies import DESCRIPTIONS, normalize_strategy
from .verdicts import ERRORS, PROMPT_VERSION, explain, settled, verdict

log = get_logger(__name__)

JUDGE_SYSTEM = (
    "You are a clinical supervisor reviewing an emotional-support conversation between a "
    "help-seeker and a supporter. You will see the conversation so far and two candidate next "
    "moves of the supporter, A and B. For each candidate, list which of these three errors it "
    "makes, judged as the supporter's next move in this conversation:\n"
    '- "Lack Empathy": it passes over, minimises or ignores the feelings the seeker has '
    "expressed.\n"
    '- "Early Emotion Shift": it moves to advice, solutions or information before the '
    "seeker's feelings have been acknowledged or explored.\n"
    '- "Template Response": it is generic and unpersonalised -- it could be said to anyone, '
    "or it repeats what the supporter already said.\n"
    "A candidate may make none, one or several errors. Judge each candidate on its own; do not "
    "assume either one is better. Answer with one JSON object and nothing else, exactly: "
    '{"A_errors": [...], "B_errors": [...]} using only the error names above.'
)


def _candidate(pair: Mapping[str, Any], side: str) -> str:
    if pair["role"] == "planner":
        s = normalize_strategy(pair[side] if side == "chosen" else pair["sampled_strategy"])
        return f'use the strategy "{s}" ({DESCRIPTIONS.get(s, "")})'
    return pair[side]


def _a_is_chosen(pair_id: str) -> bool:
    """Which label the chosen side gets, fixed per pair id, so that position bias averages out."""
    return hashlib.sha256(pair_id.encode("utf-8")).digest()[0] % 2 == 0


def judge_messages(pair: Mapping[str, Any]) -> list[dict]:
    """The chat messages that ask the LLM judge about one pair."""
    kind = (
        "the supporter's next strategy"
        if pair["role"] == "planner"
        else "the supporter's next reply"
    )
    a_side, b_side = ("chosen", "rejected") if _a_is_chosen(pair["id"]) else ("rejected", "chosen")
    user = (
        f"Conversation so far:\n{render_history(pair['history'])}\n\n"
        f"Two candidates for {kind}:\n"
        f"A: {_candidate(pair, a_side)}\n"
        f"B: {_candidate(pair, b_side)}\n\n"
        "Which errors does each candidate make? Answer with the JSON object only."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_ERROR_KEYS = {e.lower(): e for e in ERRORS}


def _error_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"{key!r} is not a list")
    out = set()
    for v in value:
        name = _ERROR_KEYS.get(" ".join(str(v).split()).lower()) if isinstance(v, str) else None
        if name is None:
            raise ValueError(f"{key!r} holds an unknown error {v!r}")
        out.add(name)
    return [e for e in ERRORS if e in out]


def parse_judge_answer(data: Mapping[str, Any], pair_id: str) -> tuple[list[str], list[str]]:
    """(chosen errors, rejected errors) from the judge's JSON; raises ValueError when malformed."""
    if set(data) != {"A_errors", "B_errors"}:
        raise ValueError(f"expected keys A_errors and B_errors, got {sorted(data)}")
    a, b = _error_list(data["A_errors"], "A_errors"), _error_list(data["B_errors"], "B_errors")
    return (a, b) if _a_is_chosen(pair_id) else (b, a)


def judge_openai(
    pairs: Sequence[Mapping[str, Any]], cfg: JudgeConfig, cache_dir: str | Path | None, client=None
) -> list[dict]:
    """One verdict per pair, in order, from the LLM judge (``client`` replaces the
    :class:`esc_dist.llm_client.LLMClient` built from ``cfg``)."""
    from ..llm_client import LLMClient, check_failures

    name = f"openai:{cfg.model}"
    if client is None:
        client = LLMClient.from_config(cfg, cache_dir, PROMPT_VERSION)
    verdicts: list[dict | None] = [None] * len(pairs)
    todo = []
    for i, p in enumerate(pairs):
        verdicts[i] = settled(p, cfg.keep_unparseable, name)
        if verdicts[i] is None:
            todo.append(i)
    results = client.map_json([judge_messages(pairs[i]) for i in todo])
    check_failures(results, cfg.max_failed_share, "judge")
    for i, res in zip(todo, results):
        pid = pairs[i]["id"]
        if not res.ok:
            reason = "judge_parse_error" if res.parse_failed else "judge_request_error"
            verdicts[i] = verdict(pid, name, reason)
            continue
        try:
            chosen, rejected = parse_judge_answer(res.data, pid)
        except ValueError as e:
            client.count("parse_failures")
            log.debug("judge answer for %s is malformed: %s", pid, e)
            verdicts[i] = verdict(pid, name, "judge_parse_error")
            continue
        verdicts[i] = verdict(pid, name, explain(chosen, rejected), chosen, rejected)
    counters = client.stats()
    if counters["request_failures"]:
        log.warning(
            "judge: %d request(s) failed for good (judge.max_failed_share=%g allows "
            "it); their pairs are dropped as judge_request_error (a rerun retries them, "
            "answers already received are cached)",
            counters["request_failures"],
            cfg.max_failed_share,
        )
    return verdicts  # type: ignore[return-value]
