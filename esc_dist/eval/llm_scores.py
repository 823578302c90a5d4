"""LLM scores of generated replies: fluency, professionalism, empathy and helpfulness on 0-5.

The protocol follows the DecoupledESC evaluation ("four-rubric-with-reference"): every predicted
reply is rated by the judge model of the recipe's ``judge`` section (any OpenAI-compatible
endpoint, through :mod:`esc_dist.llm_client`) **four times, once per dimension**, each with its
own 0-5 rubric that says what every level means. Each request shows the dialogue so far, the
seeker's last message (again, on its own), the reference reply (the gold supporter turn) and the
reply to rate, and asks for one number. Requests are sent at temperature 0.

The answer must be just the number: an integer or decimal from 0 to 5, optionally surrounded by
whitespace and followed by one period ("4", " 3.5 ", "4."). Anything else ("Score: 4", "**4**",
"4/5", "6") is a malformed answer: counted (here and in the client's ``parse_failures``), not
fatal; that dimension of that reply then has no score, the other three keep theirs.

Answers are cached on disk, so rescoring the same predictions costs no requests. Requests that
failed for good fail the scoring when they are more than ``judge.max_failed_share`` of all.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..config import JudgeConfig
from ..log import get_logger

log = get_logger(__name__)

DIMENSIONS: tuple[str, ...] = ("fluency", "professionalism", "empathy", "helpfulness")
PROMPT_VERSION = "reply-scores-v2-four-rubrics-with-reference"
PROTOCOL = "four-rubric-with-reference"
NOT_AVAILABLE = "(not available)"

_INTRO = (
    "You are an evaluator of emotional-support conversations. A help-seeker talks with a "
    "supporter. You will see the conversation so far, the seeker's last message, a reference "
    "reply written by a trained human supporter, and a candidate reply. Rate only the candidate "
    "reply, and only for {name}. The reference shows one good way to answer; the candidate does "
    "not have to resemble it to earn a high score.\n\n"
)
_OUTRO = (
    "\n\nAnswer with a single number from 0 to 5 and nothing else: no words, no "
    "explanation, no formatting."
)

RUBRICS: dict[str, str] = {
    "fluency": (
        "Fluency: is the reply well-formed, natural language that is easy to read?\n"
        "0 - not language at all: empty, garbled, repeated fragments or cut off mid-word.\n"
        "1 - mostly broken: grammar or word errors on nearly every clause; the meaning is hard "
        "to recover.\n"
        "2 - understandable with effort: frequent errors, awkward or repetitive phrasing, or an "
        "unfinished sentence.\n"
        "3 - readable: a few noticeable errors or stiff, unnatural wording.\n"
        "4 - fluent: natural and clear, with at most a minor slip.\n"
        "5 - flawless: natural, well-formed and smooth, as a careful native speaker writes."
    ),
    "professionalism": (
        "Professionalism: does the reply behave as a skilled counsellor would?\n"
        "0 - harmful: dismissive, insulting, blaming, or advice that could hurt the seeker.\n"
        "1 - inappropriate: careless, judgemental or off-topic remarks, or it oversteps (e.g. "
        "diagnoses, pushes its own agenda).\n"
        "2 - weak: not harmful, but generic or clumsy in a way a trained supporter would avoid.\n"
        "3 - acceptable: respectful and on-topic, with some missteps of tone or focus.\n"
        "4 - professional: respectful, appropriate and well judged for this moment.\n"
        "5 - exemplary: what an experienced counsellor would say here: respectful, "
        "well-bounded, and advancing the support skilfully."
    ),
    "empathy": (
        "Empathy: does the reply recognise and respond to the seeker's feelings and situation?\n"
        "0 - none: ignores or invalidates the seeker's feelings, or is cold.\n"
        "1 - minimal: a token acknowledgement that misreads or skips what the seeker feels.\n"
        "2 - generic: sympathy that could be said to anyone; not tied to what the seeker said.\n"
        "3 - adequate: acknowledges the seeker's feelings, but shallowly or only in part.\n"
        "4 - empathetic: shows it understood the seeker's specific feelings and situation.\n"
        "5 - deeply empathetic: accurately names and validates what the seeker feels, warmly "
        "and specifically, so the seeker would feel truly heard."
    ),
    "helpfulness": (
        "Helpfulness: does the reply move the conversation forward in a way that helps the "
        "seeker?\n"
        "0 - counter-productive: derails, confuses or would make the seeker feel worse.\n"
        "1 - unhelpful: adds nothing; the conversation stalls.\n"
        "2 - slightly helpful: a small step, vague or poorly suited to where the seeker is.\n"
        "3 - somewhat helpful: a reasonable next step (a useful question, some comfort or an "
        "idea) with clear room to do better.\n"
        "4 - helpful: a well-chosen next step that fits the seeker's needs at this point.\n"
        "5 - very helpful: the best next step here: it clearly helps the seeker understand, "
        "cope or act."
    ),
}

_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)\s*\.?\s*")


def _get(record: Any, key: str) -> Any:
    if isinstance(record, Mapping):
        return record.get(key)
    return getattr(record, key, None)


def rubric_system(dimension: str) -> str:
    """The system message of one dimension: what the rater is, the 0-5 rubric, the answer form."""
    return _INTRO.format(name=dimension) + RUBRICS[dimension] + _OUTRO


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) and value.strip() else NOT_AVAILABLE


def context_of(history: Sequence[Any] | None) -> tuple[str, str]:
    """``(conversation so far, the seeker's last message)`` of a history: a list of messages
    (``{"role", "text", "strategy"}`` records or :class:`esc_dist.data.esconv.Message`), as the
    ``history`` column of the prepared turns holds them. Either is :data:`NOT_AVAILABLE` when
    the history is missing or has no seeker message."""
    from ..data.esconv import SEEKER, as_messages, render_history

    if history is None:
        return NOT_AVAILABLE, NOT_AVAILABLE
    if isinstance(history, (str, bytes)):
        raise TypeError(
            "a history is a list of messages (role, text, strategy), not text: the "
            "seeker's last message must be found in it"
        )
    msgs = as_messages(history)
    last = next((m.text for m in reversed(msgs) if m.role == SEEKER and m.text.strip()), None)
    context = render_history(msgs) if msgs else NOT_AVAILABLE
    return context, _text(last)


def score_messages(
    dimension: str, history: Sequence[Any] | None, reference: str | None, reply: str
) -> list[dict]:
    """The chat messages that ask for one dimension's score of one reply."""
    context, last = context_of(history)
    user = (
        f"Conversation so far:\n{context}\n\n"
        f"The seeker's last message:\n{last}\n\n"
        f"Reference reply (by a human supporter):\n{_text(reference)}\n\n"
        f"Candidate reply to rate:\n{reply}\n\n"
        f"Rate the candidate reply's {dimension} from 0 to 5. Answer with the number only."
    )
    return [
        {"role": "system", "content": rubric_system(dimension)},
        {"role": "user", "content": user},
    ]


def parse_score(text: str) -> float:
    """The score in an answer that is just a number from 0 to 5 (whitespace and one trailing
    period allowed); raises ValueError otherwise."""
    m = _NUMBER.fullmatch(text or "")
    if not m:
        raise ValueError(f"expected just a number from 0 to 5, got {text[:60]!r}")
    v = float(m.group(1))
    if not math.isfinite(v) or not 0 <= v <= 5:
        raise ValueError(f"the score must be from 0 to 5, got {m.group(1)}")
    return v


def score_predictions(
    records: Iterable[Any],
    cfg: JudgeConfig,
    cache_dir: str | Path | None,
    histories: Mapping[str, Sequence[Any]] | None = None,
    *,
    client=None,
    keep_per_item: bool = False,
) -> dict:
    """Score each record's ``pred_reply`` on the four dimensions and summarise.

    ``records`` are prediction records (mappings or objects with ``id``, ``pred_reply`` and
    ``gold_reply``, the reference); ``histories`` maps a record id to the dialogue before the
    reply as a list of messages (see :func:`context_of`). A missing history or reference is
    shown to the judge as "(not available)" and counted in ``missing``.

    One request per (reply, dimension). Returns::

        protocol          "four-rubric-with-reference"
        model             the judge model
        n                 number of replies
        requests          n * 4: the (reply, dimension) judgements asked for (identical prompts
                          are sent once and cached answers are reused: see client)
        scored            replies with a valid score on all four dimensions
        scored_requests   (reply, dimension) judgements with a valid score (= sum of counts)
        parse_failures    (reply, dimension) judgements whose answer is not just a number 0-5
        request_failures  (reply, dimension) judgements whose request failed for good
        means             {dimension: mean over the replies scored on it, or None}
        counts            {dimension: replies with a valid score on it}
        missing           {"history": replies without a history, "reference": without a gold}
        client            the client's counters (calls, requests sent, cache hits, ...)
        items             with keep_per_item: {id: {dimension: score or None}}
    """
    from ..llm_client import LLMClient, check_failures

    histories = histories or {}
    records = list(records)
    if client is None:
        client = LLMClient.from_config(cfg, cache_dir, PROMPT_VERSION)
    ids = [str(_get(r, "id")) for r in records]
    prompts = [
        score_messages(
            dim, histories.get(i), _get(r, "gold_reply"), str(_get(r, "pred_reply") or "")
        )
        for i, r in zip(ids, records)
        for dim in DIMENSIONS
    ]
    results = client.map_text(prompts)
    check_failures(results, cfg.max_failed_share, "LLM scores")
    sums = dict.fromkeys(DIMENSIONS, 0.0)
    counts = dict.fromkeys(DIMENSIONS, 0)
    items: dict[str, dict[str, float | None]] = {}
    parse_failures = request_failures = 0
    for n, rid in enumerate(ids):
        scores: dict[str, float | None] = {}
        for dim, res in zip(DIMENSIONS, results[4 * n : 4 * n + 4]):
            score = None
            if res.ok:
                try:
                    score = parse_score(res.text)
                except ValueError as e:
                    log.debug("%s score of %s is malformed: %s", dim, rid, e)
                    parse_failures += 1
                    client.count("parse_failures")
            else:
                request_failures += 1
            scores[dim] = score
            if score is not None:
                sums[dim] += score
                counts[dim] += 1
        items[rid] = scores
    scored = sum(1 for s in items.values() if all(v is not None for v in s.values()))
    if parse_failures or request_failures:
        log.warning(
            "LLM scores: %d malformed answer(s), %d failed request(s) out of %d "
            "(reply, dimension) judgements",
            parse_failures,
            request_failures,
            len(prompts),
        )
    out = {
        "protocol": PROTOCOL,
        "model": cfg.model,
        "n": len(records),
        "requests": len(prompts),
        "scored": scored,
        "scored_requests": sum(counts.values()),
        "parse_failures": parse_failures,
        "request_failures": request_failures,
        "means": {k: (round(sums[k] / counts[k], 4) if counts[k] else None) for k in DIMENSIONS},
        "counts": counts,
        "missing": {
            "history": sum(1 for i in ids if histories.get(i) is None),
            "reference": sum(1 for r in records if _text(_get(r, "gold_reply")) == NOT_AVAILABLE),
        },
        "client": client.stats(),
    }
    if keep_per_item:
        out["items"] = items
    return out
