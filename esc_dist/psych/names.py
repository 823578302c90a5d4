"""The names of the psychological errors a supporter reply can make.

The five types are those of the DecoupledESC preliminary study; the names are exact (they appear
as written in verdicts, statistics and reports). The offline rules see three of them
(:data:`RULE_ERRORS`); an LLM can be asked about all five. Defined in ``docs/judge.md``.
"""

from __future__ import annotations

STRATEGY_MISMATCH = "Strategy Mismatch"
TEMPLATE = "Template Response"
LACK_EMPATHY = "Lack Empathy"
EMOTION_MISREAD = "Emotion Misread"
EARLY_SHIFT = "Early Emotion Shift"

# The five types, in the study's order.
ERROR_TYPES: tuple[str, ...] = (
    STRATEGY_MISMATCH,
    TEMPLATE,
    LACK_EMPATHY,
    EMOTION_MISREAD,
    EARLY_SHIFT,
)
# The three the offline rules (and the IPM judge) know, in the judge's order.
RULE_ERRORS: tuple[str, ...] = (LACK_EMPATHY, EARLY_SHIFT, TEMPLATE)
