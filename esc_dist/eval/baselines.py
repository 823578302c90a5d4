"""Strategy baselines that need no language model, trained on a run's prepared training turns.

- ``majority``: always the most frequent training strategy;
- ``prior``: a strategy drawn from the training frequencies (numpy's generator, seeded);
- ``bow_lr``: TF-IDF of the planner prompt's dialogue text (the history the planner sees), word
  1-2-grams, scikit-learn's ``LogisticRegression``.

The studies score them beside the trained planners with the same metrics
(:func:`esc_dist.eval.strategy.strategy_metrics`); zero-shot, the fourth baseline, is a model
run through ``esc-dist infer`` like any planner.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from ..data.tasks import load_task
from ..strategies import STRATEGIES

BASELINES = {"majority": "Majority", "prior": "Random by train prior", "bow_lr": "Bag-of-words LR"}


def dialogue_text(prompt: list[dict]) -> str:
    """The text a bag-of-words model reads of a planner prompt: every message but the system's."""
    return " \n ".join(m["content"] for m in prompt if m["role"] != "system")


def strategy_baselines(
    data_dir: str | Path, seed: int, ids: Collection[str] | None = None
) -> tuple[list[str], dict[str, list[str]]]:
    """The gold strategies of the test turns (those in ``ids``, else all) and each baseline's
    predictions of them, in the test split's order."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    task = load_task(str(data_dir), "planner")
    train, test = task["train"], task["test"]
    if ids is not None:
        wanted = set(ids)
        test = test.filter(lambda r: r["id"] in wanted)
    gold_train, gold = list(train["strategy"]), list(test["strategy"])
    counts = {s: gold_train.count(s) for s in STRATEGIES}
    majority = max(STRATEGIES, key=lambda s: counts[s])
    prior = np.array([counts[s] for s in STRATEGIES], dtype=float) / len(gold_train)
    rng = np.random.default_rng(seed)
    drawn = [STRATEGIES[i] for i in rng.choice(len(STRATEGIES), size=len(gold), p=prior)]
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vec.fit_transform([dialogue_text(p) for p in train["prompt"]])
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(x_train, gold_train)
    bow = list(clf.predict(vec.transform([dialogue_text(p) for p in test["prompt"]])))
    return gold, {"majority": [majority] * len(gold), "prior": drawn, "bow_lr": bow}
