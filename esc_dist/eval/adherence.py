"""Strategy adherence: does a generated reply realise the strategy it was asked for?

A reply -> strategy classifier is trained on the gold supporter replies of the prepared data's
train split (TF-IDF of word unigrams and bigrams, lower-cased, sublinear term frequency; a
multinomial logistic regression). It is measured on the gold replies of the evaluation split
(gold reply -> gold strategy: accuracy and macro-F1), which says how far its labels can be
trusted: adherence is only as good as the classifier, and its accuracy on gold replies is the
ceiling a perfectly adherent generator would reach.

:func:`adherence` then labels every predicted reply and compares the label with the strategy the
reply was meant to realise (see :func:`intended_strategy`).

Choices (all fixed, so the same data gives the same result on every run):

* ``class_weight="balanced"``: the classes are skewed (in the DecoupledESC train split Question
  is 21% of the replies, Restatement or Paraphrasing 6%); adherence is read per intended
  strategy, and an unweighted model pulls rare strategies towards the frequent ones, so a reply
  adhering to a rare strategy would look non-adherent just by the prior. Measured on that
  split's test replies: macro-F1 0.475 balanced vs 0.452 unweighted, accuracy 0.522 vs 0.523
  (the majority class, Question, is 0.204 of them).
* ``solver="saga"``, ``random_state=0``, ``max_iter=1000``, ``tol=1e-4``, ``C=1``: converges in
  about 30 epochs on the full train split in seconds (lbfgs reaches the same accuracy ten times
  slower); a fixed ``random_state`` makes its sample order, hence the model, repeatable.
* Every word and bigram of the train replies is a feature (``min_df=1``; dropping those seen
  once halves the vocabulary but costs a point of accuracy and of macro-F1).
* **Ties.** The label is the argmax of the decision scores after rounding them to
  :data:`TIE_DECIMALS` decimals, taken over the strategies in :data:`esc_dist.strategies.STRATEGIES`
  order, so two strategies whose scores differ only by floating-point noise go to the one listed
  first, on every machine.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError
from ..strategies import STRATEGIES

# What the decoupled generator is conditioned on when the planner named no strategy; the same
# value as esc_dist.infer.FALLBACK_STRATEGY (eval does not import another stage's module).
DECOUPLED_FALLBACK = "Others"
TIE_DECIMALS = 9
SEED = 0


def _get(record: Any, key: str) -> Any:
    if isinstance(record, Mapping):
        return record.get(key)
    return getattr(record, key, None)


def _share(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


@dataclass
class StrategyClassifier:
    """A fitted reply -> strategy classifier; ``evaluation`` is filled by :func:`train_classifier`
    (or :meth:`evaluate`)."""

    vectorizer: Any
    model: Any
    train_size: int
    train_counts: dict[str, int]
    evaluation: dict = field(default_factory=dict)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The strategy of each text (ties broken as the module says)."""
        import numpy as np

        texts = [t if isinstance(t, str) else "" for t in texts]
        if not texts:
            return []
        scores = self.model.decision_function(self.vectorizer.transform(texts))
        classes = list(self.model.classes_)
        if scores.ndim == 1:  # two classes only: one column, positive means classes[1]
            scores = np.stack([-scores, scores], axis=1)
        order = [s for s in STRATEGIES if s in classes]
        cols = scores[:, [classes.index(s) for s in order]]
        return [order[i] for i in argmax_first(cols)]

    def evaluate(self, replies: Sequence[str], strategies: Sequence[str], split: str) -> dict:
        """Accuracy, macro-F1 and per-strategy precision/recall/F1 on gold (reply, strategy)."""
        from sklearn.metrics import f1_score, precision_recall_fscore_support

        pred = self.predict(replies)
        n = len(strategies)
        correct = sum(p == g for p, g in zip(pred, strategies))
        labels = list(STRATEGIES)
        p, r, f, support = precision_recall_fscore_support(
            strategies, pred, labels=labels, zero_division=0
        )
        majority = max(
            STRATEGIES, key=lambda s: (self.train_counts.get(s, 0), -STRATEGIES.index(s))
        )
        self.evaluation = {
            "split": split,
            "n": n,
            "accuracy": _share(correct, n),
            "macro_f1": round(
                float(f1_score(strategies, pred, labels=labels, average="macro", zero_division=0)),
                4,
            )
            if n
            else None,
            "majority_strategy": majority,
            "majority_rate": _share(sum(g == majority for g in strategies), n),
            "per_strategy": {
                s: {
                    "n": int(support[i]),
                    "precision": round(float(p[i]), 4),
                    "recall": round(float(r[i]), 4),
                    "f1": round(float(f[i]), 4),
                }
                for i, s in enumerate(labels)
            },
        }
        return self.evaluation

    def describe(self) -> dict:
        """What the classifier is and how well it does on gold replies (JSON-able)."""
        return {
            "features": "tf-idf word 1-2-grams, lower-case, sublinear tf, min_df 1",
            "model": "logistic regression (multinomial, saga, C=1, class_weight=balanced, "
            f"random_state={SEED})",
            "ties": f"scores rounded to {TIE_DECIMALS} decimals; first in STRATEGIES order",
            "train_size": self.train_size,
            "train_counts": dict(self.train_counts),
            "evaluation": self.evaluation,
        }


