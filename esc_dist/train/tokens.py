"""Tokenization shared by SFT and DPO: prompts fitted to the length budget, cached on disk.

A long dialogue is never cut through the reply: the oldest history messages are dropped until the
prompt and its longest completion fit ``max_length``. Tokenization runs once per (data,
tokenizer, max_length), split over the ranks, and is cached under the stage's work directory.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable, Iterable

from .. import dist
from ..data.fitting import TEMPLATE_TOKENS, HistoryFitter
from ..io import atomic_write_json, read_json, sha256_json
from ..outputs import staged_dir


def encode_prompt_completion(
    tokenizer,
    prompt: list[dict],
    completion: list[dict],
) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (with the generation prompt) and of the completion after it.

    The whole conversation is rendered and tokenized once; the prompt ends where the rendered
    prompt text ends. If a token straddles that boundary the prompt is tokenized on its own.
    """
    ptxt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ftxt = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not ftxt.startswith(ptxt):
        raise ValueError(
            "the chat template renders the prompt differently when a completion "
            "follows; cannot mask the prompt tokens"
        )
    enc = tokenizer(ftxt, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    cut = next((i for i, (a, _) in enumerate(offsets) if a >= len(ptxt)), len(ids))
    if cut and offsets[cut - 1][1] > len(ptxt):
        p = tokenizer(ptxt, add_special_tokens=False)["input_ids"]
        if ids[: len(p)] != p:
            raise ValueError("the prompt's tokens are not a prefix of the conversation's tokens")
        cut = len(p)
    return ids[:cut], ids[cut:]


class PromptFitter(HistoryFitter):
    """Fits a prompt and its completions into ``max_length`` by dropping the oldest history
    (see :class:`esc_dist.data.fitting.HistoryFitter`), checked with exact encodings of the
    longest completion."""

    def __init__(self, tokenizer, max_length: int):
        super().__init__(tokenizer, max_length)
        self.max_length = max_length

    def __call__(
        self,
        prompt: list[dict],
        completions: list[list[dict]],
    ) -> tuple[list[int], list[list[int]], int] | None:
        """(prompt ids, ids of each completion, messages dropped), or None if nothing fits."""
        longest = max(completions, key=lambda c: sum(self.cost(m) for m in c))

        def fits(kept: list[dict]):
            p, c = encode_prompt_completion(self.tok, kept, longest)
            return p if len(p) + len(c) <= self.max_length else None

        reserve = sum(self.cost(m) + TEMPLATE_TOKENS for m in longest)
        fitted = self.fit(prompt, reserve, fits)
        if fitted is None:
            return None
        kept, _, dropped = fitted
        encoded = [encode_prompt_completion(self.tok, kept, c) for c in completions]
        if any(p != encoded[0][0] for p, _ in encoded):
            raise ValueError("the prompt tokenizes differently depending on the completion")
        return encoded[0][0], [c for _, c in encoded], dropped


def _tokenizer_key(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else str(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((text + str(tokenizer.chat_template)).encode()).hexdigest()


RowFn = Callable[[dict, PromptFitter], dict | None]


def tokenized_cached(
    ds,
    tokenizer,
    max_length: int,
    cache_root: Path,
    name: str,
    row_fn: RowFn,
    columns: Iterable[str],
):
    """Tokenized dataset (``columns``) and stats, cached on disk; ``row_fn`` maps one example
    to a row (with ``trimmed``: messages dropped) or None when it cannot fit.

    Every rank tokenizes an interleaved slice; rank 0 joins the slices in the original order.
    The cache is keyed by the data's fingerprint, the tokenizer, ``max_length`` and ``name``.
    """
    from datasets import Dataset, load_from_disk

    columns = list(columns)
    key = sha256_json([ds._fingerprint, _tokenizer_key(tokenizer), max_length, columns])[:16]
    path = cache_root / f"{name}-{key}"
    if not (path / "stats.json").is_file():
        world, me = dist.world_size(), dist.rank()
        fit = PromptFitter(tokenizer, max_length)
        rows, dropped = [], []
        for i in range(me, len(ds), world):
            ex = ds[i]
            row = row_fn(ex, fit)
            if row is None:
                dropped.append(ex["id"])
            else:
                rows.append({"index": i, **row})
        parts = cache_root / f".{name}-{key}.parts"
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_json(parts / f"rank{me}.json", {"rows": rows, "dropped": dropped})
        dist.barrier()
        if dist.is_main():
            rows, dropped = [], []
            for r in range(world):
                part = read_json(parts / f"rank{r}.json")
                rows += part["rows"]
                dropped += part["dropped"]
            rows.sort(key=lambda x: x["index"])
            stats = {
                "examples": len(rows),
                "history_trimmed": sum(x["trimmed"] > 0 for x in rows),
                "dropped_too_long": len(dropped),
                "dropped_ids": sorted(dropped)[:20],
                "max_length": max_length,
            }
            data = Dataset.from_dict({k: [x[k] for x in rows] for k in columns})
            with staged_dir(path, "token-cache") as tmp:
                data.save_to_disk(str(tmp / "data"))
                atomic_write_json(tmp / "stats.json", stats)
            shutil.rmtree(parts, ignore_errors=True)
    dist.barrier()
    return load_from_disk(str(path / "data")), read_json(path / "stats.json")
