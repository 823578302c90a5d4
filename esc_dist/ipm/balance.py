"""Balancing the kept pairs per chosen and per rejected strategy (``judge.balance``).

The offline rules fault some strategies far more often than others (a sampled *Others* or
*Providing Suggestions* reply trips them; a *Reflection of feelings* rarely does), so the kept
planner pairs reject a few strategies over and over: DPO then learns "not those" and moves the
probability mass to whatever the model already ranks next. With ``judge.balance`` the kept pairs
of the roles that choose a strategy (planner, vanilla) are cut so that no chosen (gold) strategy
and no rejected (sampled) strategy holds more pairs than the median of its side's non-empty
groups; unparseable samples form a group of their own. Pairs are considered in an order fixed by
a hash of ``run.seed`` and the pair's id (independent of the file order), and a pair is kept
while both its groups are under their caps. Generator pairs share the gold strategy on both
sides and are left as they are.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections import Counter
from typing import Any, Mapping, Sequence

from ..constants import BALANCED_ROLES, UNPARSEABLE


def _sides(pair: Mapping[str, Any]) -> tuple[str, str]:
    return pair["gold_strategy"], pair["sampled_strategy"] or UNPARSEABLE


def _cap(counts: Counter) -> int:
    return math.ceil(statistics.median(counts.values())) if counts else 0


def balance(
    pairs: Sequence[Mapping[str, Any]], verdicts: Sequence[Mapping[str, Any]], seed: int
) -> tuple[list[dict], dict]:
    """The verdicts with the kept pairs over a cap turned into drops (reason ``balance``), and
    what was done: the caps and the counts per side before and after."""
    out = [dict(v) for v in verdicts]
    kept = [
        i
        for i, (p, v) in enumerate(zip(pairs, verdicts))
        if v["keep"] and p["role"] in BALANCED_ROLES
    ]
    chosen = Counter(_sides(pairs[i])[0] for i in kept)
    rejected = Counter(_sides(pairs[i])[1] for i in kept)
    caps = {"chosen": _cap(chosen), "rejected": _cap(rejected)}

    def order(i: int) -> str:
        return hashlib.sha256(f"{seed}:{pairs[i]['id']}".encode()).hexdigest()

    taken_c: Counter = Counter()
    taken_r: Counter = Counter()
    for i in sorted(kept, key=order):
        c, r = _sides(pairs[i])
        if taken_c[c] < caps["chosen"] and taken_r[r] < caps["rejected"]:
            taken_c[c] += 1
            taken_r[r] += 1
            continue
        side, name = ("chosen", c) if taken_c[c] >= caps["chosen"] else ("rejected", r)
        out[i].update(
            keep=False,
            reason=f"balance: {side} strategy {name} is at its cap of {caps[side]} pairs",
        )
    report = {
        "roles": list(BALANCED_ROLES),
        "caps": caps,
        "kept_before": len(kept),
        "kept_after": sum(taken_c.values()),
        "chosen_before": dict(sorted(chosen.items())),
        "chosen_after": dict(sorted(taken_c.items())),
        "rejected_before": dict(sorted(rejected.items())),
        "rejected_after": dict(sorted(taken_r.items())),
    }
    return out, report
