"""Error rates of generated replies: how often a system's replies make each of the five
psychological errors of the DecoupledESC preliminary study.

Each predicted reply is labelled with the errors it makes, judged as the supporter's next message
after the dialogue so far, by one of the judge's backends (``judge.backend``):

- ``offline``: the deterministic reply rules of :mod:`esc_dist.psych.rules`, which see three of
  the five types (Template Response, Lack Empathy, Early Emotion Shift);
- ``openai``: an LLM behind any OpenAI-compatible endpoint (the ``judge`` section's endpoint,
  through :mod:`esc_dist.llm_client`: cached on disk, retried), asked about all five.

The types, which backend sees which, and the rate definitions are documented in
``docs/judge.md`` (section "Error rates of generated replies"). The bar plot of several systems'
rates is :func:`esc_dist.eval.plots.plot_error_rates`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..config import JudgeConfig
from ..data.esconv import SEEKER, as_messages, render_history
from ..errors import ConfigError, DataError
from ..log import get_logger
from ..psych.names import (
    EARLY_SHIFT,
    EMOTION_MISREAD,
    ERROR_TYPES,
    LACK_EMPATHY,
    STRATEGY_MISMATCH,
    TEMPLATE,
)
from ..psych.rules import RULES_VERSION, reply_findings
from ..strategies import DESCRIPTIONS, normalize_strategy

log = get_logger(__name__)

NONE = "none"
# The types each backend can detect, in the order of ERROR_TYPES.
OFFLINE_TYPES: tuple[str, ...] = tuple(
    e for e in ERROR_TYPES if e in (LACK_EMPATHY, EARLY_SHIFT, TEMPLATE)
)
BACKEND_TYPES: dict[str, tuple[str, ...]] = {"offline": OFFLINE_TYPES, "openai": ERROR_TYPES}
# Part of the answer cache key: bump it whenever the prompt changes meaning.
PROMPT_VERSION = "reply-errors-v1"

_DEFINITIONS = {
    STRATEGY_MISMATCH: "the reply is not the kind of support this moment calls for, or it does "
    "not carry out the support strategy it was meant to realise",
    TEMPLATE: "the reply is generic and impersonal -- it could be sent to anyone in any "
    "conversation -- or it repeats what the supporter has already said",
    LACK_EMPATHY: "the reply passes over, plays down or ignores the feelings the seeker has "
    "expressed",
    EMOTION_MISREAD: "the reply gets the seeker's emotion wrong: it names or assumes a feeling "
    "the seeker has not shown, or mistakes what they feel or how strongly",
    EARLY_SHIFT: "the reply turns to advice, solutions or information before the seeker's "
    "feelings have been acknowledged or explored",
}

ERRORS_SYSTEM = (
    "You supervise counsellors. You will read an emotional-support conversation between a "
    "help-seeker and a supporter, and then one reply the supporter could send next. Decide which "
    "of the following five errors that reply makes, taking it as the supporter's next message in "
    "this conversation:\n"
    + "".join(f'- "{name}": {_DEFINITIONS[name]}.\n' for name in ERROR_TYPES)
    + "A reply can make no error, one, or several. Judge only the reply, not the earlier "
    "messages. Answer with a single JSON object and nothing else, of the form "
    '{"errors": [...]}, listing the names of the errors the reply makes exactly as written '
    "above; the list is empty when the reply makes none of them."
)


def _get(record: Any, key: str) -> Any:
    if isinstance(record, Mapping):
        return record.get(key)
    return getattr(record, key, None)


def offline_reply_errors(history: Iterable[Any], reply: str) -> list[str]:
    """The error types the offline reply rules find in ``reply`` after ``history`` (history
    records ``{"role", "text", "strategy"}`` or Messages), in the order of ``ERROR_TYPES``. Only
    Template Response, Lack Empathy and Early Emotion Shift can appear."""
    found = {f.error for f in reply_findings(history, reply)}
    return [e for e in ERROR_TYPES if e in found]


def _last_seeker(history: Sequence[Any]) -> str:
    said = [m.text for m in as_messages(history) if m.role == SEEKER and m.text.strip()]
    return said[-1] if said else ""


def error_messages(history: Sequence[Any], reply: str, strategy: str | None = None) -> list[dict]:
    """The chat messages that ask which errors ``reply`` makes after ``history``; ``strategy``
    is the strategy the reply was meant to realise, when known."""
    last = _last_seeker(history)
    name = normalize_strategy(strategy) if strategy else None
    if name:
        meant = f"{name} ({DESCRIPTIONS.get(name, '')})"
    else:
        meant = "not given (judge whether the reply suits this moment of the conversation)"
    user = (
        f"Conversation so far:\n{render_history(history)}\n\n"
        f"The seeker's last message:\n{last or '(the seeker has not said anything yet)'}\n\n"
        f"The support strategy the reply was meant to realise: {meant}\n\n"
        f"The supporter's reply to review:\n{reply}\n\n"
        "Which of the five errors does this reply make? Answer with the JSON object only."
    )
    return [{"role": "system", "content": ERRORS_SYSTEM}, {"role": "user", "content": user}]


_NAMES = {e.lower(): e for e in ERROR_TYPES}


def parse_errors(data: Mapping[str, Any]) -> list[str]:
    """The error types of the model's JSON answer, in the order of ``ERROR_TYPES``; raises
    ValueError unless it is exactly ``{"errors": [names]}`` with known names (case and spacing
    aside)."""
    if set(data) != {"errors"}:
        raise ValueError(f"expected the one key 'errors', got {sorted(data)}")
    value = data["errors"]
    if not isinstance(value, list):
        raise ValueError(f"'errors' is not a list: {value!r}")
    out = set()
    for v in value:
        name = _NAMES.get(" ".join(v.split()).lower()) if isinstance(v, str) else None
        if name is None:
            raise ValueError(f"'errors' holds an unknown error {v!r}")
        out.add(name)
    return [e for e in ERROR_TYPES if e in out]


def _label_openai(
    ids: list[str],
    prompts: list[list[dict]],
    cfg: JudgeConfig,
    cache_dir: str | Path | None,
    client,
) -> tuple[dict, int, int, dict]:
    from ..llm_client import LLMClient, check_failures

    if client is None:
        client = LLMClient.from_config(cfg, cache_dir, PROMPT_VERSION)
    results = client.map_json(prompts)
    check_failures(results, cfg.max_failed_share, "psychological error rates")
    labels: dict[str, list[str] | None] = {}
    parse_failures = request_failures = 0
    for rid, res in zip(ids, results):
        errors = None
        if res.ok:
            try:
                errors = parse_errors(res.data)
            except ValueError as e:
                client.count("parse_failures")
                log.debug("error labels for %s are malformed: %s", rid, e)
                parse_failures += 1
        elif res.parse_failed:
            parse_failures += 1
        else:
            request_failures += 1
        labels[rid] = errors
    if parse_failures or request_failures:
        log.warning(
            "psychological error rates: %d malformed answer(s), %d failed request(s) "
            "out of %d; those replies are left out of the rates",
            parse_failures,
            request_failures,
            len(ids),
        )
    return labels, parse_failures, request_failures, client.stats()


def error_rates(
    records: Iterable[Any],
    histories: Mapping[str, Sequence[Any]],
    cfg: JudgeConfig,
    cache_dir: str | Path | None = None,
    *,
    backend: str | None = None,
    client=None,
    keep_per_item: bool = False,
) -> dict:
    """Label each record's ``pred_reply`` with the psychological errors it makes, and count.

    ``records`` are prediction records (mappings or objects with ``id``, ``pred_reply`` and
    ``pred_strategy``, None when unknown); ``histories`` maps each record id to the dialogue
    before the reply (the ``history`` list of a prepared turn: ``{"role", "text", "strategy"}``
    records; a record without one is a :class:`DataError`). ``backend`` (default
    ``cfg.backend``) is ``offline`` or ``openai``; ``cache_dir`` holds the LLM answers and
    ``client`` replaces the :class:`esc_dist.llm_client.LLMClient` built from ``cfg``.

    Returns ``{"backend", "version", "types", "n", "labelled", "parse_failures",
    "request_failures", "rates", "none", "any_error", "counts"}``, plus ``"model"`` and
    ``"client"`` (the request counters) for ``openai`` and, with ``keep_per_item``, ``"items":
    {id: [errors] or None when not labelled}``. ``types`` are the types the backend can detect;
    ``rates[type]`` is the share of labelled replies with that error (None for a type the
    backend cannot see, or when no reply was labelled); ``none`` the share with no error;
    ``any_error`` the share with at least one; ``counts`` the same as numbers of replies (keys:
    the five types, ``"none"`` and ``"any_error"``).
    """
    backend = backend or cfg.backend
    if backend not in BACKEND_TYPES:
        raise ConfigError(f"unknown judge backend {backend!r} (expected offline or openai)")
    records = list(records)
    ids = [str(_get(r, "id")) for r in records]
    missing = [i for i in ids if i not in histories]
    if missing:
        raise DataError(
            None,
            f"psychological error rates: no dialogue history for "
            f"{len(missing)} prediction(s), first {missing[0]!r}",
        )
    replies = [str(_get(r, "pred_reply") or "") for r in records]
    out: dict[str, Any] = {"backend": backend}
    if backend == "offline":
        labels = {i: offline_reply_errors(histories[i], reply) for i, reply in zip(ids, replies)}
        parse_failures = request_failures = 0
        out["version"] = RULES_VERSION
    else:
        prompts = [
            error_messages(histories[i], reply, _get(r, "pred_strategy"))
            for i, reply, r in zip(ids, replies, records)
        ]
        labels, parse_failures, request_failures, counters = _label_openai(
            ids, prompts, cfg, cache_dir, client
        )
        out.update(model=cfg.model, version=f"{PROMPT_VERSION}:{cfg.model}")
    types = BACKEND_TYPES[backend]
    done = [labels[i] for i in ids if labels[i] is not None]
    labelled = len(done)
    counts: dict[str, int | None] = {
        e: (sum(e in d for d in done) if e in types else None) for e in ERROR_TYPES
    }
    counts[NONE] = sum(not d for d in done)
    counts["any_error"] = labelled - counts[NONE]

    def share(c: int | None) -> float | None:
        return round(c / labelled, 4) if c is not None and labelled else None

    out.update(
        {
            "types": list(types),
            "n": len(records),
            "labelled": labelled,
            "parse_failures": parse_failures,
            "request_failures": request_failures,
            "rates": {e: share(counts[e]) for e in ERROR_TYPES},
            "none": share(counts[NONE]),
            "any_error": share(counts["any_error"]),
            "counts": counts,
        }
    )
    if backend == "openai":
        out["client"] = counters
    if keep_per_item:
        out["items"] = {i: labels[i] for i in ids}
    return out
