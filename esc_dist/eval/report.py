"""Evaluation reports: score a predictions file, write JSON + Markdown + figures, compare runs, log to W&B.

``evaluate`` writes into its output directory::

    report.json        every metric, the counts and the input file's sha256
    report.md          headline table, per-strategy table, confusion table, definitions
    confusion.png      gold × predicted heat map (with the unparseable column)
    preferences.png    the 8 Bradley–Terry preferences against the ideal 1.0
    manifest.json      the sha256 of each of them (written last)

``compare`` puts several reports side by side (``comparison.json``, ``comparison.md``,
``comparison_preferences.png``). Strategy metrics exist in two variants (see
:mod:`esc_dist.eval.strategy`): ``as_others`` (unparseable predictions counted as "Others") and
``excluded`` (unparseable turns left out); headline keys carry the variant in their name.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ..constants import VARIANTS
from ..errors import ConfigError, DataError, MissingInput
from ..io import (atomic_write_json, atomic_write_text, output_record, read_json, require_verified,
                  sha256_file, sha256_json, write_manifest)
from ..outputs import staged_dir
from ..strategies import STRATEGIES
from .plots import plot_confusion, plot_preferences
from .predictions import Prediction, load_predictions
from .strategy import strategy_metrics
from .text import MAX_BLEU, MAX_DISTINCT, text_metrics

REPORT_JSON, REPORT_MD = "report.json", "report.md"
CONFUSION_PNG, PREFERENCES_PNG = "confusion.png", "preferences.png"
COMPARISON_JSON, COMPARISON_MD = "comparison.json", "comparison.md"
COMPARISON_PNG = "comparison_preferences.png"

VARIANT_TITLES = {"as_others": "unparseable → Others", "excluded": "unparseable excluded"}
STRATEGY_HEADLINE = ("accuracy", "Q", "weighted_f1", "B")
TEXT_HEADLINE = (*(f"bleu_{n}" for n in range(1, MAX_BLEU + 1)), "rouge_l",
                 *(f"distinct_{n}" for n in range(1, MAX_DISTINCT + 1)),
                 *(f"distinct_{n}_per_response" for n in range(1, MAX_DISTINCT + 1)),
                 "unigram_f1", "mean_length")
LABELS = {
    "accuracy": "Accuracy (%)", "Q": "Q = macro-F1 (%)", "weighted_f1": "Weighted-F1 (%)",
    "B": "B = preference bias", "rouge_l": "ROUGE-L (%)", "unigram_f1": "Unigram F1 (%)",
    "mean_length": "Mean length (tokens)", "unparseable": "Unparseable", "turns": "Turns",
    **{f"bleu_{n}": f"BLEU-{n} (%)" for n in range(1, MAX_BLEU + 1)},
    **{f"distinct_{n}": f"Distinct-{n}, corpus (%)" for n in range(1, MAX_DISTINCT + 1)},
    **{f"distinct_{n}_per_response": f"Distinct-{n}, per-response mean (%)"
       for n in range(1, MAX_DISTINCT + 1)},
}
PERCENT = {"accuracy", "Q", "weighted_f1", "rouge_l", "unigram_f1",
           *(f"bleu_{n}" for n in range(1, MAX_BLEU + 1)),
           *(f"distinct_{n}" for n in range(1, MAX_DISTINCT + 1)),
           *(f"distinct_{n}_per_response" for n in range(1, MAX_DISTINCT + 1))}
# compare(): column key -> which direction is better (None: not ranked)
COMPARE_COLUMNS: dict[str, str | None] = {
    "Q": "max", "weighted_f1": "max", "accuracy": "max", "B": "min", "bleu_2": "max",
    "rouge_l": "max", "distinct_2": "max", "unparseable": "min", "turns": None}

DEFINITIONS = [
    "Strategy metrics are computed twice: *unparseable → Others* counts a prediction whose "
    "strategy could not be parsed as \"Others\"; *unparseable excluded* drops those turns.",
    "Q = macro-F1 and weighted-F1 from scikit-learn over the strategies present in gold or "
    "predictions.",
    "B = population standard deviation of the 8 Bradley–Terry strategy preferences fitted on the "
    "confusion counts (w_ij = times strategy i was predicted for gold j, diagonal excluded), "
    "iterated to convergence and normalised to sum to 8 (Kang et al., ACL 2024; released scorer "
    "github.com/1eastar/EmotionalSupport metrics.py). 0 is unbiased; sqrt(7) ≈ 2.65 is a "
    "constant predictor. Unobserved strategies get 1.0; see esc_dist/eval/preference.py.",
    "BLEU-n: corpus BLEU with uniform weights over 1..n-grams (sacrebleu, lower-cased, 13a "
    "tokens, exp smoothing = NIST method 3). ROUGE-L: rouge-score F-measure, averaged over "
    "responses. Distinct-n: unique/total n-grams over all responses (corpus) and the mean of "
    "per-response ratios. Unigram F1: token-overlap F1 averaged over responses. Tokens: "
    "lower-cased 13a.",
]


# ---------------------------------------------------------------------------------------------
# Building and writing a report


def build_report(predictions: Sequence[Prediction], *, name: str = "", source: dict | None = None,
                 llm_scores: dict | None = None) -> dict:
    """All metrics of already-loaded predictions (no files are read or written)."""
    if not predictions:
        raise ValueError("no predictions to evaluate")
    gold = [p.gold_strategy for p in predictions]
    pred = [p.pred_strategy for p in predictions]
    strategy = strategy_metrics(gold, pred)
    text = text_metrics([p.pred_reply for p in predictions], [p.gold_reply for p in predictions])
    n = len(predictions)
    unparseable = strategy["unparseable"]
    predicted = Counter(p for p in pred if p is not None)
    counts = {
        "turns": n,
        "dialogues": len({p.dialogue_id for p in predictions}),
        "unparseable": unparseable,
        "unparseable_rate": unparseable / n,
        "modes": dict(sorted(Counter(p.mode for p in predictions).items())),
        "gold_strategies": {s: gold.count(s) for s in STRATEGIES},
        "predicted_strategies": {**{s: predicted.get(s, 0) for s in STRATEGIES},
                                 "(unparseable)": unparseable},
    }
    headline: dict[str, Any] = {"turns": n, "unparseable": unparseable,
                                "unparseable_rate": unparseable / n}
    for variant in VARIANTS:
        scores = strategy[variant]
        for key in STRATEGY_HEADLINE:
            headline[f"{key}_{variant}"] = None if scores is None else scores[key]
    headline.update({k: text[k] for k in TEXT_HEADLINE})
    gold_key = sha256_json(sorted([p.id, p.gold_strategy, p.gold_reply] for p in predictions))
    return {
        "name": name,
        "input": {**(source or {}), "turns": n, "gold_sha256": gold_key},
        "counts": counts,
        "headline": headline,
        "strategy": strategy,
        "text": text,
        "llm_scores": llm_scores,
        "definitions": DEFINITIONS,
    }


def evaluate(pred_path: str | Path, out_dir: str | Path | None = None, *, name: str | None = None,
             llm_scores: dict | None = None) -> dict:
    """Score the predictions file ``pred_path`` and write the report files into ``out_dir``.

    ``out_dir`` defaults to a ``report/`` directory next to the predictions; ``name`` to the
    file's stem. ``llm_scores`` (any JSON-able dict, e.g. LLM-judge averages) is copied into the
    report and its Markdown. Returns the report dict (as written to ``report.json``).
    """
    pred_path = Path(pred_path)
    out = Path(out_dir) if out_dir is not None else pred_path.parent / "report"
    predictions = load_predictions(pred_path)
    report = build_report(predictions, name=name or pred_path.stem, llm_scores=llm_scores,
                          source={"path": str(pred_path), "sha256": sha256_file(pred_path)})
    write_report(report, out, [pred_path])
    return report


# what a new report or comparison takes over from the one it replaces: its W&B files and the
# LLM judge's answer cache
KEEP = ("wandb", "llm_cache")
REPORT_FILES = (REPORT_JSON, REPORT_MD, CONFUSION_PNG, PREFERENCES_PNG)


def write_report(report: dict, out_dir: str | Path, inputs: Sequence[str | Path] = ()
                 ) -> list[Path]:
    """Write report.json, report.md, confusion.png and preferences.png as one set, then
    manifest.json with their records (what a rerun and `compare` check them against): built in a
    staged directory that replaces ``out_dir`` whole, so that an interrupted eval leaves the old
    set as it was."""
    final = Path(out_dir)
    with staged_dir(final, "eval", inputs, keep=KEEP) as out:
        _write_report_files(report, out)
        write_manifest(out, {"stage": "eval", "name": report["name"],
                             "outputs": {name: output_record(out, name)
                                         for name in REPORT_FILES}})
    return [final / name for name in REPORT_FILES]


def _write_report_files(report: dict, out: Path) -> None:
    strategy = report["strategy"]
    primary = strategy["as_others"]
    excluded = strategy["excluded"]
    plot_confusion(confusion_with_unparseable(strategy), out / CONFUSION_PNG,
                   title=f"{report['name'] or 'predictions'}: gold × predicted strategy "
                         f"({strategy['unparseable']} unparseable)")
    plot_preferences(
        {f"{VARIANT_TITLES[v]} (B = {strategy[v]['B']:.3f})":
         [strategy[v]["per_strategy"][s]["preference"] for s in STRATEGIES]
         for v in VARIANTS if strategy[v] is not None},
        out / PREFERENCES_PNG,
        title=f"{report['name'] or 'predictions'}: strategy preferences "
              f"(B = {primary['B']:.3f}"
              + (f", excluded {excluded['B']:.3f})" if excluded else ")"))
    atomic_write_text(out / REPORT_MD, render_markdown(report))
    atomic_write_json(out / REPORT_JSON, report)


def confusion_with_unparseable(strategy: dict) -> list[list[int]]:
    """Gold rows × 9 columns: parsed predictions of the 8 strategies, then the unparseable ones.

    (In the ``as_others`` confusion matrix the unparseable are inside the "Others" column.)
    """
    others = STRATEGIES.index("Others")
    rows = []
    for i, gold in enumerate(STRATEGIES):
        row = list(strategy["as_others"]["confusion"][i])
        row[others] -= strategy["unparseable_by_gold"][gold]
        rows.append(row + [strategy["unparseable_by_gold"][gold]])
    return rows


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if key in PERCENT:
            return f"{100 * value:.2f}"
        return f"{value:.2f}" if key == "mean_length" else f"{value:.4f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def render_markdown(report: dict) -> str:
    s, t, c, src = report["strategy"], report["text"], report["counts"], report["input"]
    title = report["name"] or src.get("path", "predictions")
    parts = [f"# Evaluation report: {title}", ""]
    if "path" in src:
        parts.append(f"Predictions: `{src['path']}` (sha256 `{src.get('sha256', '?')[:16]}…`)  ")
    modes = ", ".join(f"{k}: {v}" for k, v in c["modes"].items())
    parts += [f"{c['turns']} turns in {c['dialogues']} dialogues ({modes}); "
              f"**{c['unparseable']} unparseable strategy predictions** "
              f"({100 * c['unparseable_rate']:.1f}%).", ""]

    parts += ["## Strategy", ""]
    header = ["Metric"] + [f"{VARIANT_TITLES[v]} (n = {s[v]['n'] if s[v] else 0})"
                           for v in VARIANTS]
    rows = [[LABELS[k]] + [_fmt(k, s[v][k] if s[v] else None) for v in VARIANTS]
            for k in ("Q", "weighted_f1", "accuracy", "B")]
    parts += [_table(header, rows), ""]

    parts += ["## Replies", "", _table(["Metric", "Value"],
                                       [[LABELS[k], _fmt(k, t[k])] for k in TEXT_HEADLINE]), ""]

    parts += [f"## Per strategy ({VARIANT_TITLES['as_others']}; excluded in the last columns)", ""]
    header = ["Strategy", "Gold", "Predicted", "Precision (%)", "Recall (%)", "F1 (%)",
              "Preference", "F1 excl. (%)", "Preference excl."]
    rows = []
    for name in STRATEGIES:
        a = s["as_others"]["per_strategy"][name]
        e = s["excluded"]["per_strategy"][name] if s["excluded"] else None
        rows.append([name, str(a["support"]), str(a["predicted"]), _fmt("Q", a["precision"]),
                     _fmt("Q", a["recall"]), _fmt("Q", a["f1"]), f"{a['preference']:.4f}",
                     _fmt("Q", e["f1"]) if e else "–",
                     f"{e['preference']:.4f}" if e else "–"])
    parts += [_table(header, rows), ""]
    fit = s["as_others"]["preference_fit"]
    notes = []
    if fit["unobserved"]:
        notes.append(f"no evidence, preference fixed at 1.0: {', '.join(fit['unobserved'])}")
    if fit["dominated"]:
        notes.append(f"never predicted in place of a strategy that beats them, preference → 0: "
                     f"{', '.join(fit['dominated'])}")
    if not fit["converged"]:
        notes.append(f"the Bradley–Terry fit did NOT converge in {fit['iterations']} sweeps")
    if notes:
        parts += ["Preference notes: " + "; ".join(notes) + ".", ""]

    parts += ["## Confusion (gold rows × predicted columns)", ""]
    header = ["gold \\ predicted"] + list(STRATEGIES) + ["(unparseable)"]
    rows = [[g] + [str(x) for x in row]
            for g, row in zip(STRATEGIES, confusion_with_unparseable(s))]
    parts += [_table(header, rows), "",
              "(The Others column counts parsed \"Others\" predictions only; the unparseable "
              "column holds the rest.)", ""]

    if report.get("llm_scores"):
        flat = _flatten(report["llm_scores"])
        parts += ["## LLM scores", "", _table(["Score", "Value"],
                                              [[k, _fmt("", v)] for k, v in flat.items()]), ""]

    parts += ["## Figures", "", f"![confusion]({CONFUSION_PNG})", "",
              f"![preferences]({PREFERENCES_PNG})", "", "## Definitions", ""]
    parts += [f"- {d}" for d in report["definitions"]]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# Comparison


def load_report(path: str | Path) -> dict:
    """A report.json, given the file or the directory holding it."""
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_JSON
    if not p.is_file():
        raise MissingInput("no evaluation report (report.json of `esc-dist eval`)", path=p)
    require_verified(p.parent)
    try:
        report = read_json(p)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deeply
        raise DataError(p, f"not an evaluation report: unreadable JSON ({e})") from None
    if not isinstance(report, dict) or not {"name", "headline", "strategy"} <= set(report):
        raise DataError(p, "not an evaluation report of `esc-dist eval` (expected keys name, "
                           "headline, strategy)")
    return report


def compare(report_dirs_or_files: Sequence[str | Path], names: Sequence[str] | None = None,
            out_dir: str | Path | None = None, *, variant: str = "as_others") -> tuple[dict, str]:
    """Put several reports side by side; returns (comparison dict, Markdown).

    ``names`` label the systems (intended: Vanilla-SFT, Vanilla-DPO, Decoupled-SFT,
    Decoupled-DPO); by default each report's name. Strategy columns use ``variant``. When
    ``out_dir`` is given, comparison.json, comparison.md and comparison_preferences.png are written.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    paths = [Path(p) for p in report_dirs_or_files]
    if not paths:
        raise ConfigError("nothing to compare")
    reports = [load_report(p) for p in paths]
    names = list(names) if names is not None else [r["name"] or str(p)
                                                   for r, p in zip(reports, paths)]
    if len(names) != len(reports):
        raise ConfigError(f"{len(names)} names for {len(reports)} reports")
    if len(set(names)) != len(names):
        raise ConfigError(f"system names must be distinct, got {names}")
    systems = []
    for name, path, r in zip(names, paths, reports):
        h, s = r["headline"], r["strategy"][variant]
        values = {}
        for key in COMPARE_COLUMNS:
            values[key] = h.get(f"{key}_{variant}", h.get(key))
        systems.append({
            "name": name, "report": str(path), "input_sha256": r["input"].get("sha256"),
            "gold_sha256": r["input"].get("gold_sha256"), "values": values,
            "preferences": ({st: s["per_strategy"][st]["preference"] for st in STRATEGIES}
                            if s else None)})
    best = {}
    for key, direction in COMPARE_COLUMNS.items():
        vals = [(x["values"][key], x["name"]) for x in systems if x["values"][key] is not None]
        if direction and len(vals) > 1:
            target = (min if direction == "min" else max)(v for v, _ in vals)
            best[key] = [n for v, n in vals if v == target]
    comparison = {"variant": variant, "columns": list(COMPARE_COLUMNS), "systems": systems,
                  "best": best, "same_gold": len({x["gold_sha256"] for x in systems}) == 1}
    markdown = render_comparison_markdown(comparison)
    if out_dir is not None:
        with staged_dir(out_dir, "compare", paths, keep=KEEP) as out:
            _write_comparison_files(comparison, systems, markdown, out)
    return comparison, markdown


