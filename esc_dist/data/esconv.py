"""Loading and validating ESConv: the original schema and the chat format of released SFT files.

Both formats become a list of :class:`Conversation`: seeker and supporter messages in the
convention of the DecoupledESC release (consecutive seeker utterances joined with a newline, a
blank seeker message between consecutive supporter utterances, "Hi" when the supporter opens,
trailing seeker utterances dropped). Every supporter message is one *turn* to be predicted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from ..errors import DataError
from ..io import read_text
from ..strategies import STRATEGIES, normalize_strategy, parse_tagged

SEEKER, SUPPORTER = "seeker", "supporter"
BLANK_SEEKER = " "  # inserted between two consecutive supporter utterances
OPENING_SEEKER = "Hi"  # inserted when the supporter speaks first


@dataclass(frozen=True)
class Message:
    role: str  # SEEKER or SUPPORTER
    text: str
    strategy: str | None = None  # set on supporter messages


@dataclass
class Conversation:
    dialogue_id: str
    index: int  # position in the source file
    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """One supporter message to predict, with everything said before it."""

    id: str
    dialogue_id: str
    dialogue_index: int
    turn_index: int
    history: tuple[Message, ...]
    strategy: str
    reply: str


def turn_id(dialogue_id: str, turn_index: int) -> str:
    return f"{dialogue_id}-t{turn_index:03d}"


def iter_turns(conversations: list[Conversation]) -> Iterator[Turn]:
    for conv in conversations:
        k = 0
        for i, m in enumerate(conv.messages):
            if m.role == SUPPORTER:
                yield Turn(
                    turn_id(conv.dialogue_id, k),
                    conv.dialogue_id,
                    conv.index,
                    k,
                    tuple(conv.messages[:i]),
                    m.strategy,
                    m.text,
                )
                k += 1


def as_messages(history: Iterable[Message | Mapping[str, Any]]) -> list[Message]:
    """History records ({"role", "text", "strategy"}) or :class:`Message` objects as Messages."""
    out = []
    for m in history:
        if isinstance(m, Message):
            out.append(m)
        else:
            out.append(Message(m["role"], m["text"], m.get("strategy")))
    return out


def render_history(history: Iterable[Message | Mapping[str, Any]]) -> str:
    """The dialogue as a transcript for an LLM to read: one "Seeker: ..." or
    "Supporter [strategy]: ..." line per non-blank message."""
    lines = []
    for m in as_messages(history):
        if not m.text.strip():
            continue
        who = "Seeker" if m.role == SEEKER else "Supporter"
        tag = f" [{m.strategy}]" if m.role == SUPPORTER and m.strategy else ""
        lines.append(f"{who}{tag}: {m.text}")
    return "\n".join(lines) or "(the conversation has not started yet)"


# ---------------------------------------------------------------------------------------------
# Reading JSON lists and JSON Lines with error locations


def _partial_location(text: str) -> int | None:
    """Index of the first incomplete utterance in the text of a broken dialogue object."""
    dec = json.JSONDecoder()
    key = text.find('"dialog"')
    if key < 0:
        return None
    start = text.find("[", key)
    if start < 0:
        return None
    pos, n = start + 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return n if pos >= len(text) else None
        try:
            _, pos = dec.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError):
            return n
        n += 1


def _json_problem(e: json.JSONDecodeError) -> str:
    return f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})"


def _iter_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (index, record) from a JSON list or a JSON Lines file, locating any syntax error."""
    text = read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise DataError(
            path, "the file is empty (expected a JSON list or JSON Lines of dialogues)", dialogue=0
        )
    dec = json.JSONDecoder()
    if stripped[0] == "[":
        pos = len(text) - len(stripped) + 1
        i = 0
        while True:
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos < len(text) and text[pos] == "]" and i == 0:
                pos += 1
                break
            try:
                obj, end = dec.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise DataError(
                    path, _json_problem(e), dialogue=i, utterance=_partial_location(text[pos:])
                ) from None
            except RecursionError:
                raise DataError(path, "JSON nested too deeply", dialogue=i) from None
            yield i, obj
            i += 1
            pos = end
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            problem = (
                "truncated JSON (the list is not closed)"
                if pos >= len(text)
                else f"invalid JSON (expected ',' or ']' at character {pos})"
            )
            raise DataError(path, problem, dialogue=i)
        if text[pos:].strip():
            raise DataError(path, f"unexpected text after the closing ']' at character {pos}")
        if i == 0:
            raise DataError(path, "the list holds no dialogues", dialogue=0)
        return
    # JSON Lines: one record per non-empty line.
    i = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                path, _json_problem(e), dialogue=i, utterance=_partial_location(line)
            ) from None
        except RecursionError:
            raise DataError(path, "JSON nested too deeply", dialogue=i) from None
        yield i, obj
        i += 1


# ---------------------------------------------------------------------------------------------
# ESConv original schema

_SEEKER_NAMES = {"seeker", "usr"}
_SUPPORTER_NAMES = {"supporter", "sys"}