def argmax_first(scores) -> list[int]:
    """Row-wise argmax after rounding to :data:`TIE_DECIMALS` decimals; the first column wins a
    tie."""
    import numpy as np

    return [
        int(i)
        for i in np.argmax(np.round(np.asarray(scores, dtype=np.float64), TIE_DECIMALS), axis=1)
    ]


def fit_classifier(replies: Sequence[str], strategies: Sequence[str]) -> StrategyClassifier:
    """Fit the classifier on gold (reply, strategy) pairs."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    if len(set(strategies)) < 2:
        raise ValueError("the classifier needs replies of at least two strategies")
    vectorizer = TfidfVectorizer(
        lowercase=True, ngram_range=(1, 2), sublinear_tf=True, min_df=1, dtype=np.float64
    )
    x = vectorizer.fit_transform(list(replies))
    model = LogisticRegression(
        solver="saga", C=1.0, class_weight="balanced", max_iter=1000, tol=1e-4, random_state=SEED
    )
    model.fit(x, list(strategies))
    counts = Counter(strategies)
    return StrategyClassifier(
        vectorizer, model, len(strategies), {s: counts.get(s, 0) for s in STRATEGIES}
    )


def _gold(data_dir: str | Path, split: str) -> tuple[list[str], list[str]]:
    from ..data.tasks import load_task

    turns = load_task(data_dir, "turns")
    if split not in turns:
        raise ConfigError(f"{data_dir}: no split {split!r} (have {', '.join(turns)})")
    rows = sorted(turns[split], key=lambda t: t["id"])
    return [t["reply"] for t in rows], [t["strategy"] for t in rows]


def train_classifier(
    data_dir: str | Path, *, train_split: str = "train", eval_split: str = "test"
) -> StrategyClassifier:
    """Train on the gold replies of ``train_split`` of the prepared data and measure on those of
    ``eval_split`` (``classifier.evaluation``)."""
    clf = fit_classifier(*_gold(data_dir, train_split))
    clf.evaluate(*_gold(data_dir, eval_split), split=eval_split)
    return clf


def intended_strategy(
    record: Any, intended: Mapping[str, str | None] | None = None
) -> tuple[str | None, str]:
    """``(strategy the reply was meant to realise, where it came from)``:

    1. ``intended[id]`` when the mapping has the id (``"override"``; a None value skips it);
    2. the record's ``conditioned_on`` when present and not None (``"conditioned_on"``);
    3. its ``pred_strategy`` when not None (``"pred_strategy"``: what the decoupled generator was
       conditioned on, or the vanilla reply's own parsed tag);
    4. for a decoupled prediction without one, ``"Others"`` (``"fallback"``: what the generator
       was conditioned on then); for a vanilla one, None (``"none"``: skipped).
    """
    rid = str(_get(record, "id"))
    if intended is not None and rid in intended:
        return intended[rid], "override"
    cond = _get(record, "conditioned_on")
    if cond is not None:
        return cond, "conditioned_on"
    pred = _get(record, "pred_strategy")
    if pred is not None:
        return pred, "pred_strategy"
    if _get(record, "mode") == "decoupled":
        return DECOUPLED_FALLBACK, "fallback"
    return None, "none"


def _per_strategy(pairs: Iterable[tuple[str, str]]) -> dict[str, dict]:
    n, agree = Counter(), Counter()
    for want, got in pairs:
        n[want] += 1
        agree[want] += want == got
    return {
        s: {"n": n[s], "agree": agree[s], "adherence": _share(agree[s], n[s])} for s in STRATEGIES
    }


def adherence(
    records: Iterable[Any],
    classifier: StrategyClassifier,
    *,
    intended: Mapping[str, str | None] | None = None,
    keep_per_item: bool = False,
) -> dict:
    """How often the classifier's label of ``pred_reply`` is the intended strategy.

    ``records`` are predictions (mappings or :class:`esc_dist.eval.predictions.Prediction`);
    the intended strategy of each is :func:`intended_strategy`'s. Returns (JSON-able)::

        n               records given
        evaluated       records with an intended strategy (the denominator)
        skipped         records without one (a vanilla reply with no parseable tag, or an
                        override of None)
        agree           evaluated replies whose label is the intended strategy
        adherence       agree / evaluated (None when nothing was evaluated)
        per_strategy    {strategy: {"n", "agree", "adherence"}} by intended strategy
        labels          {strategy: evaluated replies the classifier gave that label}
        intended_from   {"override", "conditioned_on", "pred_strategy", "fallback", "none"}: counts
        gold_reference  the same on the gold replies against the gold strategies of the same
                        records ({"n", "agree", "adherence", "per_strategy"}): the ceiling of a
                        generator that realises every strategy as the human supporters did
        classifier      classifier.describe(): settings, train size, accuracy and macro-F1 on
                        the gold replies of its evaluation split
        items           with keep_per_item: {id: {"intended", "label"}}
    """
    records = list(records)
    wanted = [intended_strategy(r, intended) for r in records]
    unknown = sorted({w for w, _ in wanted if w is not None and w not in STRATEGIES})
    if unknown:
        raise ValueError(f"intended strategies that are not ESConv strategies: {unknown}")
    keep = [i for i, (w, _) in enumerate(wanted) if w is not None]
    labels = classifier.predict([str(_get(records[i], "pred_reply") or "") for i in keep])
    pairs = [(wanted[i][0], lab) for i, lab in zip(keep, labels)]
    agree = sum(w == lab for w, lab in pairs)
    golds = [
        (str(_get(r, "gold_reply")), _get(r, "gold_strategy"))
        for r in records
        if _get(r, "gold_strategy") in STRATEGIES and isinstance(_get(r, "gold_reply"), str)
    ]
    gold_labels = classifier.predict([g for g, _ in golds])
    gold_pairs = [(s, lab) for (_, s), lab in zip(golds, gold_labels)]
    gold_agree = sum(s == lab for s, lab in gold_pairs)
    label_counts = Counter(labels)
    sources = Counter(src for _, src in wanted)
    out = {
        "n": len(records),
        "evaluated": len(keep),
        "skipped": len(records) - len(keep),
        "agree": agree,
        "adherence": _share(agree, len(keep)),
        "per_strategy": _per_strategy(pairs),
        "labels": {s: label_counts.get(s, 0) for s in STRATEGIES},
        "intended_from": {
            k: sources.get(k, 0)
            for k in ("override", "conditioned_on", "pred_strategy", "fallback", "none")
        },
        "gold_reference": {
            "n": len(gold_pairs),
            "agree": gold_agree,
            "adherence": _share(gold_agree, len(gold_pairs)),
            "per_strategy": _per_strategy(gold_pairs),
        },
        "classifier": classifier.describe(),
    }
    if keep_per_item:
        lab_of = dict(zip(keep, labels))
        out["items"] = {
            str(_get(r, "id")): {"intended": wanted[i][0], "label": lab_of.get(i)}
            for i, r in enumerate(records)
        }
    return out
