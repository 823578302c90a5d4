"""The offline IPM judge: verdicts on mined pairs from the deterministic rules of
:mod:`esc_dist.psych.rules` (documented in ``docs/judge.md``).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..psych.rules import Context, Finding, errors_of, reply_findings, strategy_findings
from ..strategies import normalize_strategy, parse_tagged
from .verdicts import explain, settled, verdict


def _details(findings: list[Finding]) -> str:
    return "; ".join(f"{f.rule} {f.detail}" for f in findings)


def _reply_texts(pair: Mapping[str, Any]) -> tuple[str, str]:
    """(chosen reply, rejected reply) of a generator or vanilla pair, without strategy tags."""
    if pair["role"] == "vanilla":
        return parse_tagged(pair["chosen"])[1], pair.get("sampled_reply") or parse_tagged(
            pair["rejected"]
        )[1]
    return pair["chosen"], pair.get("sampled_reply") or pair["rejected"]


def judge_pair_offline(pair: Mapping[str, Any], keep_unparseable: bool = True) -> dict:
    """The offline verdict on one mined pair."""
    judge = "offline"
    done = settled(pair, keep_unparseable, judge)
    if done:
        return done
    ctx = Context.of(pair["history"])
    if pair["role"] == "planner":
        chosen = strategy_findings((), normalize_strategy(pair["chosen"]) or pair["chosen"], ctx)
        rejected = strategy_findings((), normalize_strategy(pair["sampled_strategy"]), ctx)
    else:
        c_text, r_text = _reply_texts(pair)
        chosen = reply_findings((), c_text, ctx)
        rejected = reply_findings((), r_text, ctx)
    c_errors, r_errors = errors_of(chosen), errors_of(rejected)
    return verdict(
        pair["id"],
        judge,
        explain(c_errors, r_errors, _details(chosen), _details(rejected)),
        c_errors,
        r_errors,
    )
