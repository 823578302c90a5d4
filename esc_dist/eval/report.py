"""Evaluation reports: score predictions, write JSON + Markdown + figures, compare runs, log to W&B.

``evaluate`` scores one system's predictions files -- one per decode (e.g. the paper protocol's
sampled decodes under several seeds; one file for a greedy decode) -- and writes into its output
directory::

    report.json        every metric under both protocols, the counts, the inputs' sha256
    report.md          headline table (both protocols), per-strategy and confusion tables,
                       psychological error rates and adherence when computed, definitions
    confusion.png      gold × predicted heat map (with the unparseable column), first decode
    preferences.png    the 8 Bradley–Terry preferences against the ideal 1.0, first decode
    errors.png         psychological error rates by type (when computed)
    manifest.json      the sha256 of each of them (written last)

**Protocols** (``report["protocols"]``, both always computed; ``report["protocol"]`` names the
headline one, ``eval.protocol``):

- ``paper`` -- the DecoupledESC paper's definitions: per-reply NLTK text metrics
  (:mod:`.paper_text`) and B from the released 20-sweep Bradley–Terry fit (``B_kang``). Its
  decoding (sampled, temperature 0.7, top-p 0.95, ``infer.decode_seeds`` seeds) is the inference
  stage's; the report states the decoding it found and warns when it is not the paper's.
- ``ours`` -- corpus-level text metrics (:mod:`.text`) and B fitted to convergence.

Q, weighted-F1 and accuracy are the same in both. Each headline value is the mean over the
decodes, with the sample standard deviation (``std``; None for one decode); a value undefined in
any decode is None. The detailed tables (per strategy, confusion, errors, adherence, LLM scores)
are of the first decode. Strategy metrics exist in two variants (see :mod:`.strategy`):
``as_others`` and ``excluded``; headline keys carry the variant in their name.

:mod:`.compare` puts several reports side by side under one protocol.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ..constants import PROTOCOLS, VARIANTS
from ..errors import ConfigError, DataError
from ..io import (
    atomic_write_json,
    atomic_write_text,
    output_record,
    read_manifest,
    sha256_file,
    sha256_json,
    write_manifest,
)
from ..outputs import staged_dir
from ..strategies import STRATEGIES
from .markdown import VARIANT_TITLES, flatten, render_markdown
from .plots import plot_confusion, plot_preferences
from .predictions import Prediction, load_predictions
from .strategy import strategy_metrics
from .text import MAX_BLEU, MAX_DISTINCT, text_metrics
from .views import CONFUSION_PNG, ERRORS_PNG, PREFERENCES_PNG, confusion_with_unparseable

REPORT_JSON, REPORT_MD = "report.json", "report.md"
# the paper's decoding (DecoupledESC inference scripts)
PAPER_DECODING = {"do_sample": True, "temperature": 0.7, "top_p": 0.95}
STRATEGY_HEADLINE = ("accuracy", "Q", "weighted_f1", "B")
TEXT_HEADLINE = {
    "ours": (
        *(f"bleu_{n}" for n in range(1, MAX_BLEU + 1)),
        "rouge_l",
        *(f"distinct_{n}" for n in range(1, MAX_DISTINCT + 1)),
        *(f"distinct_{n}_per_response" for n in range(1, MAX_DISTINCT + 1)),
        "unigram_f1",
        "mean_length",
    ),
    "paper": (
        *(f"bleu_{n}" for n in range(1, MAX_BLEU + 1)),
        "rouge_l",
        *(f"distinct_{n}" for n in range(1, MAX_DISTINCT + 1)),
        "unigram_f1",
        "mean_length",
    ),
}
# compare(): column key -> which direction is better (None: not ranked)
COMPARE_COLUMNS: dict[str, str | None] = {
    "Q": "max",
    "weighted_f1": "max",
    "accuracy": "max",
    "B": "min",
    "bleu_2": "max",
    "rouge_l": "max",
    "distinct_2": "max",
    "errors_any": "min",
    "adherence": "max",
    "unparseable": "min",
    "turns": None,
}

STRATEGY_DEFINITIONS = [
    "Strategy metrics are computed twice: *unparseable → Others* counts a prediction whose "
    'strategy could not be parsed as "Others" (Kang et al.\'s scorer); *unparseable excluded* '
    "drops those turns (DecoupledESC's bias.py, which reports their share).",
    "Q = macro-F1 and weighted-F1 from scikit-learn over the strategies present in gold or "
    "predictions (both protocols).",
    "B = population standard deviation of the 8 Bradley–Terry strategy preferences fitted on the "
    "confusion counts (w_ij = times strategy i was predicted for gold j, diagonal excluded), "
    "normalised to sum to 8 (Kang et al., ACL 2024; scorer github.com/1eastar/EmotionalSupport "
    "metrics.py, reused by DecoupledESC src/evaluation/bias.py). 0 is unbiased; sqrt(7) ≈ 2.65 is "
    "a constant predictor. *Paper protocol*: the released fit, 20 Gauss–Seidel sweeps from 1 "
    "with geometric-mean normalisation after each sweep, undefined (–) where that code divides "
    "0 by 0. *Our protocol*: the same update iterated to convergence, with the limits defined "
    "(unobserved strategies 1.0, dominated ones 0); see esc_dist/eval/preference.py.",
]
OURS_TEXT_DEFINITIONS = [
    "Our protocol, replies: BLEU-n = corpus BLEU with uniform weights over 1..n-grams "
    "(sacrebleu, lower-cased, 13a tokens, exp smoothing = NIST method 3); ROUGE-L = rouge-score "
    "F-measure (beta 1), averaged over responses; Distinct-n = unique/total n-grams over all "
    "responses (corpus) and the mean of per-response ratios; unigram F1 = token-overlap F1 "
    "averaged over responses; tokens: lower-cased 13a.",
]


def _paper_text():
    from . import paper_text

    return paper_text


def decode_scores(predictions: Sequence[Prediction]) -> dict:
    """What one decode's predictions score: strategy metrics (both B fits) and the reply metrics
    of both protocols."""
    gold = [p.gold_strategy for p in predictions]
    pred = [p.pred_strategy for p in predictions]
    hyps, refs = [p.pred_reply for p in predictions], [p.gold_reply for p in predictions]
    return {
        "strategy": strategy_metrics(gold, pred),
        "text": text_metrics(hyps, refs),
        "paper_text": _paper_text().paper_text_metrics(hyps, refs),
    }


def protocol_headline(scores: dict, protocol: str) -> dict[str, Any]:
    """The headline values of one decode under ``protocol``."""
    s = scores["strategy"]
    n = s["n_turns"]
    h: dict[str, Any] = {
        "turns": n,
        "unparseable": s["unparseable"],
        "unparseable_rate": s["unparseable"] / n,
    }
    for variant in VARIANTS:
        v = s[variant]
        for key in STRATEGY_HEADLINE:
            src = "B_kang" if key == "B" and protocol == "paper" else key
            h[f"{key}_{variant}"] = None if v is None else v[src]
    text = scores["paper_text" if protocol == "paper" else "text"]
    h.update({k: text[k] for k in TEXT_HEADLINE[protocol]})
    return h


def mean_and_std(headlines: Sequence[dict]) -> tuple[dict, dict | None]:
    """Per key: the mean over decodes and the sample standard deviation (None for one decode);
    None where any decode's value is None."""
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for key in headlines[0]:
        values = [h[key] for h in headlines]
        if any(v is None for v in values):
            mean[key] = std[key] = None
        elif len(values) == 1:
            mean[key], std[key] = values[0], None
        else:
            mean[key] = statistics.fmean(values)
            std[key] = statistics.stdev(values)
    return mean, (std if len(headlines) > 1 else None)


