"""Evaluation metrics against hand-computed values and independent computations."""

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from esc_dist.eval.preference import bradley_terry, fit_preferences, kang_preferences
from esc_dist.eval.strategy import strategy_metrics
from esc_dist.eval.text import distinct, text_metrics, tokenize, unigram_f1
from esc_dist.strategies import STRATEGIES

Q, RP, RF, SD, AR, PS, INF, OTH = STRATEGIES
SQRT7 = math.sqrt(7)  # B of a constant predictor: preferences (8, 0, ..., 0)

# Ten turns; two strategy outputs could not be parsed (None), gold Reflection and Information.
GOLD = [Q, Q, Q, RP, RP, RF, RF, OTH, OTH, INF]
PRED = [Q, Q, RF, RP, Q, RF, None, OTH, Q, None]


# ---------------------------------------------------------------------------------------------
# Strategy metrics (hand-computed)


def test_strategy_metrics_unparseable_as_others_by_hand():
    m = strategy_metrics(GOLD, PRED)
    assert m["n_turns"] == 10 and m["unparseable"] == 2
    assert m["unparseable_by_gold"][RF] == 1 and m["unparseable_by_gold"][INF] == 1
    a = m["as_others"]
    assert a["n"] == 10
    assert a["accuracy"] == pytest.approx(5 / 10)
    # per-strategy F1: Q 4/7 (P 1/2, R 2/3), RP 2/3, RF 1/2, Others 2/5 (P 1/3, R 1/2), Info 0;
    # strategies in gold or predictions: these five.
    assert a["Q"] == pytest.approx((4 / 7 + 2 / 3 + 1 / 2 + 2 / 5 + 0) / 5)  # 449/1050
    assert a["weighted_f1"] == pytest.approx((3 * 4 / 7 + 2 * 2 / 3 + 2 * 1 / 2 + 2 * 2 / 5) / 10)
    others = a["per_strategy"][OTH]
    assert (
        others["precision"],
        others["recall"],
        others["support"],
        others["predicted"],
    ) == pytest.approx((1 / 3, 1 / 2, 2, 3))
    assert a["per_strategy"][INF]["f1"] == 0.0
    conf = np.array(a["confusion"])
    assert conf.sum() == 10 and np.trace(conf) == 5
    assert conf[STRATEGIES.index(RF), STRATEGIES.index(OTH)] == 1  # the unparseable one
    assert conf[STRATEGIES.index(INF), STRATEGIES.index(OTH)] == 1
    assert conf[STRATEGIES.index(Q), STRATEGIES.index(RF)] == 1  # gold rows, predicted columns
    assert conf[STRATEGIES.index(RF), STRATEGIES.index(Q)] == 0


def test_strategy_metrics_unparseable_excluded_by_hand():
    e = strategy_metrics(GOLD, PRED)["excluded"]
    assert e["n"] == 8
    assert e["accuracy"] == pytest.approx(5 / 8)
    # without the two: F1 Q 4/7, RP 2/3, RF 2/3 (P 1/2, R 1), Others 2/3 (P 1, R 1/2); Info gone
    assert e["Q"] == pytest.approx(9 / 14)
    assert e["weighted_f1"] == pytest.approx(53 / 84)
    assert e["per_strategy"][RF]["recall"] == 1.0
    assert np.array(e["confusion"]).sum() == 8


def test_preferences_of_the_fixture_by_hand():
    m = strategy_metrics(GOLD, PRED)
    # as_others: Q beats RP and Others, Others beats RF and Info, RF beats Q: the cycle
    # Q -> Others -> RF -> Q (one win each) gets equal strength; RP and Info are only beaten
    # (-> 0); SD, AR, PS never take part (-> 1.0). The 5 observed share 5: cycle 5/3 each.
    a = m["as_others"]
    prefs = [a["per_strategy"][s]["preference"] for s in STRATEGIES]
    assert prefs == pytest.approx([5 / 3, 0, 5 / 3, 1, 1, 1, 0, 5 / 3])
    assert a["B"] == pytest.approx(math.sqrt(5 / 12))  # 0.6455
    assert a["preference_fit"]["dominated"] == [RP, INF]
    # excluded: RF beats Q, Q beats RP and Others: RF alone on top (4 observed -> 4.0)
    e = m["excluded"]
    assert [e["per_strategy"][s]["preference"] for s in STRATEGIES] == pytest.approx(
        [0, 0, 4, 1, 1, 1, 1, 0]
    )
    assert e["B"] == pytest.approx(math.sqrt(1.5))  # 1.2247


