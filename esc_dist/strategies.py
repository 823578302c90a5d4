"""The eight ESConv support strategies and the "[Strategy] text" format."""

from __future__ import annotations

import re

STRATEGIES: tuple[str, ...] = (
    "Question",
    "Restatement or Paraphrasing",
    "Reflection of feelings",
    "Self-disclosure",
    "Affirmation and Reassurance",
    "Providing Suggestions",
    "Information",
    "Others",
)

# One-line descriptions used in prompts (our own wording, after the ESConv paper's definitions).
DESCRIPTIONS: dict[str, str] = {
    "Question": "ask about the seeker's situation to understand it better",
    "Restatement or Paraphrasing": (
        "say back what the seeker said, in other words, to show it was heard"
    ),
    "Reflection of feelings": "name and acknowledge the feelings the seeker expresses",
    "Self-disclosure": "share a similar experience of your own to show understanding",
    "Affirmation and Reassurance": "affirm the seeker's strengths and reassure them",
    "Providing Suggestions": "offer concrete ideas the seeker could try",
    "Information": "give useful facts, data or resources",
    "Others": "small talk, greetings and anything else",
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().strip("[]").strip()).lower()


_CANONICAL = {_key(s): s for s in STRATEGIES}
# Aliases accepted only where exactly one strategy can be meant.
_ALIASES = {
    "questions": "Question",
    "restatement": "Restatement or Paraphrasing",
    "paraphrasing": "Restatement or Paraphrasing",
    "restatement and paraphrasing": "Restatement or Paraphrasing",
    "reflection": "Reflection of feelings",
    "reflection of feeling": "Reflection of feelings",
    "self disclosure": "Self-disclosure",
    "selfdisclosure": "Self-disclosure",
    "affirmation": "Affirmation and Reassurance",
    "affirmation or reassurance": "Affirmation and Reassurance",
    "providing suggestion": "Providing Suggestions",
    "suggestions": "Providing Suggestions",
    "other": "Others",
}


def normalize_strategy(name: object) -> str | None:
    """Canonical strategy name for ``name`` (case, spacing, brackets forgiven), or None."""
    if not isinstance(name, str):
        return None
    k = _key(name)
    return _CANONICAL.get(k) or _ALIASES.get(k)


_TAGGED = re.compile(r"^\s*\[([^\]\n]{1,60})\]\s?(.*)$", re.S)


def format_tagged(strategy: str, text: str) -> str:
    return f"[{strategy}] {text}"


def parse_tagged(text: str) -> tuple[str | None, str]:
    """Split "[Strategy] reply" into (canonical strategy or None, reply).

    When there is no bracketed tag, or the tag is not a strategy, the strategy is None and the
    whole text is returned as the reply.
    """
    m = _TAGGED.match(text)
    if not m:
        return None, text.strip()
    strategy = normalize_strategy(m.group(1))
    if strategy is None:
        return None, text.strip()
    return strategy, m.group(2).strip()


def parse_strategy(text: str) -> str | None:
    """Strategy named by a planner's output: a bare name or a "[Name]" tag, first line only."""
    line = text.strip().split("\n", 1)[0].strip()
    s = normalize_strategy(line)
    if s is not None:
        return s
    return parse_tagged(line)[0]