def _counts(predictions: Sequence[Prediction], strategy: dict) -> dict:
    n = len(predictions)
    unparseable = strategy["unparseable"]
    predicted = Counter(p.pred_strategy for p in predictions if p.pred_strategy is not None)
    gold = [p.gold_strategy for p in predictions]
    return {
        "turns": n,
        "dialogues": len({p.dialogue_id for p in predictions}),
        "unparseable": unparseable,
        "unparseable_rate": unparseable / n,
        "modes": dict(sorted(Counter(p.mode for p in predictions).items())),
        "gold_strategies": {s: gold.count(s) for s in STRATEGIES},
        "predicted_strategies": {
            **{s: predicted.get(s, 0) for s in STRATEGIES},
            "(unparseable)": unparseable,
        },
    }


def gold_key(predictions: Sequence[Prediction]) -> str:
    return sha256_json(sorted([p.id, p.gold_strategy, p.gold_reply] for p in predictions))


def decoding_warnings(protocol: str, decoding: dict | None, decodes: int) -> list[str]:
    """Why a report's numbers are not those of its protocol's decoding (none when they are)."""
    if protocol != "paper":
        return []
    if not decoding:
        return [
            "the decoding of these predictions is unknown (no inference manifest beside "
            "them): the paper protocol's metrics, perhaps not its decoding"
        ]
    if any(decoding.get(k) != v for k, v in PAPER_DECODING.items()) or decoding.get("top_k"):
        return [
            "these predictions were not decoded as the paper does (sampled, temperature "
            "0.7, top-p 0.95): its metrics on other decoding, not comparable with published "
            "figures"
        ]
    if decodes < 2:
        return ["one sampled decode: no standard deviation over seeds"]
    return []


