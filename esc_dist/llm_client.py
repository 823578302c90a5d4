"""A client for OpenAI-compatible chat-completion endpoints (OpenAI, vLLM, ...).

Built on the official ``openai`` client (protocol, types, authentication, connection pool,
timeouts, errors by status) and a thread pool for concurrency. What this module adds:

* **Answers are JSON objects, or plain text.** :meth:`LLMClient.chat_json` parses the model's
  message strictly (one JSON object, optionally inside a single Markdown code fence); a malformed
  answer is counted and returned as a failed :class:`ChatResult`, never raised, so one bad answer
  cannot sink a batch. :meth:`LLMClient.chat_text` returns the message as it came (the caller
  parses it and counts what it finds malformed with :meth:`LLMClient.count`); both share the
  cache, the retries and the counters, and both send ``temperature`` (0 by default).
* **Retries.** HTTP 429 and 5xx, connection errors and timeouts are retried up to ``max_retries``
  times with exponential backoff and jitter; a ``Retry-After`` header wins over the computed delay.
  Other HTTP errors are not retried; 401/403/404 and a base URL that is no http(s) URL raise
  :class:`LLMError` (a wrong key, model or URL would fail every request of the batch alike).
  The retry loop is our own, thin, around an ``openai`` client built with ``max_retries=0``:
  openai's retry has a fixed backoff (0.5 s doubling to 8 s) and reports neither its attempts nor
  its timeouts, while we count every attempt, retry and timeout (they go into ``stats.json``), log
  each retry, say after how many attempts a request gave up, and let tests shrink the backoff.
* **Timeout.** ``timeout`` seconds for connecting and for each read of one attempt; an attempt
  that runs past it counts as a timeout and is retried.
* **Cache.** Every answer received is stored under ``cache_dir`` in its own file, named by the
  SHA-256 of (model, prompt version, messages) and written atomically, so a rerun, also after a
  crash, sends no request for what it already has. Malformed answers are cached too (a rerun
  gives the same result); failed requests are not (a rerun asks again). Bump the prompt version
  to ask afresh.
* **The API key** is read only from the environment variable named by ``api_key_env`` (not from
  openai's ``OPENAI_API_KEY`` fallback) and sent as ``Authorization: Bearer``; it is never logged,
  written to disk or put into an exception message. Endpoints on localhost (a local vLLM server)
  may run without a key; no ``Authorization`` header is sent then.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import re
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import openai

from .errors import LLMError
from .io import atomic_write_json
from .log import get_logger
from .redaction import MASK

log = get_logger(__name__)

Messages = Sequence[dict]

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_FATAL_STATUS = {401, 403, 404}
_NO_KEY = "no-key"  # openai insists on a key; this one is never sent (the header is omitted)


class JSONAnswerError(ValueError):
    """The model's answer is not one JSON object."""


@dataclass
class ChatResult:
    """The outcome of one request: ``data`` is the parsed JSON object when ``ok``."""

    ok: bool
    data: dict | None = None
    text: str | None = None  # the model's raw answer, when one was received
    error: str | None = None  # "parse: ..." or "request: ..." when not ok
    cached: bool = False

    @property
    def parse_failed(self) -> bool:
        return not self.ok and (self.error or "").startswith("parse:")


