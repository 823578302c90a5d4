"""The Markdown of reports and comparisons (``report.md``, ``comparison.md``): tables of the values
that :mod:`.report` computed. Nothing here computes a metric."""

from __future__ import annotations

from typing import Any, Sequence

from ..constants import PROTOCOLS, VARIANTS
from ..strategies import STRATEGIES
from .text import MAX_BLEU, MAX_DISTINCT
from .views import (
    COMPARISON_ERRORS_PNG,
    COMPARISON_PNG,
    CONFUSION_PNG,
    ERRORS_PNG,
    PREFERENCES_PNG,
    confusion_with_unparseable,
    preference_label,
)

VARIANT_TITLES = {"as_others": "unparseable → Others", "excluded": "unparseable excluded"}
PROTOCOL_TITLES = {"paper": "paper protocol", "ours": "our protocol"}
LABELS = {
    "accuracy": "Accuracy (%)",
    "Q": "Q = macro-F1 (%)",
    "weighted_f1": "Weighted-F1 (%)",
    "B": "B = preference bias",
    "rouge_l": "ROUGE-L (%)",
    "unigram_f1": "Unigram F1 (%)",
    "mean_length": "Mean length (tokens)",
    "unparseable": "Unparseable",
    "turns": "Turns",
    "errors_any": "Replies with an error (%)",
    "adherence": "Strategy adherence (%)",
    **{f"bleu_{n}": f"BLEU-{n} (%)" for n in range(1, MAX_BLEU + 1)},
    **{f"distinct_{n}": f"Distinct-{n} (%)" for n in range(1, MAX_DISTINCT + 1)},
    **{
        f"distinct_{n}_per_response": f"Distinct-{n}, per-response mean (%)"
        for n in range(1, MAX_DISTINCT + 1)
    },
}
PERCENT = {
    "accuracy",
    "Q",
    "weighted_f1",
    "rouge_l",
    "unigram_f1",
    "errors_any",
    "adherence",
    *(f"bleu_{n}" for n in range(1, MAX_BLEU + 1)),
    *(f"distinct_{n}" for n in range(1, MAX_DISTINCT + 1)),
    *(f"distinct_{n}_per_response" for n in range(1, MAX_DISTINCT + 1)),
}

COUNTS = {"unparseable", "turns"}  # means of counts over decodes


def base_key(key: str) -> str:
    """``Q_as_others`` -> ``Q``: the metric a headline key names."""
    for variant in VARIANTS:
        if key.endswith("_" + variant):
            return key[: -len(variant) - 1]
    return key


def label(key: str) -> str:
    base = base_key(key)
    text = LABELS.get(base, key)
    return text if base == key else f"{text}, {VARIANT_TITLES[key[len(base) + 1 :]]}"


def fmt(key: str, value: Any, std: Any = None) -> str:
    """A value as the tables print it (percent for fractions), with ``± std`` when given."""
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float) and base_key(key) in COUNTS:
        if value.is_integer() and not std:
            return str(int(value))
        return f"{value:.2f}" + (f" ± {std:.2f}" if isinstance(std, float) else "")
    if isinstance(value, float):
        scale = 100 if base_key(key) in PERCENT else 1
        digits = 2 if scale == 100 or base_key(key) == "mean_length" else 4
        out = f"{scale * value:.{digits}f}"
        if isinstance(std, (int, float)) and not isinstance(std, bool):
            out += f" ± {scale * std:.{digits}f}"
        return out
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def decoding_text(decoding: dict | None, decodes: int) -> str:
    if not decoding:
        return f"{decodes} decode(s), decoding unknown (no inference manifest beside the files)"
    if decoding.get("do_sample"):
        how = (
            f"sampled (temperature {decoding.get('temperature')}, top-p "
            f"{decoding.get('top_p')}, top-k {decoding.get('top_k') or 'off'})"
        )
    else:
        how = "greedy"
    return f"{decodes} decode(s), {how}"


