"""Comparison of evaluation reports: several systems side by side under one protocol.

``compare`` writes ``comparison.json``, ``comparison.md`` (:mod:`.markdown`),
``comparison_preferences.png`` and, when the reports have psychological error rates,
``comparison_errors.png``; ``log_comparison`` sends it to W&B.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..constants import PROTOCOLS, VARIANTS
from ..errors import ConfigError, DataError, MissingInput
from ..io import atomic_write_json, atomic_write_text, read_json, require_verified
from ..names import check_name
from ..outputs import staged_dir
from ..strategies import STRATEGIES
from .markdown import VARIANT_TITLES, render_comparison_markdown
from .plots import plot_preferences
from .report import COMPARE_COLUMNS, KEEP, REPORT_JSON, decoding_warnings
from .views import COMPARISON_ERRORS_PNG, COMPARISON_PNG, preference_label

COMPARISON_JSON, COMPARISON_MD = "comparison.json", "comparison.md"
# columns without meaning for a generator given the gold strategies
GIVEN_STRATEGY_COLUMNS = ("Q", "weighted_f1", "accuracy", "B", "unparseable")
# the columns the two protocols define differently (shown under the other protocol too)
PROTOCOL_COLUMNS = ("B", "bleu_2", "rouge_l", "distinct_2")


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
        raise DataError(
            p,
            "not an evaluation report of `esc-dist eval` (expected keys name, headline, strategy)",
        )
    if not isinstance(report.get("protocols"), dict) or set(report["protocols"]) != set(PROTOCOLS):
        raise DataError(
            p,
            "an evaluation report without both protocols (written by an older "
            "esc-dist): run `esc-dist eval` on its predictions again",
        )
    return report


def errors_of(report: dict) -> dict | None:
    """A report's psychological error rates: the LLM judge's when it ran (it sees all five
    types), else the offline rules'."""
    errors = report.get("psych_errors") or {}
    return errors.get("openai") or errors.get("offline")


def compare(
    report_dirs_or_files: Sequence[str | Path],
    names: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    *,
    variant: str = "as_others",
    protocol: str | None = None,
) -> tuple[dict, str]:
    """Put several reports side by side; returns (comparison dict, Markdown).

    The comparison also holds (``other``) the columns the two protocols define differently
    (B, BLEU-2, ROUGE-L, Distinct-2) under the other protocol, so that both are reported.

    ``names`` label the systems (intended: Vanilla-SFT, Vanilla-DPO, Decoupled-SFT,
    Decoupled-DPO); by default each report's name. Values are those of ``protocol`` (default:
    the first report's headline protocol), mean and std over each report's decodes; strategy
    columns use ``variant``. When ``out_dir`` is given, comparison.json, comparison.md,
    comparison_preferences.png and (when the reports have error rates) comparison_errors.png are
    written.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    paths = [Path(p) for p in report_dirs_or_files]
    if not paths:
        raise ConfigError("nothing to compare")
    reports = [load_report(p) for p in paths]
    protocol = protocol or reports[0]["protocol"]
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    given = names is not None
    names = (
        list(names)
        if names is not None
        else [
            r["name"] or (p.parent.name if p.suffix == ".json" else p.name)
            for r, p in zip(reports, paths)
        ]
    )
    if len(names) != len(reports):
        raise ConfigError(f"{len(names)} names for {len(reports)} reports")
    for name in names:  # they title rows, legends and W&B keys
        check_name(
            name, "system name" if given else "system name (from the report; --names gives another)"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"system names must be distinct, got {names}")
    pref_key = "preference_kang" if protocol == "paper" else "preference"
    systems, warnings = [], []
    other = next(p for p in PROTOCOLS if p != protocol)
    other_systems = []
    for name, path, r in zip(names, paths, reports):
        values, std = _values(r, protocol, variant)
        s = r["strategy"][variant]
        errors = errors_of(r)
        gold = set(r["counts"]["modes"]) == {"generator-gold"}
        if gold:  # strategies given, not predicted: nothing to rank
            values.update(dict.fromkeys(GIVEN_STRATEGY_COLUMNS))
        other_values, other_std = _values(r, other, variant)
        other_systems.append(
            {
                "name": name,
                "gold_strategies": gold,
                "values": {
                    k: None if gold and k in GIVEN_STRATEGY_COLUMNS else other_values[k]
                    for k in PROTOCOL_COLUMNS
                },
                "std": {k: other_std[k] for k in PROTOCOL_COLUMNS},
            }
        )
        values["errors_any"] = errors["any_error"] if errors else None
        values["adherence"] = (r.get("adherence") or {}).get("adherence")
        # where the released 20-sweep fit is undefined, the converged fit stands in, marked
        preferences = {st: s["per_strategy"][st][pref_key] for st in STRATEGIES} if s else None
        fit = "converged" if protocol == "ours" else "paper"
        if preferences and any(v is None for v in preferences.values()):
            preferences = {st: s["per_strategy"][st]["preference"] for st in STRATEGIES}
            fit = "converged"
        b_converged = (
            other_values["B"] if protocol == "paper" and values["B"] is None and not gold else None
        )
        systems.append(
            {
                "name": name,
                "report": str(path),
                "input_sha256": r["input"].get("sha256"),
                "gold_sha256": r["input"].get("gold_sha256"),
                "decodes": r["decodes"],
                "decoding": r.get("decoding"),
                "values": values,
                "std": std,
                "gold_strategies": gold,
                "errors": errors,
                "adherence_n": (r.get("adherence") or {}).get("evaluated"),
                "preferences": preferences,
                "preferences_fit": fit,
                # B of the converged fit where the paper's is undefined (shown in its place, marked)
                "B_converged": b_converged,
            }
        )
        warnings += [
            f"{name}: {w}" for w in decoding_warnings(protocol, r.get("decoding"), r["decodes"])
        ]
    best = {}
    for key, direction in COMPARE_COLUMNS.items():
        vals = [(x["values"][key], x["name"]) for x in systems if x["values"][key] is not None]
        if direction and len(vals) > 1:
            target = (min if direction == "min" else max)(v for v, _ in vals)
            best[key] = [n for v, n in vals if v == target]
    comparison = {
        "protocol": protocol,
        "variant": variant,
        "columns": list(COMPARE_COLUMNS),
        "systems": systems,
        "best": best,
        "warnings": warnings,
        # the columns whose definitions differ, under the other protocol
        "other": {"protocol": other, "columns": list(PROTOCOL_COLUMNS), "systems": other_systems},
        "same_gold": len({x["gold_sha256"] for x in systems}) == 1,
    }
    markdown = render_comparison_markdown(comparison)
    if out_dir is not None:
        with staged_dir(out_dir, "compare", paths, keep=KEEP) as out:
            _write_comparison_files(comparison, systems, markdown, out)
    return comparison, markdown


def _values(report: dict, protocol: str, variant: str) -> tuple[dict, dict]:
    """A report's comparison columns under ``protocol``: (means, standard deviations)."""
    h = report["protocols"][protocol]["headline"]
    std = report["protocols"][protocol]["std"] or {}
    return (
        {key: h.get(f"{key}_{variant}", h.get(key)) for key in COMPARE_COLUMNS},
        {key: std.get(f"{key}_{variant}", std.get(key)) for key in COMPARE_COLUMNS},
    )


