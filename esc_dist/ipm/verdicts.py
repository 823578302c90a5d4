"""What both judge backends build their verdicts from: the judge's errors, its versions, the
verdict record, the reason of a judged pair and the pairs settled without judging
(:mod:`esc_dist.ipm.judge` is the front door; :mod:`.rules` and :mod:`.llm_judge` the backends)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..psych.names import RULE_ERRORS
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