def test_all_unparseable():
    m = strategy_metrics([Q, RP, AR], [None, None, None])
    assert m["unparseable"] == 3 and m["excluded"] is None
    assert m["as_others"]["accuracy"] == 0.0


def test_rejects_unknown_labels_and_length_mismatch():
    with pytest.raises(ValueError, match="not one of the 8"):
        strategy_metrics(["Questions"], [Q])
    with pytest.raises(ValueError, match="2 gold labels but 1"):
        strategy_metrics([Q, Q], [Q])


# ---------------------------------------------------------------------------------------------
# Preference bias B


def test_perfect_predictions_have_no_bias():
    gold = [s for s in STRATEGIES for _ in range(5)]
    m = strategy_metrics(gold, gold)["as_others"]
    assert m["B"] == 0.0
    assert [m["per_strategy"][s]["preference"] for s in STRATEGIES] == [1.0] * 8
    assert m["accuracy"] == 1.0 and m["Q"] == 1.0


@pytest.mark.parametrize("constant", [Q, OTH])
def test_constant_predictor_has_maximal_bias(constant):
    gold = [s for s in STRATEGIES for _ in range(5)]
    m = strategy_metrics(gold, [constant] * len(gold))["as_others"]
    prefs = {s: m["per_strategy"][s]["preference"] for s in STRATEGIES}
    assert prefs[constant] == pytest.approx(8.0)
    assert sum(prefs.values()) == pytest.approx(8.0)
    assert m["B"] == pytest.approx(SQRT7)  # 2.6458, the largest possible
    assert m["B"] > 2.6


def test_more_bias_means_larger_b():
    gold = [s for s in STRATEGIES for _ in range(10)]
    rng = np.random.default_rng(0)

    def b(p_constant):  # predict the gold label, but "Question" with probability p_constant
        pred = [Q if rng.random() < p_constant else g for g in gold]
        # a little uniform noise keeps the comparison graph connected
        pred = [
            STRATEGIES[(STRATEGIES.index(g) + 1) % 8] if i % 9 == 0 else p
            for i, (g, p) in enumerate(zip(gold, pred))
        ]
        return strategy_metrics(gold, pred)["as_others"]["B"]

    values = [b(p) for p in (0.0, 0.3, 0.7)]
    assert values[0] < values[1] < values[2] < SQRT7


def test_two_strategies_by_hand():
    # gold rows x predicted columns. w_01 = 3 (strategy 0 predicted for gold 1), w_10 = 1:
    # p0 / p1 = 3, normalised to sum 2 -> (1.5, 0.5), B = 0.5. The diagonal does not matter.
    for diag in (0, 7, 1000):
        fit = fit_preferences([[diag, 1], [3, diag + 2]], labels=["a", "b"])
        assert fit.preferences == pytest.approx([1.5, 0.5])
        assert fit.bias == pytest.approx(0.5)
        assert fit.mle_exists and fit.converged
    # inside the 8 strategies: the 6 others take no part and stay at 1.0
    conf = np.zeros((8, 8))
    conf[1, 0], conf[0, 1] = 3, 1  # gold RP predicted Q three times; gold Q predicted RP once
    fit = fit_preferences(conf)
    assert fit.preferences == pytest.approx([1.5, 0.5, 1, 1, 1, 1, 1, 1])
    assert fit.bias == pytest.approx(math.sqrt((0.25 + 0.25) / 8))  # 0.25
    assert set(fit.unobserved) == set(STRATEGIES[2:])


