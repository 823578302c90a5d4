"""The IPM judge: keep a mined pair only when the chosen side is free of psychological errors and
the rejected side shows at least one.

:func:`judge_pairs` is the one entry point; it dispatches to the ``offline`` backend (the
default; deterministic rules, :mod:`esc_dist.ipm.rules` over :mod:`esc_dist.psych.rules`) or the
``openai`` backend (an LLM behind any OpenAI-compatible endpoint, :mod:`esc_dist.ipm.llm_judge`).
Both build their verdicts and reasons with :mod:`esc_dist.ipm.verdicts`. The errors, the rules,
the prompt and the versions are documented in ``docs/judge.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import JudgeConfig
from ..constants import ROLES
from ..errors import ConfigError, DataError
from ..psych.names import EARLY_SHIFT, LACK_EMPATHY, TEMPLATE  # noqa: F401
from .llm_judge import judge_openai
from .rules import judge_pair_offline
from .verdicts import (  # noqa: F401  (the judge's names, as its callers use them)
    ERRORS,
    OFFLINE_RULES_VERSION,
    PROMPT_VERSION,
    explain,
    settled,
    verdict,
)


def judge_version(cfg: JudgeConfig) -> str:
    """What the verdicts depend on besides the pairs: the rules, or the prompt and model."""
    if cfg.backend == "offline":
        return OFFLINE_RULES_VERSION
    return f"{PROMPT_VERSION}:{cfg.model}"


def judge_pairs(
    pairs: Sequence[Mapping[str, Any]],
    cfg: JudgeConfig,
    cache_dir: str | Path | None = None,
    *,
    client=None,
) -> list[dict]:
    """One verdict per pair, in order, from the backend ``cfg.backend``.

    ``cache_dir`` holds the LLM answers of the ``openai`` backend (unused offline); ``client``
    replaces the :class:`esc_dist.llm_client.LLMClient` built from ``cfg`` (tests, reuse).
    """
    for p in pairs:
        if p.get("role") not in ROLES:
            raise DataError(
                None,
                f"pair {p.get('id')!r}: unknown role {p.get('role')!r} "
                f"(expected one of {', '.join(ROLES)})",
            )
    if cfg.backend == "offline":
        return [judge_pair_offline(p, cfg.keep_unparseable) for p in pairs]
    if cfg.backend == "openai":
        return judge_openai(pairs, cfg, cache_dir, client)
    raise ConfigError(f"unknown judge backend {cfg.backend!r} (expected offline or openai)")
