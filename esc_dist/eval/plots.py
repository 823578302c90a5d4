"""Report figures, drawn with matplotlib's Agg canvas (no display, no pyplot state) and saved
atomically (a temporary file in the target directory, then ``os.replace``)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import atomic_writer
from ..names import plot_text
from ..psych.names import ERROR_TYPES
from ..strategies import STRATEGIES

SHORT = {
    "Question": "Question",
    "Restatement or Paraphrasing": "Restatement",
    "Reflection of feelings": "Reflection",
    "Self-disclosure": "Self-discl.",
    "Affirmation and Reassurance": "Affirmation",
    "Providing Suggestions": "Suggestions",
    "Information": "Information",
    "Others": "Others",
}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically."""
    with atomic_writer(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def plot_confusion(counts: Sequence[Sequence[int]], path: str | Path, title: str = "") -> Path:
    """Heat map of 8 gold rows × 9 columns: the 8 parsed predicted strategies, then "(unparseable)".

    Colours are row-normalised (the share of each gold strategy's turns), cells show counts.
    """
    counts = np.asarray(counts, dtype=float)
    if counts.shape != (len(STRATEGIES), len(STRATEGIES) + 1):
        raise ValueError(f"expected 8×9 counts, got shape {counts.shape}")
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = _new_figure(8.5, 6.5)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="share of the gold strategy's turns")
    for (r, c), v in np.ndenumerate(counts):
        ax.text(
            c,
            r,
            f"{int(v)}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if share[r, c] > 0.6 else "black",
        )
    names = [SHORT[s] for s in STRATEGIES]
    ax.set_xticks(range(len(names) + 1), names + ["(unparseable)"], rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.axvline(len(names) - 0.5, color="grey", lw=1)
    ax.set_xlabel("predicted strategy")
    ax.set_ylabel("gold strategy")
    ax.set_title(plot_text(title or "Strategy confusion (counts)"))
    return save_figure(fig, path)


def plot_preferences(
    series: dict[str, Sequence[float]],
    path: str | Path,
    title: str = "Strategy preferences (Bradley-Terry)",
) -> Path:
    """Grouped bars of the 8 preferences for each named series, with the ideal 1.0 line."""
    fig = _new_figure(max(8.0, 1.0 + 0.35 * len(STRATEGIES) * max(1, len(series))), 4.8)
    ax = fig.add_subplot()
    x = np.arange(len(STRATEGIES))
    k = max(1, len(series))
    width = 0.8 / k
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=plot_text(name))
    ax.axhline(1.0, color="black", ls="--", lw=1, label="ideal (1.0)")
    ax.set_xticks(x, [SHORT[s] for s in STRATEGIES], rotation=30, ha="right")
    ax.set_ylabel("preference (sum = 8)")
    ax.set_title(plot_text(title))
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_error_rates(
    systems: Mapping[str, Mapping],
    path: str | Path,
    title: str = "Psychological errors of generated replies",
) -> Path:
    """Grouped bars of the error rates of several systems: one group per error type and one for
    "none" (replies without error), one bar per system. ``systems`` maps a system's name to its
    :func:`esc_dist.eval.psych_errors.error_rates` result (``rates`` and ``none`` are read); a
    type its backend cannot see (rate None) gets no bar, only "n/a" at its foot."""
    groups = list(ERROR_TYPES) + ["none"]
    fig = _new_figure(max(8.0, 1.0 + 0.3 * len(groups) * max(1, len(systems))), 4.8)
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(systems))
    for i, (name, result) in enumerate(systems.items()):
        values = [result.get("rates", {}).get(g) for g in groups[:-1]] + [result.get("none")]
        pos = x - 0.4 + width * (i + 0.5)
        seen = [j for j, v in enumerate(values) if v is not None]
        ax.bar(
            pos[seen], [values[j] for j in seen], width, color=f"C{i % 10}", label=plot_text(name)
        )
        for j, v in enumerate(values):
            if v is None:
                ax.text(
                    pos[j],
                    0.01,
                    "n/a",
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90,
                    color="grey",
                )
    ax.set_xticks(x, groups, rotation=20, ha="right")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("share of labelled replies")
    ax.set_title(plot_text(title))
    if systems:
        ax.legend(fontsize=8)
    return save_figure(fig, path)
