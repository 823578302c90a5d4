"""Reply-text metrics against the single gold reply of each turn.

All values are fractions in [0, 1] (papers usually print them ×100), except the mean length.

Tokens: the text lower-cased and split by sacrebleu's ``13a`` tokenizer (the mteval-v13a rules,
which split punctuation off words), then on whitespace. The same tokens serve BLEU, Distinct,
unigram F1 and length, so these metrics agree on what a word is.

- **BLEU-n** (n = 1..4): corpus-level, from ``sacrebleu.BLEU(max_ngram_order=n, lowercase=True,
  tokenize="13a", smooth_method="exp")``: uniform weights 1/n over the clipped 1..n-gram
  precisions, times the corpus brevity penalty. "exp" is Chen & Cherry's method 3 (NIST), the same
  smoothing as the ``SmoothingFunction().method3`` that DecoupledESC passes to NLTK's
  ``corpus_bleu``; at corpus level it only applies when some order has no match at all.
- **ROUGE-L**: ``rouge_score`` (Google's package) F-measure of the longest common subsequence, its
  own tokenizer (lower-case, non-alphanumerics dropped), no stemming; averaged over responses.
- **Distinct-n** (n = 1..3), two ways: ``distinct_n`` = unique n-grams / total n-grams over all
  responses together (corpus-level, as in Li et al. 2016 and the ESC papers);
  ``distinct_n_per_response`` = the mean over responses of each response's own ratio (responses
  shorter than n are skipped).
- **Unigram F1**: bag-of-tokens overlap between response and gold (clipped counts),
  F1 = 2PR/(P+R), 0 when there is no overlap, 1 when both are empty; averaged over responses.
- **Mean length**: mean number of tokens per response.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

_TOKENIZER = Tokenizer13a()
MAX_BLEU = 4
MAX_DISTINCT = 3


def tokenize(text: str) -> list[str]:
    """Lower-cased 13a tokens of ``text``."""
    return _TOKENIZER(text.lower().strip()).split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str], n: int) -> float:
    """Corpus BLEU-n in [0, 1] (see the module docstring)."""
    metric = BLEU(max_ngram_order=n, lowercase=True, tokenize="13a", smooth_method="exp")
    return metric.corpus_score(list(hyps), [list(refs)]).score / 100.0


def distinct(token_lists: Sequence[Sequence[str]], n: int) -> tuple[float, float]:
    """(corpus-level, per-response mean) Distinct-n; 0.0 where there are no n-grams."""
    everything: list[tuple[str, ...]] = []
    ratios = []
    for toks in token_lists:
        grams = ngrams(toks, n)
        everything.extend(grams)
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    corpus = len(set(everything)) / len(everything) if everything else 0.0
    per = sum(ratios) / len(ratios) if ratios else 0.0
    return corpus, per


def unigram_f1(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """Token-overlap F1 of one response against its gold reply."""
    if not hyp and not ref:
        return 1.0
    common = sum((Counter(hyp) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(hyp), common / len(ref)
    return 2 * p * r / (p + r)


def rouge_l(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over responses (rouge_score, no stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]
    return sum(scores) / len(scores)


def text_metrics(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float | int]:
    """All reply metrics for paired responses and gold replies (see the module docstring)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} responses but {len(refs)} gold replies")
    if not hyps:
        raise ValueError("no responses to score")
    hyp_toks = [tokenize(h) for h in hyps]
    ref_toks = [tokenize(r) for r in refs]
    out: dict[str, float | int] = {"n": len(hyps)}
    for n in range(1, MAX_BLEU + 1):
        out[f"bleu_{n}"] = corpus_bleu(hyps, refs, n)
    out["rouge_l"] = rouge_l(hyps, refs)
    for n in range(1, MAX_DISTINCT + 1):
        out[f"distinct_{n}"], out[f"distinct_{n}_per_response"] = distinct(hyp_toks, n)
    out["unigram_f1"] = sum(unigram_f1(h, r) for h, r in zip(hyp_toks, ref_toks)) / len(hyps)
    out["mean_length"] = sum(map(len, hyp_toks)) / len(hyps)
    return out
