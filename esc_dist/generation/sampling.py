"""How one item is decoded, and the choice of each next token.

Sampling draws no random numbers from a shared stream: each row has its own ``torch.Generator``
seeded by :func:`row_seed` from (run seed, stream, item key, sample index), which yields one
uniform number per generated token, and :func:`choose_tokens` picks the token by inverse-CDF
sampling over the temperature / top-k / top-p filtered distribution of that row. A row's sample
therefore depends only on its own logits and seed. Greedy decoding uses no randomness.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """How one item is decoded. ``top_k`` 0 and ``top_p`` 1.0 switch those filters off; the stop
    tokens are barred from the first ``min_new_tokens`` positions (as HF's ``min_new_tokens``)."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_new_tokens: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}"
            )
        if self.do_sample:
            if not self.temperature > 0:
                raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
            if not 0 < self.top_p <= 1:
                raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
            if self.top_k < 0:
                raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")


def row_seed(seed: int, stream: str, key: str, sample: int) -> int:
    """The 63-bit seed of one row: a hash of (run seed, stream, item key, sample index)."""
    h = hashlib.sha256(f"{seed}\x1f{stream}\x1f{key}\x1f{sample}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def choose_tokens(logits, do_sample, temperature, top_p, top_k, u):
    """Next token of each row: argmax, or an inverse-CDF draw with the row's own uniform ``u``.

    ``logits`` [B, V] float32; ``do_sample`` bool [B]; ``temperature``, ``top_p``, ``u`` float
    [B]; ``top_k`` long [B] (0 = off). Filters as in HF: temperature, then top-k, then top-p on
    the renormalised top-k distribution (the smallest prefix of the sorted tokens whose mass
    reaches top_p; the most likely token is always kept). A row's result depends only on its
    own logits, settings and ``u``.
    """
    import torch

    tokens = logits.argmax(dim=-1)
    if not bool(do_sample.any()):
        return tokens
    rows = do_sample.nonzero().squeeze(1)
    scaled = logits[rows] / temperature[rows].unsqueeze(1)
    sorted_l, order = torch.sort(scaled, dim=-1, descending=True, stable=True)
    vocab = sorted_l.shape[-1]
    rank = torch.arange(vocab, device=logits.device).unsqueeze(0)
    k = top_k[rows]
    k = torch.where(k > 0, k, torch.full_like(k, vocab)).unsqueeze(1)
    sorted_l = sorted_l.masked_fill(rank >= k, float("-inf"))
    probs = torch.softmax(sorted_l, dim=-1)
    before = probs.cumsum(dim=-1) - probs
    drop = before >= top_p[rows].unsqueeze(1)
    drop[:, 0] = False
    probs = probs.masked_fill(drop, 0.0)
    cdf = probs.cumsum(dim=-1)
    target = u[rows].unsqueeze(1) * cdf[:, -1:]
    pos = torch.searchsorted(cdf, target, right=True)
    last = (probs > 0).sum(dim=-1, keepdim=True) - 1  # kept tokens are a prefix
    pos = torch.minimum(pos, last)
    tokens[rows] = order.gather(1, pos).squeeze(1)
    return tokens
