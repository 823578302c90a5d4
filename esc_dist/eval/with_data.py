"""What ``esc-dist eval`` scores with the prepared data beside the predictions.

The dialogue histories of the evaluated split (the ``turns`` of ``esc-dist prepare``) and its gold
training replies make three more measurements of a system's replies (first decode):

- **psychological error rates** (:mod:`.psych_errors`): always by the offline rules (the three
  types they see), and with ``eval.llm_judge`` by the LLM judge of the recipe (all five types);
- **strategy adherence** (:mod:`.adherence`, ``eval.adherence``): a reply -> strategy classifier
  trained on the gold training replies, checked on the split's gold replies;
- **LLM rubric scores** (:mod:`.llm_scores`, ``eval.llm_judge``): four 0-5 rubrics, each with the
  gold reply as reference.

The LLM answers are cached in the report directory (``llm_cache/``), so re-evaluating costs no
requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import Recipe
from ..errors import ConfigError
from ..log import get_logger
from .predictions import Prediction

log = get_logger(__name__)


def histories_of(
    data_dir: str | Path, split: str, predictions: Sequence[Prediction], source: str | Path
) -> dict[str, list]:
    """The history (a list of seeker/supporter messages) of every predicted turn, by id."""
    from ..data.tasks import load_task

    turns = load_task(data_dir, "turns")
    if split not in turns:
        raise ConfigError(f"{data_dir}: no split {split!r} (have {', '.join(turns)})")
    histories = {t["id"]: t["history"] for t in turns[split]}
    missing = [p.id for p in predictions if p.id not in histories]
    if missing:
        raise ConfigError(
            f"{source}: {len(missing)} prediction id(s) are not turns of split "
            f"{split!r} in {data_dir} (first: {missing[0]})"
        )
    return histories


def data_metrics(
    predictions: Sequence[Prediction],
    recipe: Recipe,
    data_dir: str | Path,
    cache_dir: str | Path,
    source: str | Path,
) -> tuple[dict | None, dict]:
    """(LLM rubric scores or None, the report's extra sections ``psych_errors`` and
    ``adherence``) of one decode's predictions; ``source`` names them in errors."""
    from .psych_errors import error_rates

    split = recipe.infer.split
    histories = histories_of(data_dir, split, predictions, source)
    cache = Path(cache_dir)
    extra: dict = {
        "psych_errors": {
            "offline": error_rates(predictions, histories, recipe.judge, cache, backend="offline")
        }
    }
    llm_scores = None
    if recipe.eval.llm_judge:
        from .llm_scores import score_predictions

        extra["psych_errors"]["openai"] = error_rates(
            predictions, histories, recipe.judge, cache, backend="openai"
        )
        llm_scores = score_predictions(predictions, recipe.judge, cache, histories)
    if recipe.eval.adherence:
        from .adherence import adherence, train_classifier

        classifier = train_classifier(data_dir, eval_split=split)
        extra["adherence"] = adherence(predictions, classifier)
    return llm_scores, extra