def _write_comparison_files(comparison: dict, systems: list[dict], markdown: str,
                            out: Path) -> None:
    plot_preferences({x["name"]: [x["preferences"][st] for st in STRATEGIES]
                      for x in systems if x["preferences"]}, out / COMPARISON_PNG,
                     title="Strategy preferences by system "
                           f"({VARIANT_TITLES[comparison['variant']]})")
    atomic_write_text(out / COMPARISON_MD, markdown)
    atomic_write_json(out / COMPARISON_JSON, comparison)


def render_comparison_markdown(comparison: dict) -> str:
    variant = comparison["variant"]
    header = ["System"] + [LABELS[k] for k in comparison["columns"]]
    rows = []
    for x in comparison["systems"]:
        row = [x["name"]]
        for k in comparison["columns"]:
            cell = _fmt(k, x["values"][k])
            row.append(f"**{cell}**" if x["name"] in comparison["best"].get(k, []) else cell)
        rows.append(row)
    parts = ["# Comparison", "",
             f"Strategy metrics with {VARIANT_TITLES[variant]} (`{variant}`); best value in bold "
             "(lowest for B and unparseable). Distinct-2 is corpus-level.", "",
             _table(header, rows), ""]
    if not comparison["same_gold"]:
        parts += ["**Warning:** the systems were not scored on the same gold turns.", ""]
    pref_rows = [[st] + [f"{x['preferences'][st]:.3f}" if x["preferences"] else "–"
                         for x in comparison["systems"]] for st in STRATEGIES]
    parts += ["## Strategy preferences (ideal 1.0)", "",
              _table(["Strategy"] + [x["name"] for x in comparison["systems"]], pref_rows), "",
              f"![preferences]({COMPARISON_PNG})", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Weights & Biases


def _numeric(d: dict) -> dict[str, float]:
    return {k: v for k, v in _flatten(d).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_report(run, report: dict, out_dir: str | Path) -> None:
    """Log a report to a W&B run: headline metrics (and numeric LLM scores) as summary values,
    a per-strategy ``wandb.Table``, and the two figures as ``wandb.Image``. No-op for None."""
    if run is None:
        return
    import wandb

    summary = {f"eval/{k}": v for k, v in report["headline"].items() if v is not None}
    summary.update({f"eval/llm/{k}": v for k, v in _numeric(report.get("llm_scores") or {}).items()})
    run.summary.update(summary)
    s = report["strategy"]
    columns = ["strategy", "gold", "predicted", "precision", "recall", "f1", "preference",
               "f1_excluded", "preference_excluded"]
    rows = []
    for name in STRATEGIES:
        a = s["as_others"]["per_strategy"][name]
        e = s["excluded"]["per_strategy"][name] if s["excluded"] else {}
        rows.append([name, a["support"], a["predicted"], a["precision"], a["recall"], a["f1"],
                     a["preference"], e.get("f1"), e.get("preference")])
    payload: dict[str, Any] = {"eval/per_strategy": wandb.Table(columns=columns, data=rows)}
    out = Path(out_dir)
    for key, fname in (("eval/confusion", CONFUSION_PNG), ("eval/preferences", PREFERENCES_PNG)):
        if (out / fname).is_file():
            payload[key] = wandb.Image(str(out / fname))
    run.log(payload)


def log_comparison(run, comparison: dict, out_dir: str | Path) -> None:
    """Log a comparison to a W&B run: each system's values as summary ``compare/NAME/KEY``, the
    comparison ``wandb.Table`` and the preference figure. No-op for None."""
    if run is None:
        return
    import wandb

    run.summary.update({f"compare/{x['name']}/{k}": v for x in comparison["systems"]
                        for k, v in x["values"].items() if v is not None})
    columns = ["system", *comparison["columns"], *STRATEGIES]
    rows = [[x["name"], *(x["values"][k] for k in comparison["columns"]),
             *((x["preferences"] or {}).get(st) for st in STRATEGIES)]
            for x in comparison["systems"]]
    payload: dict[str, Any] = {"compare/systems": wandb.Table(columns=columns, data=rows)}
    png = Path(out_dir) / COMPARISON_PNG
    if png.is_file():
        payload["compare/preferences"] = wandb.Image(str(png))
    run.log(payload)
