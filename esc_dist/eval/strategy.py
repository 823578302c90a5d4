"""Strategy-prediction metrics: accuracy, macro-F1 (Q), weighted-F1, per-strategy P/R/F1, confusion.

A prediction whose strategy could not be parsed (``None``) is never dropped silently. Every metric
is computed two ways, each under its own key:

- ``as_others``: an unparseable prediction counts as the strategy "Others" (the mapping inside
  ``strg_evaluation`` of the released scorers of Kang et al. 2024 and DecoupledESC);
- ``excluded``: unparseable turns are left out (what DecoupledESC's ``evaluate_strategy`` does
  before scoring, reporting the error ratio; Kang et al.'s refuses to score such a file); the
  number left out is reported next to it.

B is fitted twice: ``B`` to convergence (:func:`.preference.fit_preferences`) and ``B_kang`` the
way the released scorers do it (:func:`.preference.kang_preferences`: 20 fixed sweeps; None where
that code gives NaN).

F1 scores come from scikit-learn. Q (macro-F1) and weighted-F1 average over the strategies that
occur in the gold or predicted labels (scikit-learn's default label set, as in the released
scorers); a strategy predicted but never gold contributes an F1 of 0 (``zero_division=0``).
Fractions are in [0, 1].
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
from sklearn.metrics import f1_score, precision_recall_fscore_support

from ..strategies import STRATEGIES
from .preference import fit_preferences, kang_preferences

OTHERS = "Others"


def confusion_counts(gold: Sequence[str], pred: Sequence[str]) -> np.ndarray:
    """8×8 integer counts: row = gold strategy, column = predicted strategy, in STRATEGIES order."""
    index = {s: i for i, s in enumerate(STRATEGIES)}
    m = np.zeros((len(STRATEGIES), len(STRATEGIES)), dtype=np.int64)
    for g, p in zip(gold, pred, strict=True):
        m[index[g], index[p]] += 1
    return m


def _scores(gold: Sequence[str], pred: Sequence[str]) -> dict | None:
    """Metrics of one labelled set (every prediction a strategy); None when it is empty."""
    if not gold:
        return None
    g, p = np.asarray(gold, dtype=object), np.asarray(pred, dtype=object)
    prec, rec, f1, support = precision_recall_fscore_support(
        g, p, labels=list(STRATEGIES), average=None, zero_division=0
    )
    conf = confusion_counts(gold, pred)
    predicted = conf.sum(axis=0)
    fit = fit_preferences(conf)
    kang, kang_bias = kang_preferences(conf)
    per = {
        s: {
            "support": int(support[i]),
            "predicted": int(predicted[i]),
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "preference": fit.preferences[i],
            "preference_kang": kang[i] if np.isfinite(kang[i]) else None,
        }
        for i, s in enumerate(STRATEGIES)
    }
    return {
        "n": len(gold),
        "accuracy": float(np.mean(g == p)),
        "Q": float(f1_score(g, p, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(g, p, average="weighted", zero_division=0)),
        "B": fit.bias,
        "B_kang": kang_bias,
        "per_strategy": per,
        "confusion": conf.tolist(),
        "preference_fit": fit.to_dict(),
    }


def strategy_metrics(gold: Sequence[str], pred: Sequence[str | None]) -> dict:
    """Strategy metrics of paired gold/predicted labels; ``None`` predictions are unparseable.

    Returns ``{"n_turns", "unparseable", "unparseable_by_gold", "as_others": {...},
    "excluded": {...} or None}``, each variant holding n, accuracy, Q, weighted_f1, B,
    per_strategy (support, predicted, precision, recall, f1, preference), confusion (gold rows ×
    predicted columns, STRATEGIES order) and preference_fit (see :mod:`.preference`).
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    bad = [s for s in gold if s not in STRATEGIES] + [
        s for s in pred if s is not None and s not in STRATEGIES
    ]
    if bad:
        raise ValueError(f"not one of the 8 strategies: {bad[0]!r}")
    unparseable = Counter(g for g, p in zip(gold, pred) if p is None)
    kept = [(g, p) for g, p in zip(gold, pred) if p is not None]
    return {
        "n_turns": len(gold),
        "unparseable": sum(unparseable.values()),
        "unparseable_by_gold": {s: unparseable.get(s, 0) for s in STRATEGIES},
        "as_others": _scores(list(gold), [OTHERS if p is None else p for p in pred]),
        "excluded": _scores([g for g, _ in kept], [p for _, p in kept]),
    }