def _write_comparison_files(
    comparison: dict, systems: list[dict], markdown: str, out: Path
) -> None:
    # a system whose released 20-sweep fit is undefined is drawn with its converged fit, so
    # labelled (the figure is never blank)
    plot_preferences(
        {
            preference_label(x, comparison["protocol"]): [x["preferences"][st] for st in STRATEGIES]
            for x in systems
            if x["preferences"]
        },
        out / COMPARISON_PNG,
        title="Strategy preferences by system "
        f"({VARIANT_TITLES[comparison['variant']]}, "
        f"{comparison['protocol']} protocol)",
    )
    errors = {x["name"]: x["errors"] for x in systems if x["errors"]}
    if errors:
        from .plots import plot_error_rates

        plot_error_rates(
            errors,
            out / COMPARISON_ERRORS_PNG,
            title="Psychological errors of the replies by system",
        )
    atomic_write_text(out / COMPARISON_MD, markdown)
    atomic_write_json(out / COMPARISON_JSON, comparison)


def log_comparison(run, comparison: dict, out_dir: str | Path) -> None:
    """Log a comparison to a W&B run: each system's values as summary ``compare/NAME/KEY``, the
    comparison ``wandb.Table`` and the preference and error figures. No-op for None."""
    if run is None:
        return
    import wandb

    run.summary.update(
        {
            f"compare/{x['name']}/{k}": v
            for x in comparison["systems"]
            for k, v in x["values"].items()
            if v is not None
        }
    )
    columns = ["system", *comparison["columns"], *STRATEGIES]
    rows = [
        [
            x["name"],
            *(x["values"][k] for k in comparison["columns"]),
            *((x["preferences"] or {}).get(st) for st in STRATEGIES),
        ]
        for x in comparison["systems"]
    ]
    payload: dict[str, Any] = {"compare/systems": wandb.Table(columns=columns, data=rows)}
    for key, name in (
        ("compare/preferences", COMPARISON_PNG),
        ("compare/errors", COMPARISON_ERRORS_PNG),
    ):
        if (Path(out_dir) / name).is_file():
            payload[key] = wandb.Image(str(Path(out_dir) / name))
    run.log(payload)
