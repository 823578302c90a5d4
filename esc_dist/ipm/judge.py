"""The IPM judge: keep a mined pair only when the chosen side is free of psychological errors and
the rejected side shows at least one.

:func:`judge_pairs` is the one entry point; it dispatches to the ``offline`` backend (the
default; deterministic rules, :mod:`esc_dist.ipm.rules` over :mod:`esc_dist.psych.rules`) or the
``openai`` backend (an LLM behind any OpenAI-compatible endpoint, :mod:`esc_dist.ipm.llm_judge`).
Both build their verdicts and reasons here. The errors, the rules, the prompt and the versions
are documented in ``docs/judge.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import JudgeConfig
from ..constants import ROLES
from ..errors import ConfigError, DataError
from ..psych.names import EARLY_SHIFT, LACK_EMPATHY, RULE_ERRORS, TEMPLATE  # noqa: F401
from ..psych.rules import RULES_VERSION
from ..strategies import normalize_strategy

# The judge's three errors (of the five in esc_dist.psych.names), in the order verdicts list them;
# they are re-exported with their names, through which the judge's callers name errors.
ERRORS: tuple[str, ...] = RULE_ERRORS

# Both versions are part of the pipeline's stage keys: changing one makes the judge stages stale.
PROMPT_VERSION = "ipm-judge-v1"
# The version of the offline rules (bumped in esc_dist.psych.rules when a rule changes): outputs
# judged by other rules are then judged again.
OFFLINE_RULES_VERSION = RULES_VERSION


def verdict(
    pair_id: str,
    judge: str,
    reason: str,
    chosen: Sequence[str] = (),
    rejected: Sequence[str] = (),
    keep: bool | None = None,
) -> dict:
    """A verdict record. ``keep`` defaults to the judge's rule: the chosen side shows no error
    and the rejected side at least one; without errors given, the pair is dropped."""
    chosen, rejected = list(chosen), list(rejected)
    if keep is None:
        keep = not chosen and bool(rejected)
    return {
        "id": pair_id,
        "chosen_errors": chosen,
        "rejected_errors": rejected,
        "keep": keep,
        "reason": reason,
        "judge": judge,
    }


def explain(
    chosen: Sequence[str], rejected: Sequence[str], chosen_why: str = "", rejected_why: str = ""
) -> str:
    """The reason of a judged pair from the errors of each side, with the rules that found them
    (``*_why``) where the backend knows them."""

    def shows(side: str, errors: Sequence[str], why: str) -> str:
        return f"{side} shows {', '.join(errors)}" + (f" ({why})" if why else "")

    if chosen:
        return f"dropped: {shows('chosen', chosen, chosen_why)}"
    if not rejected:
        return "dropped: rejected shows no error"
    return f"kept: {shows('rejected', rejected, rejected_why)}"


def settled(pair: Mapping[str, Any], keep_unparseable: bool, judge: str) -> dict | None:
    """The verdict on a pair whose rejected side cannot be judged, or None: a planner sample that
    is not a strategy name (kept when ``keep_unparseable``), or a side identical to the other."""
    if pair["role"] == "planner" and normalize_strategy(pair.get("sampled_strategy")) is None:
        if keep_unparseable:
            return verdict(
                pair["id"],
                judge,
                "kept: unparseable_sample (the sample is not a strategy name)",
                keep=True,
            )
        return verdict(pair["id"], judge, "unparseable_sample")
    if " ".join(str(pair["chosen"]).split()) == " ".join(str(pair["rejected"]).split()):
        return verdict(pair["id"], judge, "identical")
    return None


def judge_version(cfg: JudgeConfig) -> str:
    """What the verdicts depend on besides the pairs: the rules, or the prompt and model."""
    if cfg.backend == "offline":
        return OFFLINE_RULES_VERSION
    return f"{PROMPT_VERSION}:{cfg.model}"


def judge_pairs(
    pairs: Sequence[Mapping[str, Any]],
    cfg: JudgeConfig,
    cache_dir: str | Path | None = None,
    *,
    client=None,
) -> list[dict]:
    """One verdict per pair, in order, from the backend ``cfg.backend``.

    ``cache_dir`` holds the LLM answers of the ``openai`` backend (unused offline); ``client``
    replaces the :class:`esc_dist.llm_client.LLMClient` built from ``cfg`` (tests, reuse).
    """
    for p in pairs:
        if p.get("role") not in ROLES:
            raise DataError(
                None,
                f"pair {p.get('id')!r}: unknown role {p.get('role')!r} "
                f"(expected one of {', '.join(ROLES)})",
            )
    # The backends build on this module, so they are imported when used.
    if cfg.backend == "offline":
        from .rules import judge_pair_offline

        return [judge_pair_offline(p, cfg.keep_unparseable) for p in pairs]
    if cfg.backend == "openai":
        from .llm_judge import judge_openai

        return judge_openai(pairs, cfg, cache_dir, client)
    raise ConfigError(f"unknown judge backend {cfg.backend!r} (expected offline or openai)")
