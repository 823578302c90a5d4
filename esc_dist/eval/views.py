"""What a report and a comparison show, shared by their writers (:mod:`.report`,
:mod:`.compare`) and their Markdown (:mod:`.markdown`): the figures' file names, the confusion
table with its unparseable column, and a system's label in the preference figure and table."""

from __future__ import annotations

from ..strategies import STRATEGIES

CONFUSION_PNG, PREFERENCES_PNG, ERRORS_PNG = "confusion.png", "preferences.png", "errors.png"
COMPARISON_PNG, COMPARISON_ERRORS_PNG = "comparison_preferences.png", "comparison_errors.png"


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


def preference_label(system: dict, protocol: str) -> str:
    """A system's name, marked when its preferences are the converged fit's under the paper
    protocol (its 20-sweep fit undefined)."""
    converged = protocol == "paper" and system.get("preferences_fit") == "converged"
    return f"{system['name']} (converged fit)" if converged else system["name"]