def _headline_table(report: dict) -> list[str]:
    """Every headline metric under both protocols, the report's own first."""
    own = report["protocol"]
    order = [own] + [p for p in PROTOCOLS if p != own]
    protocols = report["protocols"]
    keys: list[str] = []
    for p in order:
        keys += [k for k in protocols[p]["headline"] if k not in keys]
    rows = []
    for key in keys:
        if key in ("turns", "unparseable_rate"):
            continue
        rows.append(
            [label(key)]
            + [
                fmt(key, protocols[p]["headline"].get(key), (protocols[p]["std"] or {}).get(key))
                if key in protocols[p]["headline"]
                else "n/a"
                for p in order
            ]
        )
    header = ["Metric"] + [
        f"{PROTOCOL_TITLES[p]}{' (headline)' if p == own else ''}" for p in order
    ]
    return [table(header, rows)]


def _errors_section(errors: dict) -> list[str]:
    parts = ["## Psychological errors of the replies", ""]
    backends = list(errors)
    types: list[str] = []
    for b in backends:
        types += [t for t in errors[b]["rates"] if t not in types]
    rows = [
        [t]
        + [
            fmt("Q", errors[b]["rates"].get(t))
            if errors[b]["rates"].get(t) is not None
            else "not seen"
            for b in backends
        ]
        for t in types
    ]
    rows.append(["none"] + [fmt("Q", errors[b]["none"]) for b in backends])
    rows.append(["any error"] + [fmt("Q", errors[b]["any_error"]) for b in backends])
    rows.append(
        ["replies labelled"] + [f"{errors[b]['labelled']}/{errors[b]['n']}" for b in backends]
    )
    parts += [table(["Error (% of replies)"] + [f"{b} judge" for b in backends], rows), ""]
    return parts


def _adherence_section(adh: dict) -> list[str]:
    clf = adh.get("classifier") or {}
    ev = clf.get("evaluation") or {}
    gold = adh.get("gold_reference") or {}
    parts = [
        "## Strategy adherence of the replies",
        "",
        f"A reply → strategy classifier ({clf.get('features', '?')}; "
        f"{clf.get('model', '?')}), trained on {clf.get('train_size', '?')} gold training "
        f"replies, labels each reply; adherence is the share whose label is the strategy the "
        f"reply was asked to realise. On the {ev.get('n', '?')} gold replies of the "
        f"{ev.get('split', '?')} split the classifier is right "
        f"{fmt('Q', ev.get('accuracy'))}% "
        f"of the time (macro-F1 {fmt('Q', ev.get('macro_f1'))}%; majority rate "
        f"{fmt('Q', ev.get('majority_rate'))}%); on the gold replies of these turns "
        f"{fmt('Q', gold.get('adherence'))}%: the ceiling to read adherence against.",
        "",
    ]
    rows = [
        [
            s,
            str(v["n"]),
            fmt("Q", v["adherence"]),
            fmt("Q", (gold.get("per_strategy") or {}).get(s, {}).get("adherence")),
        ]
        for s, v in (adh.get("per_strategy") or {}).items()
    ]
    rows.append(
        [
            "**all**",
            str(adh.get("evaluated")),
            fmt("Q", adh.get("adherence")),
            fmt("Q", gold.get("adherence")),
        ]
    )
    parts += [
        table(["Intended strategy", "Replies", "Adherence (%)", "Gold replies (%)"], rows),
        "",
        f"({adh.get('skipped', 0)} replies without an intended strategy skipped.)",
        "",
    ]
    return parts