# ---------------------------------------------------------------------------------------------
# Building and writing a report


def build_report(
    decodes: Sequence[Sequence[Prediction]],
    *,
    name: str = "",
    sources: Sequence[dict] = (),
    protocol: str = "paper",
    decoding: dict | None = None,
    llm_scores: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """All metrics of already-loaded predictions, one sequence per decode of the same turns (no
    files are read or written). ``extra`` (e.g. ``psych_errors``, ``adherence``) is copied in."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r} (expected {' or '.join(PROTOCOLS)})")
    if not decodes or not all(decodes):
        raise ValueError("no predictions to evaluate")
    key = gold_key(decodes[0])
    for i, d in enumerate(decodes[1:], 1):
        if gold_key(d) != key:
            raise ValueError(f"decode {i + 1} does not hold the same gold turns as the first")
    scores = [decode_scores(d) for d in decodes]
    heads = {p: [protocol_headline(sc, p) for sc in scores] for p in PROTOCOLS}
    protocols = {}
    for p in PROTOCOLS:
        mean, std = mean_and_std(heads[p])
        protocols[p] = {"headline": mean, "std": std}
    first = scores[0]
    return {
        "name": name,
        "protocol": protocol,
        "decodes": len(decodes),
        "decoding": decoding,
        "warnings": decoding_warnings(protocol, decoding, len(decodes)),
        "input": {
            **(dict(sources[0]) if sources else {}),
            "files": list(sources),
            "turns": len(decodes[0]),
            "gold_sha256": key,
        },
        "counts": _counts(decodes[0], first["strategy"]),
        "headline": dict(protocols[protocol]["headline"]),
        "protocols": protocols,
        "per_decode": [
            {
                "source": (sources[i]["path"] if i < len(sources) else None),
                **{p: heads[p][i] for p in PROTOCOLS},
            }
            for i in range(len(decodes))
        ],
        "strategy": first["strategy"],
        "text": first["text"],
        "paper_text": first["paper_text"],
        "llm_scores": llm_scores,
        **(extra or {}),
        "definitions": [
            *STRATEGY_DEFINITIONS,
            *_paper_text().DEFINITIONS,
            *OURS_TEXT_DEFINITIONS,
            *(extra or {}).get("definitions", []),
        ],
    }


def decoding_of(pred_path: Path) -> dict | None:
    """The decoding recorded in the inference manifest beside a predictions file, if any."""
    manifest = read_manifest(pred_path.parent) or {}
    decoding = (manifest.get("config") or {}).get("decoding")
    return decoding if isinstance(decoding, dict) else None


def evaluate(
    pred_paths: str | Path | Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    name: str | None = None,
    protocol: str = "paper",
    decoding: dict | None = None,
    llm_scores: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Score the predictions file(s) ``pred_paths`` (one per decode of the same turns) and write
    the report files into ``out_dir``.

    ``out_dir`` defaults to a ``report/`` directory next to the first file; ``name`` to its stem;
    ``decoding`` to what the inference manifest beside it records. ``llm_scores`` and ``extra``
    (any JSON-able dicts) are copied into the report and its Markdown. Returns the report dict
    (as written to ``report.json``).
    """
    paths = (
        [Path(pred_paths)] if isinstance(pred_paths, (str, Path)) else [Path(p) for p in pred_paths]
    )
    if not paths:
        raise ConfigError("no predictions file to evaluate")
    out = Path(out_dir) if out_dir is not None else paths[0].parent / "report"
    decodes = [load_predictions(p) for p in paths]
    for p, d in zip(paths[1:], decodes[1:]):
        if gold_key(d) != gold_key(decodes[0]):
            raise DataError(p, f"not a decode of the same gold turns as {paths[0]}")
    if decoding is None:
        decoding = decoding_of(paths[0])
    report = build_report(
        decodes,
        name=name or paths[0].stem,
        protocol=protocol,
        decoding=decoding,
        llm_scores=llm_scores,
        extra=extra,
        sources=[{"path": str(p), "sha256": sha256_file(p)} for p in paths],
    )
    write_report(report, out, paths)
    return report


# what a new report or comparison takes over from the one it replaces: its W&B files and the
# LLM judge's answer cache
KEEP = ("wandb", "llm_cache")
REPORT_FILES = (REPORT_JSON, REPORT_MD, CONFUSION_PNG, PREFERENCES_PNG)


def report_files(report: dict) -> tuple[str, ...]:
    return REPORT_FILES + ((ERRORS_PNG,) if report.get("psych_errors") else ())


def write_report(
    report: dict, out_dir: str | Path, inputs: Sequence[str | Path] = ()
) -> list[Path]:
    """Write report.json, report.md, confusion.png, preferences.png (errors.png) as one set, then
    manifest.json with their records (what a rerun and `compare` check them against): built in a
    staged directory that replaces ``out_dir`` whole, so that an interrupted eval leaves the old
    set as it was."""
    final = Path(out_dir)
    with staged_dir(final, "eval", inputs, keep=KEEP) as out:
        _write_report_files(report, out)
        write_manifest(
            out,
            {
                "stage": "eval",
                "name": report["name"],
                "outputs": {name: output_record(out, name) for name in report_files(report)},
            },
        )
    return [final / name for name in report_files(report)]


def _write_report_files(report: dict, out: Path) -> None:
    strategy = report["strategy"]
    primary = strategy["as_others"]
    excluded = strategy["excluded"]
    plot_confusion(
        confusion_with_unparseable(strategy),
        out / CONFUSION_PNG,
        title=f"{report['name'] or 'predictions'}: gold × predicted strategy "
        f"({strategy['unparseable']} unparseable)",
    )
    plot_preferences(
        {
            f"{VARIANT_TITLES[v]} (B = {strategy[v]['B']:.3f})": [
                strategy[v]["per_strategy"][s]["preference"] for s in STRATEGIES
            ]
            for v in VARIANTS
            if strategy[v] is not None
        },
        out / PREFERENCES_PNG,
        title=f"{report['name'] or 'predictions'}: strategy preferences "
        f"(B = {primary['B']:.3f}" + (f", excluded {excluded['B']:.3f})" if excluded else ")"),
    )
    if report.get("psych_errors"):
        from .plots import plot_error_rates

        plot_error_rates(
            {f"{backend} judge": rates for backend, rates in report["psych_errors"].items()},
            out / ERRORS_PNG,
            title=f"{report['name'] or 'predictions'}: psychological errors",
        )
    atomic_write_text(out / REPORT_MD, render_markdown(report))
    atomic_write_json(out / REPORT_JSON, report)


# ---------------------------------------------------------------------------------------------
# Weights & Biases


def _numeric(d: dict) -> dict[str, float]:
    return {
        k: v
        for k, v in flatten(d).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def log_report(run, report: dict, out_dir: str | Path) -> None:
    """Log a report to a W&B run: headline metrics (``eval/KEY``: the headline protocol's;
    ``eval/PROTOCOL/KEY`` and ``eval/PROTOCOL/std/KEY``: both), numeric LLM scores, error rates
    and adherence as summary values, a per-strategy ``wandb.Table``, and the figures as
    ``wandb.Image``. No-op for None."""
    if run is None:
        return
    import wandb

    summary = {f"eval/{k}": v for k, v in report["headline"].items() if v is not None}
    for protocol, values in report["protocols"].items():
        summary.update(
            {f"eval/{protocol}/{k}": v for k, v in values["headline"].items() if v is not None}
        )
        summary.update(
            {
                f"eval/{protocol}/std/{k}": v
                for k, v in (values["std"] or {}).items()
                if v is not None
            }
        )
    summary.update(
        {f"eval/llm/{k}": v for k, v in _numeric(report.get("llm_scores") or {}).items()}
    )
    for backend, errors in (report.get("psych_errors") or {}).items():
        summary.update(
            {f"eval/errors/{backend}/{k}": v for k, v in errors["rates"].items() if v is not None}
        )
        summary.update(
            {
                f"eval/errors/{backend}/none": errors["none"],
                f"eval/errors/{backend}/any_error": errors["any_error"],
            }
        )
    if report.get("adherence"):
        summary["eval/adherence"] = report["adherence"].get("adherence")
    run.summary.update(summary)
    s = report["strategy"]
    columns = [
        "strategy",
        "gold",
        "predicted",
        "precision",
        "recall",
        "f1",
        "preference",
        "f1_excluded",
        "preference_excluded",
    ]
    rows = []
    for name in STRATEGIES:
        a = s["as_others"]["per_strategy"][name]
        e = s["excluded"]["per_strategy"][name] if s["excluded"] else {}
        rows.append(
            [
                name,
                a["support"],
                a["predicted"],
                a["precision"],
                a["recall"],
                a["f1"],
                a["preference"],
                e.get("f1"),
                e.get("preference"),
            ]
        )
    payload: dict[str, Any] = {"eval/per_strategy": wandb.Table(columns=columns, data=rows)}
    out = Path(out_dir)
    for key, fname in (
        ("eval/confusion", CONFUSION_PNG),
        ("eval/preferences", PREFERENCES_PNG),
        ("eval/errors", ERRORS_PNG),
    ):
        if (out / fname).is_file():
            payload[key] = wandb.Image(str(out / fname))
    run.log(payload)
