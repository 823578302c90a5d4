"""Strategy adherence on the real ESConv data: a TF-IDF + logistic-regression classifier trained
on the gold supporter replies of the DecoupledESC train split, measured on its test split, and
the adherence of replies to the strategy they were meant to realise."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from esc_dist.eval.adherence import (
    DECOUPLED_FALLBACK,
    adherence,
    argmax_first,
    intended_strategy,
    train_classifier,
)
from esc_dist.strategies import STRATEGIES


@pytest.fixture(scope="module")
def full_data(tmp_path_factory, esconv_dir):
    """Every train and test dialogue of the DecoupledESC split (one validation dialogue: a split
    may not be empty)."""
    from esc_dist.config import DataConfig
    from esc_dist.data.tasks import prepare

    out = tmp_path_factory.mktemp("adherence") / "data"
    prepare(
        DataConfig(
            esconv=str(esconv_dir / "esconv.json"),
            split=str(esconv_dir / "splits" / "decoupledesc_split.json"),
            max_dialogues={"train": None, "validation": 1, "test": None},
            max_history_messages=2,
        ),
        out,
    )
    return out


@pytest.fixture(scope="module")
def classifier(full_data):
    return train_classifier(full_data)


@pytest.fixture(scope="module")
def turns(full_data):
    from esc_dist.infer import load_turns

    return {split: load_turns(full_data, split) for split in ("train", "test")}


def as_predictions(
    test_turns, reply_of=lambda t: t["reply"], mode="decoupled", pred_of=lambda t: t["strategy"]
):
    return [
        {
            "id": t["id"],
            "dialogue_id": t["dialogue_id"],
            "turn_index": t["turn_index"],
            "gold_strategy": t["strategy"],
            "gold_reply": t["reply"],
            "pred_strategy": pred_of(t),
            "pred_strategy_raw": str(pred_of(t)),
            "pred_reply": reply_of(t),
            "mode": mode,
        }
        for t in test_turns
    ]


def test_classifier_is_well_above_the_majority_class(classifier, turns):
    ev = classifier.evaluation
    test = turns["test"]
    assert ev["split"] == "test" and ev["n"] == len(test) > 1000
    # the majority-class rate, computed here from the raw turns
    majority, _ = Counter(t["strategy"] for t in turns["train"]).most_common(1)[0]
    rate = sum(t["strategy"] == majority for t in test) / len(test)
    assert ev["majority_strategy"] == majority
    assert ev["majority_rate"] == pytest.approx(rate, abs=1e-4)
    assert ev["accuracy"] > rate + 0.2, (ev["accuracy"], rate)
    assert ev["macro_f1"] > 0.35
    assert classifier.train_size == len(turns["train"])
    assert sum(s["n"] for s in ev["per_strategy"].values()) == len(test)


def test_gold_replies_on_gold_strategies_adhere_as_often_as_the_classifier_is_right(
    classifier, turns
):
    out = adherence(as_predictions(turns["test"]), classifier)
    assert out["n"] == out["evaluated"] == len(turns["test"]) and out["skipped"] == 0
    assert out["adherence"] == classifier.evaluation["accuracy"]
    assert out["gold_reference"]["adherence"] == classifier.evaluation["accuracy"]
    assert out["agree"] == out["gold_reference"]["agree"]
    for s in STRATEGIES:  # per strategy, adherence is the classifier's recall
        assert out["per_strategy"][s]["adherence"] == pytest.approx(
            classifier.evaluation["per_strategy"][s]["recall"], abs=1e-4
        )
    assert out["intended_from"]["pred_strategy"] == len(turns["test"])
    json.dumps(out)  # JSON-able


def test_replies_conditioned_on_a_wrong_strategy_adhere_less(classifier, turns):
    preds = as_predictions(turns["test"])
    wrong = {
        t["id"]: STRATEGIES[(STRATEGIES.index(t["strategy"]) + 3) % len(STRATEGIES)]
        for t in turns["test"]
    }
    right = adherence(preds, classifier)
    out = adherence(preds, classifier, intended=wrong)
    assert out["intended_from"]["override"] == len(preds)
    assert out["adherence"] < right["adherence"] / 2, (out["adherence"], right["adherence"])
    # the gold reference does not depend on what the replies were meant to be
    assert out["gold_reference"] == right["gold_reference"]


def test_results_are_identical_across_runs(full_data, classifier, turns):
    preds = as_predictions(turns["test"][:400], reply_of=lambda t: t["reply"].upper()[::-1])
    again = train_classifier(full_data)
    assert again.evaluation == classifier.evaluation
    a = adherence(preds, classifier, keep_per_item=True)
    b = adherence(preds, again, keep_per_item=True)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_intended_strategy_rules(classifier, turns):
    t = turns["test"][0]
    (base,) = as_predictions([t])
    assert intended_strategy(base) == (t["strategy"], "pred_strategy")
    assert intended_strategy({**base, "pred_strategy": None}) == (DECOUPLED_FALLBACK, "fallback")
    assert intended_strategy({**base, "pred_strategy": None, "mode": "vanilla"}) == (None, "none")
    assert intended_strategy({**base, "conditioned_on": "Information"}) == (
        "Information",
        "conditioned_on",
    )
    assert intended_strategy(base, {t["id"]: None}) == (None, "override")
    records = [
        base,
        {**base, "id": "v", "pred_strategy": None, "mode": "vanilla"},
        {**base, "id": "d", "pred_strategy": None},
    ]
    out = adherence(records, classifier, keep_per_item=True)
    assert out["n"] == 3 and out["evaluated"] == 2 and out["skipped"] == 1
    assert out["items"]["v"] == {"intended": None, "label": None}
    assert out["items"]["d"]["intended"] == "Others"
    assert out["intended_from"] == {
        "override": 0,
        "conditioned_on": 0,
        "pred_strategy": 1,
        "fallback": 1,
        "none": 1,
    }
    assert sum(out["labels"].values()) == 2
    with pytest.raises(ValueError, match="not ESConv strategies"):
        adherence([base], classifier, intended={t["id"]: "Flattery"})


def test_the_decoupled_fallback_is_the_generators():
    from esc_dist.infer import FALLBACK_STRATEGY

    assert DECOUPLED_FALLBACK == FALLBACK_STRATEGY


def test_ties_go_to_the_first_strategy():
    # equal up to floating-point noise: the first column wins, whichever is larger in the last bit
    assert argmax_first([[0.1 + 0.2, 0.3, 0.1], [0.3, 0.1 + 0.2, 0.1], [0.0, 0.5, 0.5]]) == [
        0,
        0,
        1,
    ]