def render_markdown(report: dict) -> str:

    s, c, src = report["strategy"], report["counts"], report["input"]
    title = report["name"] or src.get("path", "predictions")
    parts = [f"# Evaluation report: {title}", ""]
    for f in src.get("files", []):
        parts.append(f"Predictions: `{f['path']}` (sha256 `{f.get('sha256', '?')[:16]}…`)  ")
    modes = ", ".join(f"{k}: {v}" for k, v in c["modes"].items())
    parts += [
        f"{c['turns']} turns in {c['dialogues']} dialogues ({modes}); "
        f"{decoding_text(report.get('decoding'), report['decodes'])}; "
        f"**{c['unparseable']} unparseable strategy predictions** in the first decode "
        f"({100 * c['unparseable_rate']:.1f}%).",
        "",
    ]
    for w in report.get("warnings", []):
        parts += [f"**Warning:** {w}", ""]

    spread = (
        "mean ± sample std over " + str(report["decodes"]) + " decodes"
        if report["decodes"] > 1
        else "one decode"
    )
    parts += [
        f"## Headline ({spread})",
        "",
        f"Headline protocol: **{report['protocol']}**. The two protocols differ in "
        "decoding, text metrics and B (see Definitions); a column's values follow its own "
        "definitions on the same predictions.",
        "",
    ]
    parts += _headline_table(report) + [""]

    parts += ["## Strategy (first decode)", ""]
    header = ["Metric"] + [
        f"{VARIANT_TITLES[v]} (n = {s[v]['n'] if s[v] else 0})" for v in VARIANTS
    ]
    rows = [
        [LABELS[k]] + [fmt(k, s[v][k] if s[v] else None) for v in VARIANTS]
        for k in ("Q", "weighted_f1", "accuracy", "B")
    ]
    rows.append(
        ["B, released 20-sweep fit"]
        + [fmt("B", s[v]["B_kang"] if s[v] else None) for v in VARIANTS]
    )
    parts += [table(header, rows), ""]

    parts += [f"## Per strategy ({VARIANT_TITLES['as_others']}; excluded in the last columns)", ""]
    header = [
        "Strategy",
        "Gold",
        "Predicted",
        "Precision (%)",
        "Recall (%)",
        "F1 (%)",
        "Preference",
        "Preference (20 sweeps)",
        "F1 excl. (%)",
        "Preference excl.",
    ]
    rows = []
    for name in STRATEGIES:
        a = s["as_others"]["per_strategy"][name]
        e = s["excluded"]["per_strategy"][name] if s["excluded"] else None
        rows.append(
            [
                name,
                str(a["support"]),
                str(a["predicted"]),
                fmt("Q", a["precision"]),
                fmt("Q", a["recall"]),
                fmt("Q", a["f1"]),
                f"{a['preference']:.4f}",
                fmt("B", a.get("preference_kang")),
                fmt("Q", e["f1"]) if e else "–",
                f"{e['preference']:.4f}" if e else "–",
            ]
        )
    parts += [table(header, rows), ""]
    fit = s["as_others"]["preference_fit"]
    notes = []
    if fit["unobserved"]:
        notes.append(f"no evidence, preference fixed at 1.0: {', '.join(fit['unobserved'])}")
    if fit["dominated"]:
        notes.append(
            f"never predicted in place of a strategy that beats them, preference → 0: "
            f"{', '.join(fit['dominated'])}"
        )
    if not fit["converged"]:
        notes.append(f"the Bradley–Terry fit did NOT converge in {fit['iterations']} sweeps")
    if s["as_others"]["B_kang"] is None:
        notes.append("the released 20-sweep fit is undefined here (its code divides 0 by 0)")
    if notes:
        parts += ["Preference notes: " + "; ".join(notes) + ".", ""]

    parts += ["## Confusion (gold rows × predicted columns, first decode)", ""]
    header = ["gold \\ predicted"] + list(STRATEGIES) + ["(unparseable)"]
    rows = [
        [g] + [str(x) for x in row] for g, row in zip(STRATEGIES, confusion_with_unparseable(s))
    ]
    parts += [
        table(header, rows),
        "",
        '(The Others column counts parsed "Others" predictions only; the unparseable '
        "column holds the rest.)",
        "",
    ]

    if report.get("psych_errors"):
        parts += _errors_section(report["psych_errors"])
    if report.get("adherence"):
        parts += _adherence_section(report["adherence"])
    if report.get("llm_scores"):
        flat = flatten(report["llm_scores"])
        parts += [
            "## LLM scores",
            "",
            table(["Score", "Value"], [[k, fmt("", v)] for k, v in flat.items()]),
            "",
        ]

    parts += [
        "## Figures",
        "",
        f"![confusion]({CONFUSION_PNG})",
        "",
        f"![preferences]({PREFERENCES_PNG})",
        "",
    ]
    if report.get("psych_errors"):
        parts += [f"![errors]({ERRORS_PNG})", ""]
    parts += ["## Definitions", ""]
    parts += [f"- {d}" for d in report["definitions"]]
    return "\n".join(parts) + "\n"