def _released_scorer(confusion) -> tuple[list[float], float]:
    """The released scorers' Bradley-Terry (strg_preference) written out again from their
    description, on plain Python floats: 20 Gauss-Seidel sweeps from 1, geometric-mean
    normalisation over the positive values after each, scaled to sum 8; 0/0 -> NaN."""
    n = len(confusion)
    w = [[float(confusion[j][i]) for j in range(n)] for i in range(n)]  # w[i][j]: i for gold j
    p = [1.0] * n
    for _ in range(20):
        for i in range(n):
            num = sum(w[i][j] * (p[j] / (p[i] + p[j])) for j in range(n) if j != i)
            den = sum(w[j][i] * (1 / (p[i] + p[j])) for j in range(n) if j != i)
            p[i] = num / den if den else (math.inf if num else math.nan)
        pos = [x for x in p if x > 0]
        g = math.prod(pos) ** (1 / len(pos))
        p = [x / g for x in p]
    total = sum(p)
    p = [x * n / total for x in p]
    mean = sum(p) / n
    return p, math.sqrt(sum((x - mean) ** 2 for x in p) / n)


def test_released_twenty_sweep_fit_by_hand():
    # w_01 = 3, w_10 = 1: the first sweep already reaches p0 / p1 = 3 -> (1.5, 0.5), B = 0.5
    prefs, bias = kang_preferences([[0, 1], [3, 0]])
    assert prefs == pytest.approx([1.5, 0.5]) and bias == pytest.approx(0.5)
    # a strategy that never takes part: the released code divides 0 by 0 -> undefined, while
    # the converged fit gives it the neutral 1.0
    conf = np.zeros((8, 8))
    conf[1, 0], conf[0, 1] = 3, 1
    prefs, bias = kang_preferences(conf)
    assert bias is None and math.isnan(prefs[5])
    assert fit_preferences(conf).bias == pytest.approx(0.25)
    # a constant predictor: undefined too (the converged fit's limit is sqrt(7))
    constant = np.zeros((8, 8))
    constant[:, 0] = 4
    assert kang_preferences(constant)[1] is None


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_released_fit_equals_an_independent_transcription(seed):
    rng = np.random.default_rng(seed)
    conf = rng.integers(0, 30, size=(8, 8)) * (rng.random((8, 8)) < 0.7)
    np.fill_diagonal(conf, rng.integers(0, 50, size=8))
    conf[np.arange(8), (np.arange(8) + 1) % 8] += 1  # a cycle: every strategy beats and is beaten
    prefs, bias = kang_preferences(conf)
    ref_prefs, ref_bias = _released_scorer(conf.tolist())
    assert prefs == pytest.approx(ref_prefs, rel=1e-12) and bias == pytest.approx(
        ref_bias, rel=1e-12
    )
    assert sum(prefs) == pytest.approx(8)
    # 20 sweeps stop near, not exactly at, the converged fit
    assert bias == pytest.approx(fit_preferences(conf).bias, abs=0.05)


def test_twenty_sweeps_can_stop_short_of_convergence():
    # a long chain of one-sided wins, closed by one weak link: slow to converge
    conf = np.zeros((8, 8))
    for i in range(7):
        conf[i + 1, i] = 50  # strategy i predicted for gold i+1: i beats i+1
        conf[i, i + 1] = 1
    conf[0, 7] = 1
    conf[7, 0] = 1
    _, bias = kang_preferences(conf)
    converged = fit_preferences(conf)
    assert converged.converged and abs(bias - converged.bias) > 1e-4  # 6.4e-4 here
    assert bias == pytest.approx(_released_scorer(conf.tolist())[1], rel=1e-12)


def _bt_loglik_fit(wins: np.ndarray) -> np.ndarray:
    """Independent Bradley-Terry MLE: maximise sum_ij w_ij log(p_i / (p_i + p_j)) with BFGS over
    log-strengths (the first fixed at 0); returns strengths normalised to sum to len(wins)."""
    w = np.array(wins, dtype=float)
    np.fill_diagonal(w, 0.0)
    n = len(w)

    def negll(free):
        t = np.concatenate([[0.0], free])
        diff = t[:, None] - t[None, :]
        pr = 1.0 / (1.0 + np.exp(-diff))  # P(i beats j)
        ll = np.sum(w * np.log(pr))
        grad = (w * (1 - pr)).sum(axis=1) - (w * (1 - pr)).sum(axis=0)
        return -ll, -grad[1:]

    res = minimize(
        negll, np.zeros(n - 1), jac=True, method="BFGS", options={"gtol": 1e-11, "maxiter": 10_000}
    )
    p = np.exp(np.concatenate([[0.0], res.x]))
    return p * n / p.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_matches_direct_likelihood_maximisation(seed):
    rng = np.random.default_rng(seed)
    conf = rng.integers(0, 15, size=(8, 8)) + np.diag(rng.integers(20, 60, size=8))
    conf[np.arange(8), (np.arange(8) + 1) % 8] += 1  # a cycle: strongly connected
    fit = fit_preferences(conf)
    expected = _bt_loglik_fit(conf.T)  # wins[i, j] = predicted i for gold j
    assert fit.converged and fit.mle_exists and not fit.dominated and not fit.unobserved
    np.testing.assert_allclose(fit.preferences, expected, rtol=1e-5)
    assert fit.bias == pytest.approx(np.std(expected), rel=1e-5)
    assert sum(fit.preferences) == pytest.approx(8.0)


