"""``esc-dist human-eval report``: unblind the judgments and summarise them per criterion.

Every judgment (annotator × item × criterion) is unblinded with key.json to a label from
system 1's side: ``win`` (system 1's reply is better), ``tie`` or ``lose``.

- **Shares**: win, tie and lose counts over all judgments of the criterion (every annotator's),
  divided by their number.
- **Bootstrap 95% intervals** of the three shares: the judged items are resampled with
  replacement (all of an item's judgments go together), the shares recomputed, and the 2.5th
  and 97.5th percentiles taken (numpy, a generator seeded by ``(seed, criterion index)``: the
  same seed gives the same intervals).
- **Fleiss' kappa** (statsmodels) over three categories (system 1, tie, system 2) needs the same
  number of raters per item: it is computed on the items judged by *every* annotator who judged
  the criterion; the others are left out (counted in the report). Undefined (null, with the
  reason) with fewer than two annotators, no such item, or every judgment in one category.
- **Krippendorff's alpha** (the ``krippendorff`` package, nominal level) on all judgments: an
  item judged by one annotator only carries no pair and drops out by the definition.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

from ..errors import ConfigError, DataError
from ..io import atomic_write_json, atomic_write_text, load_json
from ..names import markdown_text, plot_text
from . import CRITERIA, KEY_FILE, KEY_FORMAT, SYSTEMS, missing_extra
from .study import Study

OUTCOMES = ("win", "tie", "lose")
LABELS = ("system 1", "tie", "system 2")  # the agreement categories, in code order 0, 1, 2
STAGE = "human-eval-report"
FIGURE = "win_tie_lose.png"


def read_key(path: Path, study: Study) -> dict:
    """key.json, checked against the study it must belong to."""
    key = load_json(path, "key file")

    def fail(problem: str, k: str | None = None) -> DataError:
        return DataError(path, problem, key=k)

    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT:
        raise fail(f"not an unblinding key of esc-dist (expected format {KEY_FORMAT!r})")
    if (
        key.get("study_id") != study.meta["study_id"]
        or key.get("items_sha256") != study.meta["items_sha256"]
    ):
        raise fail(
            f"belongs to another study (its study id or items sha256 differs from "
            f"{study.directory}'s)"
        )
    systems = key.get("systems")
    if not (isinstance(systems, dict) and all(isinstance(systems.get(s), str) for s in SYSTEMS)):
        raise fail(f"needs the names of {' and '.join(SYSTEMS)}", "systems")
    names = {systems[s] for s in SYSTEMS}
    sides = key.get("items")
    if not isinstance(sides, dict) or set(sides) != {it["item_id"] for it in study.items}:
        raise fail("its items are not the study's items", "items")
    for item_id, side in sides.items():
        if not (isinstance(side, dict) and {side.get("A"), side.get("B")} == names):
            raise fail(
                f"must name the two systems as A and B, got {side!r:.80}", f"items.{item_id}"
            )
    return key


def unblind(choice: str, side: dict, system1: str) -> int:
    """0 (system 1 better), 1 (tie) or 2 (system 2 better) for a blinded choice."""
    if choice == "tie":
        return 1
    return 0 if side[choice] == system1 else 2


def _nan_to_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def fleiss(labels: dict[str, dict[str, int]]) -> dict:
    """Fleiss' kappa of ``labels`` (item -> annotator -> code) on the items every annotator
    judged."""
    try:
        from statsmodels.stats.inter_rater import fleiss_kappa
    except ImportError:
        raise ConfigError(missing_extra("statsmodels (Fleiss' kappa)")) from None
    import numpy as np

    raters = sorted({a for by in labels.values() for a in by})
    complete = [item for item, by in labels.items() if len(by) == len(raters)]
    out = {
        "kappa": None,
        "annotators": len(raters),
        "items": len(complete),
        "items_left_out": len(labels) - len(complete),
        "note": None,
    }
    if len(raters) < 2:
        out["note"] = "fewer than two annotators"
    elif not complete:
        out["note"] = "no item judged by every annotator"
    else:
        table = np.zeros((len(complete), len(LABELS)), dtype=int)
        for r, item in enumerate(complete):
            for code in labels[item].values():
                table[r, code] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            out["kappa"] = _nan_to_none(fleiss_kappa(table, method="fleiss"))
        if out["kappa"] is None:
            out["note"] = "undefined: every judgment in one category"
    return out


def krippendorff_alpha(labels: dict[str, dict[str, int]]) -> dict:
    """Krippendorff's alpha (nominal) of ``labels`` (item -> annotator -> code), missing
    judgments allowed."""
    try:
        import krippendorff
    except ImportError:
        raise ConfigError(missing_extra("krippendorff (Krippendorff's alpha)")) from None
    import numpy as np

    raters = sorted({a for by in labels.values() for a in by})
    items = sorted(labels)
    data = np.full((len(raters), len(items)), np.nan)
    for j, item in enumerate(items):
        for a, code in labels[item].items():
            data[raters.index(a), j] = code
    pairable = sum(len(by) >= 2 for by in labels.values())
    out = {"alpha": None, "annotators": len(raters), "items": pairable, "note": None}
    if pairable == 0:
        out["note"] = "no item judged by two annotators"
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        out["alpha"] = _nan_to_none(
            krippendorff.alpha(
                reliability_data=data, value_domain=[0, 1, 2], level_of_measurement="nominal"
            )
        )
    if out["alpha"] is None:
        out["note"] = "undefined: every judgment in one category"
    return out


def bootstrap_shares(
    per_item: list[tuple[int, int, int]], n_resamples: int, seed: int | list[int]
) -> dict[str, list[float]] | None:
    """Percentile 95% intervals of the win/tie/lose shares, resampling items (each a tuple of
    its win, tie, lose counts) with replacement."""
    import numpy as np

    if n_resamples == 0 or not per_item:
        return None
    counts = np.asarray(per_item, dtype=float)  # items × 3
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(counts), size=(n_resamples, len(counts)))
    sums = counts[idx].sum(axis=1)  # resamples × 3
    shares = sums / sums.sum(axis=1, keepdims=True)
    lo, hi = np.percentile(shares, [2.5, 97.5], axis=0)
    return {o: [float(lo[k]), float(hi[k])] for k, o in enumerate(OUTCOMES)}


def summarise(study: Study, key: dict, *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """The report (a JSON-able dict) of the study's judgments; :class:`DataError` when there
    are none."""
    judgments = study.judgments()
    if not judgments:
        raise DataError(
            study.db,
            "no judgments yet: nothing to report (annotators judge on "
            "the annotation page, or import-labelstudio brings theirs)",
        )
    system1, system2 = (key["systems"][s] for s in SYSTEMS)
    labels: dict[str, dict[str, dict[str, int]]] = {c: defaultdict(dict) for c in CRITERIA}
    for annotator, item_id, criterion, choice in judgments:
        side = key["items"].get(item_id)
        if side is None or criterion not in labels:
            continue  # not possible through submit or import; never counted
        labels[criterion][item_id][annotator] = unblind(choice, side, system1)
    per_annotator = Counter(a for a, _, c, _ in judgments if c == CRITERIA[0])
    criteria = {}
    for k, criterion in enumerate(CRITERIA):
        by_item = labels[criterion]
        per_item = [
            tuple(sum(code == o for code in by.values()) for o in range(3))
            for _, by in sorted(by_item.items())
        ]
        totals = [sum(x[o] for x in per_item) for o in range(3)]
        n = sum(totals)
        criteria[criterion] = {
            "judgments": n,
            "items": len(per_item),
            "counts": dict(zip(OUTCOMES, totals)),
            "shares": {o: (totals[i] / n if n else None) for i, o in enumerate(OUTCOMES)},
            "ci95": bootstrap_shares(per_item, n_resamples, [seed, k]),
            "fleiss": fleiss(by_item),
            "krippendorff": krippendorff_alpha(by_item),
        }
    identical = [i for i, side in key["items"].items() if side.get("identical")]
    return {
        "systems": {"system 1": system1, "system 2": system2},
        "outcomes": {"win": f"{system1} better", "tie": "tie", "lose": f"{system2} better"},
        "study": str(study.directory),
        "study_id": study.meta["study_id"],
        "counts": {
            "items": len(study.items),
            "judgments": len(judgments),
            "items_judged": len({i for _, i, _, _ in judgments}),
            "annotators": len(per_annotator),
            "identical_items": len(identical),
        },
        "annotators": dict(sorted(per_annotator.items())),
        "bootstrap": {
            "resamples": n_resamples,
            "seed": seed,
            "unit": "item",
            "method": "percentile",
        },
        "criteria": criteria,
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def markdown(report: dict) -> str:
    # names from key.json and the database (imported ones included) are escaped: they show as
    # written and add no row or markup
    s1, s2 = (markdown_text(report["systems"][s]) for s in SYSTEMS)
    c = report["counts"]
    lines = [
        f"# Human evaluation: {s1} vs {s2}",
        "",
        f"{c['judgments']} judgments of {c['items_judged']}/{c['items']} items by "
        f"{c['annotators']} annotator(s); {c['identical_items']} item(s) show two identical "
        "replies. Win = "
        f"{s1}'s reply judged better, lose = {s2}'s. Intervals: bootstrap 95% over items "
        f"({report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']}).",
        "",
        "| criterion | win | tie | lose | judgments | Fleiss' κ (items) | Krippendorff's α |",
        "|---|---|---|---|---|---|---|",
    ]
    for criterion, r in report["criteria"].items():
        cells = []
        for o in OUTCOMES:
            ci = r["ci95"][o] if r["ci95"] else None
            cells.append(
                f"{_pct(r['shares'][o])} ({r['counts'][o]})"
                + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")
            )
        f, a = r["fleiss"], r["krippendorff"]
        lines.append(
            f"| {criterion} | {' | '.join(cells)} | {r['judgments']} | "
            f"{_num(f['kappa'])} ({f['items']}) | {_num(a['alpha'])} |"
        )
    notes = sorted(
        {
            f"{name}: {r[key]['note']}"
            for r in report["criteria"].values()
            for key, name in (("fleiss", "Fleiss' κ"), ("krippendorff", "Krippendorff's α"))
            if r[key]["note"]
        }
    )
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    lines += [
        "",
        "Items judged per annotator: "
        + ", ".join(f"{markdown_text(a)} {n}" for a, n in report["annotators"].items()),
        "",
    ]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Stacked horizontal bars of the win/tie/lose shares, one bar per criterion."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..io import atomic_writer

    criteria = list(report["criteria"])
    fig = Figure(figsize=(8, 0.6 * len(criteria) + 1.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    left = [0.0] * len(criteria)
    colours = {"win": "#2b8cbe", "tie": "#bdbdbd", "lose": "#e34a33"}
    for o in OUTCOMES:
        widths = [report["criteria"][c]["shares"][o] or 0.0 for c in criteria]
        bars = ax.barh(
            criteria, widths, left=left, color=colours[o], label=plot_text(report["outcomes"][o])
        )
        for bar, w in zip(bars, widths):
            if w >= 0.06:
                ax.text(
                    bar.get_x() + w / 2,
                    bar.get_y() + bar.get_height() / 2,
                    f"{100 * w:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=8,
                )
        left = [x + w for x, w in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of judgments")
    ax.set_title(plot_text(f"{report['systems']['system 1']} vs {report['systems']['system 2']}"))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8)
    with atomic_writer(path, "wb") as f:
        fig.savefig(f, format="png")


def write_report(
    directory: str | Path,
    out: str | Path | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    key_path: str | Path | None = None,
) -> tuple[dict, Path]:
    """Summarise the study ``directory`` into ``out`` (default: its ``report/``):
    report.json, report.md and the chart. Returns (report, output directory)."""
    from ..outputs import staged_dir

    if n_resamples < 0:
        raise ConfigError(
            f"--bootstrap {n_resamples}: the number of resamples must be >= 0 (0: no intervals)"
        )
    study = Study.open(directory)
    key_path = Path(key_path) if key_path else study.directory / KEY_FILE
    key = read_key(key_path, study)
    report = summarise(study, key, n_resamples=n_resamples, seed=seed)
    report["key"] = str(key_path)
    final = Path(out) if out else study.directory / "report"
    with staged_dir(final, STAGE, [key_path, study.db]) as tmp:
        atomic_write_json(tmp / "report.json", report)
        atomic_write_text(tmp / "report.md", markdown(report))
        plot(report, tmp / FIGURE)
    return report, final
