"""Strategy preferences (Bradley–Terry) and the preference bias B of Kang et al., ACL 2024.

Source of the definition
------------------------
Kang et al., "Can Large Language Models be Good Emotional Supporter? Mitigating Preference Bias on
Emotional Support Conversation", ACL 2024 (aclanthology.org/2024.acl-long.813). Their released
scorer is ``metrics.py`` in github.com/1eastar/EmotionalSupport (functions ``make_bt_table``,
``estimate``, ``strg_preference``, ``strg_evaluation``); DecoupledESC (Zhang et al., Findings of
EMNLP 2025) scores B with the same code, ``src/evaluation/bias.py`` in
github.com/Zc0812/DecoupledESC. (The paper text itself was not available to us; the released
code is what we follow.) It does:

- comparison counts ``w[i, j]`` = number of turns where strategy *i* was predicted while the gold
  strategy was *j* ("i beat j"), i.e. the transpose of the gold-rows × predicted-columns confusion
  matrix; the diagonal (correct predictions) does not enter (the sums skip ``j == i``);
- starting from ``p = 1``, the Bradley–Terry update of Newman (JMLR 2023, "Efficient computation of
  rankings from pairwise comparisons")::

      p_i <- sum_{j != i} w[i, j] * p_j / (p_i + p_j)  /  sum_{j != i} w[j, i] / (p_i + p_j)

  applied to one strategy after another with the new values used at once (Gauss–Seidel), followed
  by division by the geometric mean of the positive preferences; 20 sweeps, fixed;
- preferences scaled to sum to 8; B = ``np.std`` of the 8 preferences, i.e. the *population*
  standard deviation (ddof = 0).

What we do, and where we differ
-------------------------------
We use the same counts, the same update, the same normalisation and the population standard
deviation, with these differences:

1. We iterate to convergence (largest change of any log-preference below ``tol``) with a
   ``max_iter`` guard, instead of a fixed 20 sweeps that may stop short of the maximum-likelihood
   estimate. Both have the same fixed point. Leaving the diagonal out changes nothing at the fixed
   point either: a self-comparison adds ``w_ii / 2`` to both sides of the stationarity equation.
2. The released code divides 0 by 0 (and returns NaN) whenever the maximum-likelihood estimate
   does not exist: for perfect predictions, a strategy that never takes part in any confusion, or
   a predictor that always answers the same strategy. We define those cases as follows.

   - *Unobserved* strategies (no off-diagonal count in their row or column — e.g. never gold and
     never predicted, or always predicted exactly right) carry no evidence; their preference is the
     neutral 1.0. Perfect predictions therefore give all preferences 1.0 and B = 0.
   - Otherwise, the observed strategies split into strongly connected components of the "beats"
     graph (edge i -> j when ``w[i, j] > 0``). If there is one component the estimate exists and is
     unique. If not, the likelihood's supremum is approached only as the preferences of every
     component that is beaten by an outside strategy, while never beating back, go to 0 relative
     to the components that no outside strategy ever beats ("top" components); we return that
     limit: 0 for the dominated strategies, and within each top component its own Bradley–Terry
     estimate. The scale *between* several top components is not identified by the data; we give
     each the same mean.
   - The observed strategies are scaled to average 1 (so all 8 sum to 8, as in the original).

   A constant predictor (always strategy k, every strategy occurring as gold) thus gives
   preference 8 to k and 0 to the others: B = sqrt(7) ≈ 2.6458, the largest B possible.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from ..strategies import STRATEGIES

log = logging.getLogger(__name__)

DEFAULT_TOL = 1e-12
DEFAULT_MAX_ITER = 10_000


@dataclass
class PreferenceFit:
    """The fitted preferences (label order of the input, summing to the number of labels) and B."""

    labels: list[str]
    preferences: list[float]
    bias: float  # B: population standard deviation of the preferences
    converged: bool
    iterations: int  # sweeps of the largest component fit
    mle_exists: bool  # one strongly connected component (trivially true when none is observed)
    unobserved: list[str] = field(default_factory=list)  # preference 1.0, no evidence
    dominated: list[str] = field(default_factory=list)  # preference 0 (limit of the MLE)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preferences"] = dict(zip(self.labels, self.preferences))
        del d["labels"]
        return d


def comparison_counts(confusion: np.ndarray) -> np.ndarray:
    """``w[i, j]`` = times i was predicted for gold j, diagonal zeroed, of a gold × pred matrix."""
    w = np.array(confusion, dtype=float).T.copy()
    np.fill_diagonal(w, 0.0)
    return w


def bradley_terry(
    wins: np.ndarray, tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER
) -> tuple[np.ndarray, bool, int]:
    """Bradley–Terry strengths of a strongly connected win matrix, geometric mean 1.

    ``wins[i, j]`` is how often i beat j (the diagonal is ignored). Returns the strengths, whether
    the largest change of a log-strength in the last sweep was below ``tol``, and the sweeps done.
    """
    w = np.array(wins, dtype=float)
    np.fill_diagonal(w, 0.0)
    k = len(w)
    p = np.ones(k)
    if k == 1:
        return p, True, 0
    for sweep in range(1, max_iter + 1):
        old = p.copy()
        for i in range(k):
            pair = p[i] + p
            p[i] = (w[i] * p / pair).sum() / (w[:, i] / pair).sum()
        p /= np.exp(np.log(p).mean())
        if np.max(np.abs(np.log(p) - np.log(old))) < tol:
            return p, True, sweep
    return p, False, max_iter


def _components(beats: np.ndarray) -> list[list[int]]:
    """Strongly connected components of a small directed graph (boolean adjacency matrix)."""
    n = len(beats)
    reach = beats.copy() | np.eye(n, dtype=bool)
    for m in range(n):  # Warshall's transitive closure
        reach |= reach[:, [m]] & reach[[m], :]
    mutual = reach & reach.T
    comps, seen = [], set()
    for i in range(n):
        if i not in seen:
            comp = [j for j in range(n) if mutual[i, j]]
            seen.update(comp)
            comps.append(comp)
    return comps


def fit_preferences(
    confusion: np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[str] | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> PreferenceFit:
    """Preferences and preference bias B from a gold-rows × predicted-columns count matrix.

    See the module docstring for the definition and its source. ``labels`` default to the 8
    ESConv strategies (for an 8×8 matrix) or the row numbers.
    """
    c = np.asarray(confusion, dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(f"the confusion matrix must be square, got shape {c.shape}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("the confusion matrix must hold finite, non-negative counts")
    n = len(c)
    if labels is None:
        labels = list(STRATEGIES) if n == len(STRATEGIES) else [str(i) for i in range(n)]
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for a {n}×{n} matrix")

    w = comparison_counts(c)
    observed = [i for i in range(n) if w[i].sum() + w[:, i].sum() > 0]
    prefs = np.ones(n)
    converged, iterations, dominated = True, 0, []
    comps = [[observed[j] for j in comp] for comp in _components(w[np.ix_(observed, observed)] > 0)]
    for comp in comps:
        outside = [i for i in observed if i not in comp]
        if w[np.ix_(outside, comp)].sum() > 0:  # beaten from outside, never beating back
            prefs[comp] = 0.0
            dominated.extend(comp)
            continue
        strengths, ok, sweeps = bradley_terry(w[np.ix_(comp, comp)], tol, max_iter)
        prefs[comp] = strengths / strengths.mean()
        converged &= ok
        iterations = max(iterations, sweeps)
    if observed:
        prefs[observed] *= len(observed) / prefs[observed].sum()
    if not converged:
        log.warning(
            "Bradley-Terry fit stopped after %d sweeps without converging (tol %g)", max_iter, tol
        )
    return PreferenceFit(
        labels=labels,
        preferences=[float(x) for x in prefs],
        bias=float(np.std(prefs)),
        converged=bool(converged),
        iterations=iterations,
        mle_exists=len(comps) <= 1,
        unobserved=[labels[i] for i in range(n) if i not in observed],
        dominated=[labels[i] for i in sorted(dominated)],
    )


KANG_SWEEPS = 20


def kang_preferences(
    confusion: np.ndarray | Sequence[Sequence[float]], sweeps: int = KANG_SWEEPS
) -> tuple[list[float], float | None]:
    """Preferences and B exactly as the released scorers compute them (``strg_preference`` of
    Kang et al. and of DecoupledESC's ``bias.py``): from p = 1, ``sweeps`` Gauss–Seidel sweeps of
    the update in the module docstring (each strategy updated in turn with the values already
    updated), each sweep followed by division by the geometric mean of the positive preferences;
    then scaled to sum to the number of strategies; B = population standard deviation.

    No limits are taken: where the released code divides 0 by 0 (a strategy that is never
    beaten, or never beats and is never beaten) its preferences become NaN and so does B; here
    such preferences are returned as NaN and B as None ("undefined"), never a number that code
    would not print.
    """
    w = comparison_counts(confusion)
    k = len(w)
    # plain loops over numpy scalars, in the released code's order of operations, so that the
    # rounding is the same and 0/0 gives NaN (numpy) rather than an exception (Python floats)
    p = [np.float64(1.0)] * k
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(sweeps):
            for i in range(k):
                beats = beaten = np.float64(0.0)
                for j in range(k):
                    if j != i:
                        beats += w[i, j] * (p[j] / (p[i] + p[j]))
                        beaten += w[j, i] * (1 / (p[i] + p[j]))
                p[i] = beats / beaten
            product, positive = np.float64(1.0), 0
            for x in p:
                if x > 0:
                    product *= x
                    positive += 1
            p = [x / product ** (1 / positive) if positive else np.float64(np.nan) for x in p]
        total = sum(p)
        p = [x * k / total for x in p]
        bias = float(np.std(p))
    return [float(x) for x in p], (bias if np.isfinite(bias) else None)