def test_unobserved_strategy_is_neutral_and_the_rest_fit_alone():
    rng = np.random.default_rng(3)
    conf = rng.integers(1, 10, size=(8, 8))
    conf[:, 5] = 0  # "Providing Suggestions" never gold and never predicted
    conf[5, :] = 0
    fit = fit_preferences(conf)
    assert fit.unobserved == [PS] and fit.preferences[5] == 1.0
    keep = [i for i in range(8) if i != 5]
    expected = _bt_loglik_fit(conf[np.ix_(keep, keep)].T)  # mean 1 over the 7 observed
    np.testing.assert_allclose(np.array(fit.preferences)[keep], expected, rtol=1e-5)


def test_degenerate_cases_are_the_limit_of_a_regularised_fit():
    # chain: Q beats RP (3 times), RP beats RF (2 times); nothing else.
    conf = np.zeros((8, 8))
    conf[1, 0] = 3  # gold RP, predicted Q
    conf[2, 1] = 2  # gold RF, predicted RP
    fit = fit_preferences(conf)
    assert fit.preferences == pytest.approx([3, 0, 0, 1, 1, 1, 1, 1])
    assert fit.dominated == [RP, RF] and not fit.mle_exists
    # a tiny pseudo-count on every pair of the observed strategies makes the MLE exist; as it
    # shrinks, the regularised fit approaches ours
    wins = conf.T[:3, :3] + 1e-7 * (1 - np.eye(3))
    np.testing.assert_allclose(_bt_loglik_fit(wins), [3, 0, 0], atol=2e-3)


def test_separate_groups_share_the_scale():
    conf = np.zeros((8, 8))
    conf[0, 1], conf[1, 0] = 1, 3  # Q vs RP: RP predicted for gold Q once, Q for gold RP 3 times
    conf[2, 3], conf[3, 2] = 2, 2  # RF vs SD, balanced
    fit = fit_preferences(conf)
    assert fit.preferences == pytest.approx([1.5, 0.5, 1, 1, 1, 1, 1, 1])
    assert not fit.mle_exists


def test_convergence_guard():
    rng = np.random.default_rng(4)
    conf = rng.integers(1, 30, size=(8, 8))
    full = fit_preferences(conf)
    assert full.converged and 1 < full.iterations < 1000
    short = fit_preferences(conf, max_iter=1)
    assert not short.converged and short.iterations == 1
    loose = fit_preferences(conf, tol=1e-3)
    assert loose.converged and loose.iterations < full.iterations
    p, ok, sweeps = bradley_terry(np.array([[0, 2], [1, 0]]))
    assert ok and p[0] / p[1] == pytest.approx(2.0)


def test_rejects_bad_matrices():
    with pytest.raises(ValueError, match="square"):
        fit_preferences(np.zeros((8, 7)))
    with pytest.raises(ValueError, match="non-negative"):
        fit_preferences(-np.ones((8, 8)))


# ---------------------------------------------------------------------------------------------
# Text metrics (hand-computed on three pairs)

HYPS = [
    "I am so sorry to hear that.",
    "How long have you felt this way?",
    "I am here. I am here for you.",
]
REFS = [
    "I am sorry to hear that you lost your job.",
    "How long have you been feeling this way?",
    "I am here for you, always.",
]
# 13a tokens: hyps 8 + 8 + 10 = 26, refs 11 + 9 + 8 = 28 -> brevity penalty exp(1 - 28/26).
# Clipped matches / totals: 1-grams (7+7+6)/26, 2-grams (4+5+4)/23, 3-grams (2+3+3)/20,
# 4-grams (1+1+2)/17.
BP = math.exp(1 - 28 / 26)
P = [20 / 26, 13 / 23, 8 / 20, 4 / 17]