def parse_json_answer(text: str) -> dict:
    """The JSON object in a model's answer; tolerates one ```json fence around it, nothing else."""
    s = text.strip()
    m = re.fullmatch(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?```", s, re.S)
    if m:
        s = m.group(1).strip()
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        raise JSONAnswerError(f"not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(obj, dict):
        raise JSONAnswerError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def cache_key(model: str, prompt_version: str, messages: Messages) -> str:
    payload = {"model": model, "prompt_version": prompt_version, "messages": list(messages)}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def is_local_url(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host in _LOCAL_HOSTS or host.startswith("127.")


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def check_failures(results: Sequence[ChatResult], max_failed_share: float, what: str) -> int:
    """The number of ``results`` whose request failed for good; raises :class:`LLMError` when
    they are more than ``max_failed_share`` of all (``judge.max_failed_share``), so that a stage
    whose endpoint could not answer fails instead of writing an output without its verdicts."""
    failed = [r for r in results if not r.ok and not r.parse_failed]
    if failed and len(failed) > max_failed_share * len(results):
        allowed = "none" if max_failed_share == 0 else f"at most {max_failed_share:g} of them"
        raise LLMError(
            f"{what}: {len(failed)} of {len(results)} requests failed for good "
            f"(first: {failed[0].error}); judge.max_failed_share allows {allowed}. "
            "Check the endpoint (judge.base_url, judge.model, the key variable) and "
            "rerun (answers already received are cached), or set "
            "judge.max_failed_share to accept a share of failed requests"
        )
    return len(failed)


class _Fatal(Exception):
    """A request that failed for good (not retryable, or out of retries)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class LLMClient:
    """Chat-completion requests with a concurrency limit, retries, a disk cache and counters.

    ``base_url`` is the API root (".../v1"). ``prompt_version`` is part of the cache key: bump it
    whenever a prompt changes meaning. ``base_delay`` and ``max_delay`` bound the backoff
    (seconds); tests make them tiny.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 6,
        timeout: float = 60.0,
        cache_dir: str | os.PathLike | None = None,
        prompt_version: str = "v1",
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        temperature: float = 0.0,
        max_tokens: int | None = 512,
        seed: int | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LLMError(
                f"the judge endpoint {base_url!r} is not an http(s) URL (check judge.base_url)"
            )
        if MASK in (parts.username, parts.password):
            raise LLMError(
                f"the judge endpoint {base_url} holds credentials that were redacted "
                "when the recipe was saved; give the key through the environment "
                "variable named by judge.api_key_env instead"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env, "").strip() if api_key_env else ""
        if not key and not is_local_url(base_url):
            raise LLMError(
                f"the judge endpoint {base_url} needs an API key: set the environment "
                f"variable {api_key_env or '(judge.api_key_env is empty)'} "
                "(keys are read from the environment only)"
            )
        self._has_key = bool(key)
        self._headers = None if key else {"Authorization": openai.Omit()}
        self._api = openai.OpenAI(
            api_key=key or _NO_KEY, base_url=base_url.rstrip("/"), timeout=timeout, max_retries=0
        )
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.prompt_version = prompt_version
        self.base_delay, self.max_delay = base_delay, max_delay
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "calls",
                "requests",
                "retries",
                "cache_hits",
                "parse_failures",
                "request_failures",
                "timeouts",
            ),
            0,
        )

    @classmethod
    def from_config(
        cls, cfg, cache_dir: str | os.PathLike | None, prompt_version: str, **kwargs
    ) -> "LLMClient":
        """A client for a :class:`esc_dist.config.JudgeConfig`."""
        return cls(
            cfg.base_url,
            cfg.model,
            api_key_env=cfg.api_key_env,
            concurrency=cfg.concurrency,
            max_retries=cfg.max_retries,
            timeout=cfg.timeout,
            max_tokens=cfg.max_tokens,
            cache_dir=cache_dir,
            prompt_version=prompt_version,
            **kwargs,
        )

    def __repr__(self) -> str:
        key = "***" if self._has_key else None
        return f"LLMClient(url={self.url!r}, model={self.model!r}, key={key})"

    # -- counters -----------------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` (callers count answers they find malformed)."""
        with self._lock:
            self.counters[name] += n

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    # -- cache --------------------------------------------------------------------------------

    def _cache_path(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> str | None:
        p = self._cache_path(key)
        if p is None or not p.is_file():
            return None
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # unreadable entries are simply fetched again
        text = rec.get("answer") if isinstance(rec, dict) else None
        return text if isinstance(text, str) else None

    def _cache_put(self, key: str, text: str) -> None:
        p = self._cache_path(key)
        if p is not None:
            atomic_write_json(
                p,
                {
                    "key": key,
                    "model": self.model,
                    "prompt_version": self.prompt_version,
                    "answer": text,
                },
            )

    # -- requests -----------------------------------------------------------------------------

    def _attempt(self, req: dict[str, Any]) -> str:
        """One attempt; returns the model's message text."""
        self.count("requests")
        try:
            completion = self._api.chat.completions.create(**req)
        except openai.APITimeoutError:
            self.count("timeouts")
            raise _Retryable("timeout") from None
        except openai.APIConnectionError as e:
            raise _Retryable(f"connection error ({type(e.__cause__ or e).__name__})") from None
        except openai.APIStatusError as e:
            status = e.status_code
            if status == 429 or status >= 500:
                raise _Retryable(
                    f"HTTP {status}", _retry_after(e.response.headers.get("Retry-After"))
                ) from None
            if status in _FATAL_STATUS:
                raise LLMError(
                    f"{self.url} answered HTTP {status}"
                    + (
                        f" (check the API key variable {self.api_key_env})"
                        if status in (401, 403)
                        else " (check judge.base_url and judge.model)"
                    )
                ) from None
            raise _Fatal(f"HTTP {status}") from None
        except ValueError:  # a body that is not JSON at all
            raise _Fatal("the response is not a chat completion") from None
        try:
            content = completion.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise _Fatal("the response is not a chat completion") from None
        if not isinstance(content, str):
            raise _Fatal("the response has no text content")
        return content

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        cap = min(self.max_delay, self.base_delay * (2**attempt))
        with self._lock:
            return cap / 2 + self._rng.uniform(0, cap / 2)

    def _fetch(self, messages: Messages) -> str:
        req: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "temperature": self.temperature,
            "extra_headers": self._headers,
        }
        if self.max_tokens is not None:
            req["max_tokens"] = self.max_tokens
        if self.seed is not None:
            req["seed"] = self.seed
        attempt = 0
        while True:
            try:
                return self._attempt(req)
            except _Retryable as e:
                if attempt >= self.max_retries:
                    raise _Fatal(f"{e.reason}; gave up after {attempt + 1} attempts") from None
                delay = self._delay(attempt, e.retry_after)
                log.debug(
                    "judge request: %s, retry %d/%d in %.2fs",
                    e.reason,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                self.count("retries")
                attempt += 1
                time.sleep(delay)

    # -- public API ---------------------------------------------------------------------------

    def _answer(self, messages: Messages) -> tuple[str | None, bool, ChatResult | None]:
        """The model's answer text from the cache or the endpoint: ``(text, cached, None)``, or
        ``(None, False, failed result)`` when the request failed for good."""
        self.count("calls")
        key = cache_key(self.model, self.prompt_version, messages)
        text = self._cache_get(key)
        if text is not None:
            self.count("cache_hits")
            return text, True, None
        try:
            text = self._fetch(messages)
        except _Fatal as e:
            self.count("request_failures")
            return None, False, ChatResult(False, error=f"request: {e}")
        self._cache_put(key, text)
        return text, False, None

    def chat_json(self, messages: Messages) -> ChatResult:
        """Ask once (or read the cache) and parse the answer as a JSON object."""
        text, cached, failed = self._answer(messages)
        if failed is not None:
            return failed
        try:
            data = parse_json_answer(text)
        except JSONAnswerError as e:
            self.count("parse_failures")
            return ChatResult(False, text=text, error=f"parse: {e}", cached=cached)
        return ChatResult(True, data=data, text=text, cached=cached)

    def chat_text(self, messages: Messages) -> ChatResult:
        """Ask once (or read the cache); the answer is returned as text (``ChatResult.text``,
        ``data`` None), unparsed: the caller judges it and counts a malformed one with
        ``count("parse_failures")``."""
        text, cached, failed = self._answer(messages)
        if failed is not None:
            return failed
        return ChatResult(True, text=text, cached=cached)

    def _map(self, ask, conversations: Sequence[Messages]) -> list[ChatResult]:
        if not conversations:
            return []
        # Identical prompts are asked once.
        keys = [cache_key(self.model, self.prompt_version, m) for m in conversations]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        unique = [conversations[i] for i in first.values()]
        if self.concurrency == 1 or len(unique) == 1:
            results = [ask(m) for m in unique]
        else:
            with ThreadPoolExecutor(
                max_workers=min(self.concurrency, len(unique)), thread_name_prefix="llm"
            ) as pool:
                results = list(pool.map(ask, unique))
        by_key = dict(zip(first, results))
        return [by_key[k] for k in keys]

    def map_json(self, conversations: Sequence[Messages]) -> list[ChatResult]:
        """:meth:`chat_json` over many prompts, ``concurrency`` at a time, results in order."""
        return self._map(self.chat_json, conversations)

    def map_text(self, conversations: Sequence[Messages]) -> list[ChatResult]:
        """:meth:`chat_text` over many prompts, ``concurrency`` at a time, results in order."""
        return self._map(self.chat_text, conversations)