def render_comparison_markdown(comparison: dict) -> str:

    variant, protocol = comparison["variant"], comparison["protocol"]
    columns = [
        k
        for k in comparison["columns"]
        if k == "B" or any(x["values"].get(k) is not None for x in comparison["systems"])
    ]
    header = ["System"] + [LABELS[k] for k in columns]
    rows = []
    for x in comparison["systems"]:
        row = [x["name"]]
        for k in columns:
            cell = fmt(k, x["values"][k], x["std"].get(k))
            if x.get("gold_strategies") and k in (
                "Q",
                "weighted_f1",
                "accuracy",
                "B",
                "unparseable",
            ):
                cell = "(gold)"
            if k == "adherence" and x.get("adherence_n") is not None:
                cell += f" (n = {x['adherence_n']})"
            if k == "B" and x.get("B_converged") is not None:
                cell = f"{fmt('B', x['B_converged'])} *(converged)*"
            row.append(f"**{cell}**" if x["name"] in comparison["best"].get(k, []) else cell)
        rows.append(row)
    decodes = sorted({x["decodes"] for x in comparison["systems"]})
    spread = (
        "mean ± sample std over " + "/".join(map(str, decodes)) + " decodes"
        if decodes != [1]
        else "one decode each"
    )
    parts = [
        "# Comparison",
        "",
        f"**{PROTOCOL_TITLES[protocol].capitalize()}** (`{protocol}`); strategy metrics with "
        f"{VARIANT_TITLES[variant]} (`{variant}`); "
        f"{spread}; "
        "best value in bold (lowest for B, unparseable and errors); *(gold)*: a generator "
        "given the gold strategies, whose strategy columns mean nothing.",
        "",
        table(header, rows),
        "",
    ]
    if not comparison["same_gold"]:
        parts += ["**Warning:** the systems were not scored on the same gold turns.", ""]
    undefined = [
        x["name"]
        for x in comparison["systems"]
        if x["values"].get("B") is None and not x.get("gold_strategies")
    ]
    if undefined and protocol == "paper":
        parts += [
            f"The released 20-sweep fit leaves B undefined for {', '.join(undefined)}: it "
            "divides 0 by 0 when a strategy is never predicted in place of another and "
            "never replaced by one, or two strategies are both never predicted in place of "
            "another (in some decode). Shown in its place, marked *(converged)*, is the "
            "B of the converged fit (our protocol's, always defined; mean over decodes), "
            "and the preferences below and in the figure are that fit's too for those "
            "systems.",
            "",
        ]
    for w in comparison.get("warnings", []):
        parts += [f"**Warning:** {w}", ""]
    other = comparison.get("other")
    if other:
        rows = [
            [x["name"]]
            + [
                "(gold)"
                if x["gold_strategies"] and k == "B"
                else fmt(k, x["values"][k], x["std"].get(k))
                for k in other["columns"]
            ]
            for x in other["systems"]
        ]
        parts += [
            f"## Under {PROTOCOL_TITLES[other['protocol']]} (`{other['protocol']}`)",
            "",
            "The columns the two protocols define differently (see report.md, "
            "Definitions); Q, weighted-F1 and accuracy are the same under both.",
            "",
            table(["System"] + [LABELS[k] for k in other["columns"]], rows),
            "",
        ]
    pref_rows = [
        [st]
        + [
            fmt("B", x["preferences"][st]) if x["preferences"] else "–"
            for x in comparison["systems"]
        ]
        for st in STRATEGIES
    ]
    parts += [
        "## Strategy preferences (ideal 1.0)",
        "",
        table(
            ["Strategy"] + [preference_label(x, protocol) for x in comparison["systems"]], pref_rows
        ),
        "",
        f"![preferences]({COMPARISON_PNG})",
        "",
    ]
    errors = {x["name"]: x["errors"] for x in comparison["systems"] if x.get("errors")}
    if errors:
        types: list[str] = []
        for e in errors.values():
            types += [t for t in [*e["rates"], "none"] if t not in types]
        rows = [
            [t]
            + [
                fmt("Q", (e["none"] if t == "none" else e["rates"].get(t)))
                if (t == "none" or e["rates"].get(t) is not None)
                else "not seen"
                for e in errors.values()
            ]
            for t in types
        ]
        backends = sorted({e["backend"] for e in errors.values()})
        parts += [
            f"## Psychological errors (% of replies; {', '.join(backends)} judge)",
            "",
            table(["Error"] + list(errors), rows),
            "",
            f"![errors]({COMPARISON_ERRORS_PNG})",
            "",
        ]
    return "\n".join(parts)