def test_tokenizer():
    assert tokenize("I am here for you, always.") == [
        "i",
        "am",
        "here",
        "for",
        "you",
        ",",
        "always",
        ".",
    ]


def test_text_metrics_by_hand():
    m = text_metrics(HYPS, REFS)
    for n in range(1, 5):
        assert m[f"bleu_{n}"] == pytest.approx(BP * math.prod(P[:n]) ** (1 / n), rel=1e-9), n
    # ROUGE-L (rouge-score drops punctuation): LCS 6 of 7/10, 6 of 7/8, 5 of 8/6 words
    assert m["rouge_l"] == pytest.approx((12 / 17 + 4 / 5 + 5 / 7) / 3)
    # Distinct over all replies: 18 unique of 26 unigrams, 20 of 23 bigrams, 19 of 20 trigrams;
    # per reply, only the third repeats itself: 6/10, 7/9, 7/8
    assert m["distinct_1"] == pytest.approx(18 / 26)
    assert m["distinct_2"] == pytest.approx(20 / 23)
    assert m["distinct_3"] == pytest.approx(19 / 20)
    assert m["distinct_1_per_response"] == pytest.approx((1 + 1 + 6 / 10) / 3)
    assert m["distinct_2_per_response"] == pytest.approx((1 + 1 + 7 / 9) / 3)
    assert m["distinct_3_per_response"] == pytest.approx((1 + 1 + 7 / 8) / 3)
    # unigram F1 = 2 * common / (|hyp| + |ref|): 14/19, 14/17, 12/18
    assert m["unigram_f1"] == pytest.approx((14 / 19 + 14 / 17 + 12 / 18) / 3)
    assert m["mean_length"] == pytest.approx(26 / 3)
    assert m["n"] == 3


def test_text_metric_edge_cases():
    assert unigram_f1([], []) == 1.0
    assert unigram_f1(["a"], []) == 0.0
    assert unigram_f1(["a", "b"], ["c"]) == 0.0
    assert distinct([["a"], []], 2) == (0.0, 0.0)
    m = text_metrics(["yes", "no"], ["yes", "maybe"])
    assert m["bleu_1"] == pytest.approx(0.5)  # 1 of 2 unigrams, equal lengths
    assert m["bleu_2"] == pytest.approx(0.0)  # one-word replies have no bigrams: 0, no error
    perfect = text_metrics(REFS, REFS)
    assert perfect["bleu_4"] == pytest.approx(1.0) and perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["unigram_f1"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        text_metrics(["a"], [])


def test_strategy_baselines(small_setup):
    """The studies' label baselines on a prepared split: gold in the split's order, the majority
    and prior drawn from the training turns, and a bag-of-words model over the same turns."""
    from collections import Counter

    from esc_dist.data.tasks import load_task
    from esc_dist.eval.baselines import BASELINES, dialogue_text, strategy_baselines

    data = small_setup / "data"
    task = load_task(str(data), "planner")
    train, test = list(task["train"]), list(task["test"])
    gold, preds = strategy_baselines(data, seed=3)
    assert gold == [r["strategy"] for r in test] and set(preds) == set(BASELINES)
    counts = Counter(r["strategy"] for r in train)
    assert set(preds["majority"]) == {counts.most_common(1)[0][0]}
    assert all(len(p) == len(gold) for p in preds.values())
    assert set(preds["prior"]) <= set(counts)  # only strategies seen in training are drawn
    again = strategy_baselines(data, seed=3)[1]["prior"]
    other = strategy_baselines(data, seed=4)[1]["prior"]
    assert again == preds["prior"] and other != preds["prior"]
    assert set(preds["bow_lr"]) <= set(counts)  # it predicts classes it was trained on
    # a subset of turns keeps the split's order
    ids = [r["id"] for r in test][::2]
    sub_gold, sub = strategy_baselines(data, seed=3, ids=set(ids))
    assert sub_gold == [r["strategy"] for r in test if r["id"] in set(ids)]
    assert sub["bow_lr"] == [p for r, p in zip(test, preds["bow_lr"]) if r["id"] in set(ids)]
    assert "system" not in dialogue_text([{"role": "system", "content": "system"}])
