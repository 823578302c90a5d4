"""The dialogue as one transcript message: the DecoupledESC planner's prompt form.

With ``data.planner_prompt: transcript`` the planner reads a system message (the eight strategies)
and **one** user message holding the whole dialogue so far, a line per message::

    seeker: I lost my job last week.
    supporter: That sounds really hard.
    seeker: ...

The roles are lower case and the supporter's lines carry no strategy tags, as in the paper's
released planner code; every message gets its line, the blank seeker messages between two
supporter utterances included. Fitting a long transcript into a token budget drops its oldest
lines (:class:`esc_dist.data.fitting.HistoryFitter` reads a transcript prompt through
:func:`segments`), so the kept transcript still starts with a seeker line.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from .esconv import SEEKER, Message

SEEKER_LINE = "seeker: "
SUPPORTER_LINE = "supporter: "
# where a message's line starts: at the start of the text or after a newline, a role and ": "
_LINE_START = re.compile(r"(?:^|(?<=\n))(?=(?:seeker|supporter): )")


def render(history: Iterable[Message]) -> str:
    """The transcript of ``history``: one ``role: text`` line per message, each ending in a
    newline."""
    return "".join(
        f"{SEEKER_LINE if m.role == SEEKER else SUPPORTER_LINE}{m.text}\n" for m in history
    )


def is_transcript(messages: Sequence[dict]) -> bool:
    """Whether a prompt without its system message is a transcript: one user message whose text
    is a series of ``seeker:`` / ``supporter:`` lines (a history cut to its last messages may
    start with a supporter line)."""
    return (
        len(messages) == 1
        and messages[0]["role"] == "user"
        and messages[0]["content"].startswith((SEEKER_LINE, SUPPORTER_LINE))
        and messages[0]["content"].endswith("\n")
    )


def segments(text: str) -> list[str]:
    """The transcript's messages, each with its role prefix and newline; joined they give the
    text back exactly. (A message whose own text has a line starting ``seeker: `` would split in
    two: the joined text is still exact, only the places where history may be dropped move.)"""
    cuts = [m.start() for m in _LINE_START.finditer(text)] + [len(text)]
    if cuts[0] != 0:
        cuts.insert(0, 0)
    return [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def message(parts: Sequence[str]) -> dict:
    """The user message of a transcript made of ``parts`` (see :func:`segments`)."""
    return {"role": "user", "content": "".join(parts)}
