"""Secrets kept out of everything esc-dist writes: saved recipes, manifests, the W&B config and
command line, error messages and log lines.

:func:`redact` hides the values of secret-looking keys (``api_key``, ``token``, ...) and, through
:func:`redact_text`, secrets by their shape wherever they were typed: an API key given as
``judge.api_key_env`` (where the variable's *name* belongs), a password in ``judge.base_url``'s
userinfo, a bearer token. Each becomes "***" (a URL keeps its host).
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# Keys of known providers: OpenAI (sk-..., sk-proj-...), Anthropic (sk-ant-...), Hugging Face
# (hf_...), GitHub (ghp_..., github_pat_...).
_KEYS = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,})"
)
# A value after a key-like name (``api_key=...``, ``WANDB_API_KEY: 0123...``, ``"token": "..."``):
# e.g. a W&B key (40 hex digits) in a log line or a URL query.
_NAMED = re.compile(
    r"(?i)((?:api[_\-]?key|apikey|token|secret|password|passwd|auth)"
    r"[\"']?\s*[=:]\s*[\"']?)(?!\*\*\*)([^\s\"',;&}]{8,})"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)(?!\*\*\*)[A-Za-z0-9._~+/=\-]{8,}")
# userinfo of a URL: scheme://USER[:PASSWORD]@host
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#]+@")


def redact_text(text: str) -> str:
    """``text`` with every secret-looking part replaced by "***" (the host of a URL is kept)."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    text = _KEYS.sub(MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return _NAMED.sub(lambda m: m.group(1) + MASK, text)


def looks_secret(text: str) -> bool:
    """Whether ``text`` holds something :func:`redact_text` would hide."""
    return redact_text(text) != text


_SECRET_KEY = re.compile(
    r"(^|[_\-])(api[_\-]?key|key|token|secret|password|passwd|authorization)$", re.I
)


def redact(obj: Any, by_name: bool = True) -> Any:
    """Copy of ``obj`` (dicts, lists, strings) with secrets by their shape replaced by "***"
    (:func:`redact_text`, in values and keys) and, with ``by_name``, the values of secret-looking
    keys too."""
    if isinstance(obj, dict):
        return {
            redact(k): (
                MASK
                if by_name and _SECRET_KEY.search(str(k)) and v not in (None, "")
                else redact(v, by_name)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [redact(v, by_name) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