def _check_dialogue(
    path: Path, i: int, d: Any, speakers: dict[str, str], unknown_strategy: str | None
) -> list[tuple[str, str, str | None]]:
    if not isinstance(d, dict):
        raise DataError(
            path, f"a dialogue must be a JSON object, got {type(d).__name__}", dialogue=i
        )
    if "dialog" not in d:
        raise DataError(path, "missing key 'dialog'", dialogue=i)
    dialog = d["dialog"]
    if not isinstance(dialog, list):
        raise DataError(path, f"'dialog' must be a list, got {type(dialog).__name__}", dialogue=i)
    if not dialog:
        raise DataError(path, "'dialog' is empty", dialogue=i)
    out = []
    for j, u in enumerate(dialog):
        if not isinstance(u, dict):
            raise DataError(
                path,
                f"an utterance must be a JSON object, got {type(u).__name__}",
                dialogue=i,
                utterance=j,
            )
        speaker = u.get("speaker")
        if not isinstance(speaker, str):
            raise DataError(path, "missing or non-string 'speaker'", dialogue=i, utterance=j)
        role = speakers.get(speaker.strip().lower())
        if role is None:
            raise DataError(
                path,
                f"unknown speaker {speaker!r} (expected one of {sorted(set(speakers))})",
                dialogue=i,
                utterance=j,
            )
        content = u.get("content", u.get("text"))
        if not isinstance(content, str):
            raise DataError(
                path,
                f"'content' must be a string, got {type(content).__name__}",
                dialogue=i,
                utterance=j,
            )
        content = " ".join(content.split())
        if not content:
            raise DataError(path, "empty 'content'", dialogue=i, utterance=j)
        ann = u.get("annotation", {})
        if not isinstance(ann, dict):
            raise DataError(
                path,
                f"'annotation' must be an object, got {type(ann).__name__}",
                dialogue=i,
                utterance=j,
            )
        strategy = None
        if role == SUPPORTER:
            raw = ann.get("strategy")
            if raw is None:
                raise DataError(
                    path,
                    "supporter utterance without 'annotation.strategy'",
                    dialogue=i,
                    utterance=j,
                )
            if not isinstance(raw, str):
                raise DataError(
                    path,
                    f"'annotation.strategy' must be a string, got {type(raw).__name__}",
                    dialogue=i,
                    utterance=j,
                )
            strategy = normalize_strategy(raw)
            if strategy is None:
                if unknown_strategy is None:
                    raise DataError(
                        path,
                        f"unknown strategy {raw!r} (expected one of {list(STRATEGIES)})",
                        dialogue=i,
                        utterance=j,
                    )
                strategy = unknown_strategy
        out.append((role, content, strategy))
    return out


def _to_messages(utterances: list[tuple[str, str, str | None]]) -> list[Message]:
    msgs: list[Message] = []
    for role, text, strategy in utterances:
        if role == SEEKER:
            if msgs and msgs[-1].role == SEEKER:
                msgs[-1] = Message(SEEKER, msgs[-1].text + "\n" + text)
            else:
                msgs.append(Message(SEEKER, text))
        else:
            if not msgs:
                msgs.append(Message(SEEKER, OPENING_SEEKER))
            elif msgs[-1].role == SUPPORTER:
                msgs.append(Message(SEEKER, BLANK_SEEKER))
            msgs.append(Message(SUPPORTER, text, strategy))
    while msgs and msgs[-1].role == SEEKER:
        msgs.pop()
    return msgs


_META_KEYS = ("experience_type", "emotion_type", "problem_type", "situation")


def load_esconv(
    path: str | Path,
    *,
    prefix: str = "esconv",
    speakers: dict[str, str] | None = None,
    unknown_strategy: str | None = None,
) -> list[Conversation]:
    """Load and validate ESConv dialogues in the original schema (JSON list or JSON Lines).

    ``speakers`` maps lower-cased speaker names to "seeker"/"supporter" (default: ESConv's names
    and the HF release's "usr"/"sys"). ``unknown_strategy`` replaces strategies that are not one of
    the eight (default: an error).
    """
    path = Path(path)
    if speakers is None:
        speakers = {
            **{s: SEEKER for s in _SEEKER_NAMES},
            **{s: SUPPORTER for s in _SUPPORTER_NAMES},
        }
    convs = []
    for i, d in _iter_records(path):
        utts = _check_dialogue(path, i, d, speakers, unknown_strategy)
        msgs = _to_messages(utts)
        meta = {k: d[k] for k in _META_KEYS if isinstance(d.get(k), str)}
        convs.append(Conversation(f"{prefix}-{i:04d}", i, msgs, meta))
    return convs


# ---------------------------------------------------------------------------------------------
# Chat format: {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}


def load_chat(path: str | Path, *, prefix: str | None = None) -> list[Conversation]:
    """Load a chat-format file whose assistant turns are written "[Strategy] text"."""
    path = Path(path)
    prefix = prefix or path.stem
    convs = []
    for i, rec in _iter_records(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
            raise DataError(path, "expected an object with a 'messages' list", dialogue=i)
        msgs: list[Message] = []
        for j, m in enumerate(rec["messages"]):
            if not isinstance(m, dict):
                raise DataError(path, "a message must be a JSON object", dialogue=i, utterance=j)
            role, content = m.get("role"), m.get("content")
            if not isinstance(content, str):
                raise DataError(
                    path,
                    f"'content' must be a string, got {type(content).__name__}",
                    dialogue=i,
                    utterance=j,
                )
            if role == "system":
                continue
            if role == "user":
                msgs.append(Message(SEEKER, content))
            elif role == "assistant":
                strategy, text = parse_tagged(content)
                if strategy is None:
                    raise DataError(
                        path,
                        f"assistant message not written '[Strategy] text': {content[:60]!r}",
                        dialogue=i,
                        utterance=j,
                    )
                if not text:
                    raise DataError(
                        path, "empty reply after the strategy tag", dialogue=i, utterance=j
                    )
                msgs.append(Message(SUPPORTER, text, strategy))
            else:
                raise DataError(
                    path,
                    f"unknown role {role!r} (expected system, user or assistant)",
                    dialogue=i,
                    utterance=j,
                )
        convs.append(Conversation(f"{prefix}-{i:04d}", i, msgs))
    return convs
