"""The offline rules for psychological errors: deterministic, over the dialogue history and the
candidate (a supporter reply, or a strategy as the next move).

They see three of the five error types (Lack Empathy, Early Emotion Shift, Template Response);
the IPM judge (:mod:`esc_dist.ipm.rules`) and the evaluation (:mod:`esc_dist.eval.psych_errors`)
both build on them. The rules (LE1, LE2, ES1, TR1-TR4 for a reply; P-ES, P-LE, P-TR for a
strategy), the context they read and the lexicons behind them are documented in
``docs/judge.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..data.esconv import SEEKER, SUPPORTER, Message, as_messages
from .lexicon import (
    BACKCHANNEL,
    CLOSING,
    DISMISS,
    GREETING,
    STOCK_FORMULA,
    acknowledges,
    acknowledges_before,
    content_words,
    expresses_emotion,
    first_advice,
    normalize,
    strong_emotion,
    tokens,
)
from .names import EARLY_SHIFT, LACK_EMPATHY, RULE_ERRORS, TEMPLATE

# Bump whenever a rule or a lexicon changes: what was labelled by other rules is then labelled
# again (the IPM judge's stage key and the error rates of replies record it).
RULES_VERSION = "offline-rules-v2"

_PLANNER_ADVICE = {"Providing Suggestions", "Information"}
_PLANNER_IGNORE = {"Information", "Providing Suggestions", "Others"}


@dataclass(frozen=True)
class Finding:
    """One rule that fired: the error it shows, the rule id and a short explanation."""

    error: str
    rule: str
    detail: str


@dataclass(frozen=True)
class Context:
    """What the rules need to know about the dialogue before the reply (the terms are defined
    in docs/judge.md, section "Context")."""

    last_seeker: str
    fresh: bool  # the history ends with a (non-blank) seeker message
    recent_seeker: str
    seeker_words: int
    emotion_expressed: bool
    acknowledged: bool
    last_emotion: bool
    last_strong: bool
    phase: str  # opening | body | closing
    supporter: tuple[Message, ...]

    @classmethod
    def of(cls, history: Iterable[Message | Mapping[str, Any]]) -> "Context":
        msgs = as_messages(history)
        seeker = [m.text for m in msgs if m.role == SEEKER and m.text.strip()]
        supporter = tuple(m for m in msgs if m.role == SUPPORTER)
        last = seeker[-1] if seeker else ""
        # The seeker's words are fresh when they are the last message (not the blank filler that
        # separates two supporter messages: then the supporter already answered them).
        fresh = bool(msgs) and msgs[-1].role == SEEKER and bool(msgs[-1].text.strip())
        first_emotional = next(
            (i for i, m in enumerate(msgs) if m.role == SEEKER and expresses_emotion(m.text)), None
        )
        acknowledged = first_emotional is not None and any(
            m.role == SUPPORTER and (m.strategy == "Reflection of feelings" or acknowledges(m.text))
            for m in msgs[first_emotional + 1 :]
        )
        n_words = sum(len(content_words(t)) for t in seeker)
        lnorm = normalize(last)
        if n_words < 4 or GREETING.search(lnorm) and len(content_words(last)) < 4:
            phase = "opening"
        elif CLOSING.search(lnorm):
            phase = "closing"
        else:
            phase = "body"
        return cls(
            last_seeker=last,
            fresh=fresh,
            recent_seeker="\n".join(seeker[-2:]),
            seeker_words=n_words,
            emotion_expressed=first_emotional is not None,
            acknowledged=acknowledged,
            last_emotion=fresh and expresses_emotion(last),
            last_strong=fresh and strong_emotion(last),
            phase=phase,
            supporter=supporter,
        )


def _normalised(text: str) -> str:
    return " ".join(tokens(text))


def _repeats(reply: str, earlier: Sequence[Message]) -> str | None:
    norm, words = _normalised(reply), content_words(reply)
    for m in earlier:
        if norm and norm == _normalised(m.text) and len(norm.split()) >= 2:
            return m.text
        other = content_words(m.text)
        if len(words) >= 3 and len(other) >= 3:
            jac = len(words & other) / len(words | other)
            if jac >= 0.7:
                return m.text
    return None


def reply_findings(
    history: Iterable[Message | Mapping[str, Any]], reply: str, context: Context | None = None
) -> list[Finding]:
    """The offline rules LE1, LE2, ES1, TR1-TR4 on one supporter reply (see docs/judge.md)."""
    ctx = context or Context.of(history)
    text = normalize(reply)
    words = content_words(reply)
    found: list[Finding] = []

    # Lack Empathy
    m = DISMISS.search(text)
    if m and expresses_emotion(ctx.recent_seeker):
        found.append(
            Finding(LACK_EMPATHY, "LE1", f"dismisses the seeker's feeling ({m.group(0)!r})")
        )
    elif (
        ctx.last_emotion
        and ctx.phase != "closing"
        and not acknowledges(text)
        and not (words & content_words(ctx.last_seeker))
    ):
        found.append(
            Finding(
                LACK_EMPATHY,
                "LE2",
                "the seeker just expressed emotion; the reply neither acknowledges "
                "it nor takes up their words",
            )
        )

    # Early Emotion Shift
    pos = first_advice(text)
    if (
        pos is not None
        and ctx.emotion_expressed
        and not ctx.acknowledged
        and not acknowledges_before(text, pos)
    ):
        found.append(
            Finding(EARLY_SHIFT, "ES1", "advice before the seeker's feelings were acknowledged")
        )

    # Template Response
    rep = _repeats(reply, ctx.supporter)
    if rep is not None:
        found.append(Finding(TEMPLATE, "TR1", f"repeats an earlier supporter turn ({rep[:60]!r})"))
    elif ctx.phase == "body":
        stock = STOCK_FORMULA.search(text)
        rest = content_words(STOCK_FORMULA.sub(" ", text))
        recent = content_words(ctx.recent_seeker)
        if stock and len(rest) <= 3 and not (words & recent):
            found.append(
                Finding(
                    TEMPLATE,
                    "TR2",
                    f"a stock formula ({stock.group(0)!r}) with nothing specific to the seeker",
                )
            )
        elif (
            ctx.fresh
            and not content_words(BACKCHANNEL.sub(" ", text))
            and len(content_words(ctx.last_seeker)) >= 3
        ):
            found.append(Finding(TEMPLATE, "TR3", "a content-free reply to a substantive message"))
        elif len(text.split()) <= 5 and "?" not in text and not acknowledges(text):
            found.append(Finding(TEMPLATE, "TR4", "a perfunctory reply of at most five words"))
    return found


def strategy_findings(
    history: Iterable[Message | Mapping[str, Any]], strategy: str, context: Context | None = None
) -> list[Finding]:
    """The offline rules P-ES, P-LE, P-TR on a strategy chosen as the next move."""
    ctx = context or Context.of(history)
    found: list[Finding] = []
    if strategy in _PLANNER_ADVICE and ctx.emotion_expressed and not ctx.acknowledged:
        found.append(
            Finding(
                EARLY_SHIFT, "P-ES", f"{strategy} before the seeker's feelings were acknowledged"
            )
        )
    if strategy in _PLANNER_IGNORE and ctx.last_strong:
        found.append(
            Finding(LACK_EMPATHY, "P-LE", f"{strategy} right after strongly expressed emotion")
        )
    if ctx.phase == "body":
        prev = [m.strategy for m in ctx.supporter[-2:]]
        if strategy != "Question" and len(prev) == 2 and all(p == strategy for p in prev):
            found.append(Finding(TEMPLATE, "P-TR", f"{strategy} for the third time in a row"))
        elif strategy == "Others" and ctx.last_emotion:
            found.append(Finding(TEMPLATE, "P-TR", "small talk (Others) after expressed emotion"))
    return found


def errors_of(findings: Iterable[Finding]) -> list[str]:
    """The distinct error names of ``findings`` in the judge's order (:data:`RULE_ERRORS`)."""
    seen = {f.error for f in findings}
    return [e for e in RULE_ERRORS if e in seen]
