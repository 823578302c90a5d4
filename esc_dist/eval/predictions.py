"""Read and validate the inference stage's predictions (JSON Lines, one gold supporter turn a line).

Each line is an object with these keys (more keys are allowed and ignored)::

    id, dialogue_id, turn_index, gold_strategy, gold_reply,
    pred_strategy (one of the 8 strategies, or null when the model's strategy output could not
    be parsed), pred_strategy_raw, pred_reply, mode ("decoupled" or "vanilla")

Anything else is an error that names the file and the 1-based line number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..constants import MODES
from ..errors import PredictionsError
from ..io import iter_jsonl
from ..strategies import STRATEGIES

REQUIRED_KEYS = (
    "id",
    "dialogue_id",
    "turn_index",
    "gold_strategy",
    "gold_reply",
    "pred_strategy",
    "pred_strategy_raw",
    "pred_reply",
    "mode",
)


@dataclass(frozen=True)
class Prediction:
    id: str
    dialogue_id: str
    turn_index: int
    gold_strategy: str
    gold_reply: str
    pred_strategy: str | None  # None: the model's strategy could not be parsed
    pred_strategy_raw: str
    pred_reply: str
    mode: str


def _check(obj: object, path: Path, line: int) -> Prediction:
    def fail(problem: str) -> PredictionsError:
        return PredictionsError(path, problem, line)

    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise fail(f"missing key(s) {', '.join(repr(k) for k in missing)}")
    for k in ("id", "dialogue_id", "gold_reply", "pred_strategy_raw", "pred_reply"):
        if not isinstance(obj[k], str):
            raise fail(f"'{k}' must be a string, got {obj[k]!r}")
    if not obj["id"]:
        raise fail("'id' is empty")
    if not isinstance(obj["turn_index"], int) or isinstance(obj["turn_index"], bool):
        raise fail(f"'turn_index' must be an integer, got {obj['turn_index']!r}")
    if obj["gold_strategy"] not in STRATEGIES:
        raise fail(
            f"gold strategy {obj['gold_strategy']!r} is not one of the 8 strategies "
            f"({', '.join(STRATEGIES)})"
        )
    if obj["pred_strategy"] is not None and obj["pred_strategy"] not in STRATEGIES:
        raise fail(
            f"'pred_strategy' {obj['pred_strategy']!r} must be one of the 8 strategies "
            "or null (unparseable)"
        )
    if obj["mode"] not in MODES:
        raise fail(f"'mode' must be one of {', '.join(MODES)}, got {obj['mode']!r}")
    return Prediction(**{k: obj[k] for k in REQUIRED_KEYS})


def load_predictions(path: str | Path) -> list[Prediction]:
    """All predictions of ``path`` in file order; raises PredictionsError naming file and line.

    Blank lines are skipped. An id seen twice, a file with no predictions, bad JSON, a missing
    key, a gold strategy that is not one of the 8, or a value of the wrong type is an error.
    """
    path = Path(path)
    out: list[Prediction] = []
    seen: dict[str, int] = {}
    for n, obj in iter_jsonl(path, lambda line, problem: PredictionsError(path, problem, line)):
        p = _check(obj, path, n)
        if p.id in seen:
            raise PredictionsError(path, f"duplicate id {p.id!r} (first on line {seen[p.id]})", n)
        seen[p.id] = n
        out.append(p)
    if not out:
        raise PredictionsError(path, "no predictions (the file is empty)")
    return out
