"""The model replica of one rank: a plain (non-ZeRO) model decoding batches with a KV cache.

Prompts come fitted to the model's context (:func:`fit_prompts`). Each prompt of a batch is
prefilled on its own (the fast causal attention path) and the caches are stacked, left-padded,
for the batched decoding steps with a KV cache (``prefill="batched"`` prefills the padded batch
in one call instead; see :func:`resolve_prefill`). Decoding stops at the
tokenizer's eos, the pad token and any eos id of the model's generation config, or after the
item's ``max_new_tokens``; the text is decoded without special tokens. On CUDA the replica turns
on PyTorch's deterministic algorithms (:func:`deterministic_cuda`).

The decoding steps keep their keys and values in a cache that grows by a token per step
(``decode="dynamic"``, the default), or in one allocated for the whole batch up front, with an
attention mask of fixed width (``static``), whose every step has the same shapes, so that it
can run compiled, as CUDA graphs on a GPU (``compiled``); see :func:`resolve_decode`.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Sequence

from .. import dist
from ..data.fitting import HistoryFitter
from ..errors import DataError
from ..internals import internal
from ..log import get_logger
from ..models import loading
from .sampling import choose_tokens
from .work import WorkItem, messages_sha

log = get_logger(__name__)


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    tok = loading.load_tokenizer(model_dir, trust_remote_code)
    tok.padding_side = "left"
    return tok


def prompt_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def fit_prompts(
    items: Sequence[WorkItem], tokenizer, context: int | None, source: str | Path | None = None
) -> tuple[list[list[int]], list[int]]:
    """The prompt ids of every item and how many history messages were dropped from each.

    A prompt whose tokens and ``max_new_tokens`` exceed ``context`` loses its oldest history
    messages, as in training (:class:`esc_dist.data.fitting.HistoryFitter`: never the system
    message, never the last seeker message); any other prompt is tokenized as it is. Raises a
    :class:`DataError` naming ``source`` (the data) and the turn of the first item that does not
    fit even so. Every rank computes the same, so every rank refuses the same item.
    """
    fitter = HistoryFitter(tokenizer, context or 0)
    done: dict[tuple[str, int], tuple[list[int], int]] = {}
    keys = []
    for it in items:
        max_new = it.sampling.max_new_tokens
        key = (messages_sha(it.messages), max_new)
        if key not in done:
            ids, dropped = prompt_ids(tokenizer, it.messages), 0
            if context is not None and len(ids) + max_new > context:

                def within(kept: list[dict]) -> list[int] | None:
                    p = prompt_ids(tokenizer, kept)
                    return p if len(p) + max_new <= context else None

                fitted = fitter.fit(it.messages, max_new, within)
                if fitted is None:
                    n = len(prompt_ids(tokenizer, fitter.shortest(it.messages)))
                    raise DataError(
                        source,
                        f"turn {it.seed_key}: the prompt does not fit the model's context "
                        f"of {context} tokens even with only its last seeker message kept ({n} "
                        f"prompt tokens + {max_new} new tokens)",
                        dialogue=it.meta.get("dialogue_id"),
                    )
                _, ids, dropped = fitted
            done[key] = ids, dropped
        keys.append(key)
    return [done[k][0] for k in keys], [done[k][1] for k in keys]


class Replica:
    """A plain (non-ZeRO) model on this rank's device, in the dtype of ``precision``."""

    def __init__(
        self,
        model_dir: str | Path,
        tokenizer,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        prefill: str = "auto",
        precision: str = "auto",
        decode: str = "auto",
    ):
        import torch

        self.device, self.dtype = device_and_dtype(precision)
        self.prefill = resolve_prefill(prefill)
        self.decode = resolve_decode(decode, self.device.type == "cuda")
        deterministic_cuda()
        self.model = loading.load_causal_lm(
            model_dir, self.dtype, trust_remote_code, attn_implementation
        )
        self.model.to(self.device).eval()
        self.tok = tokenizer
        self.pad_id = tokenizer.pad_token_id
        stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        stops.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        self.stop_ids = torch.tensor(sorted(s for s in stops if s is not None), device=self.device)
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.first_kw = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        # the decoding step's forward: compiled once (per shape) when decode is "compiled"
        self._step = self.model
        if self.decode == "compiled":
            self._step = torch.compile(self.model, **COMPILE_OPTIONS)
        self._fallback_logged = False
        self._static = None  # ((rows, length), the StaticCache of the last batch)

    def _forward(self, ids, mask, pos, cache, first: bool):
        kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        if cache is not None:
            kw[self.cache_kw] = cache
        if first:
            kw.update(self.first_kw)
        out = (self.model if first else self._step)(**kw)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.logits[:, -1, :].float(), new_cache

    def _prefill_per_row(self, ids_list, width: int):
        """Prefill each prompt alone (no padding mask: the fast causal attention path, which on
        CPU is several times faster than a padded batch), then stack the per-row caches, left-
        padded with zeros, into one batched cache for the batched decoding steps. Returns None
        (the caller falls back to a padded batch prefill) when the model's cache is not a plain
        DynamicCache of full-attention layers."""
        import torch
        from transformers import DynamicCache

        logits, rows = [], []
        for p in ids_list:
            x = torch.tensor([p], dtype=torch.long, device=self.device)
            pos = torch.arange(len(p), device=self.device).unsqueeze(0)
            lg, cache = self._forward(x, None, pos, None, first=True)
            kv = _plain_kv(cache)
            if kv is None:
                return None
            logits.append(lg)
            rows.append(kv)
        merged = DynamicCache()
        for layer in range(len(rows[0])):
            ks, vs = [], []
            for kv in rows:
                k, v = kv[layer]
                pad = width - k.shape[-2]
                ks.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                vs.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            merged.update(torch.cat(ks), torch.cat(vs), layer)
        return torch.cat(logits), merged

    def _static_cache(self, cache, rows: int, length: int):
        """The prefilled ``cache`` copied into a StaticCache of ``rows`` x ``length`` positions,
        or None (the caller decodes with the growing cache) when the model's cache is not made
        of plain full-attention layers (sliding windows, linear attention, other cache classes).
        The StaticCache of the last batch is reset and reused when its shape is the same: its
        tensors keep their addresses, which CUDA graphs need to replay rather than record."""
        from transformers import StaticCache

        kv = _plain_kv(cache)
        if kv is not None and self._static is not None and self._static[0] == (rows, length):
            static = self._static[1]
            static.reset()
        else:
            self._static = None
            static = StaticCache(config=self.model.config, max_cache_len=length)
            StaticLayer = internal("transformers.cache_utils", "StaticLayer")
            layers = getattr(static, "layers", None)
            if not layers or any(type(layer) is not StaticLayer for layer in layers):
                kv = None
        if kv is None:
            if not self._fallback_logged:
                self._fallback_logged = True
                log.warning(
                    "decode %s: this model's cache is not plain full attention; its decoding "
                    "steps use the growing cache (decode: dynamic)",
                    self.decode,
                )
            return None
        for i, (k, v) in enumerate(kv):
            static.update(k, v, i)
        self._static = ((rows, length), static)
        return static

    def generate_batch(
        self, items: Sequence[WorkItem], ids_list: Sequence[list[int]], seeds: Sequence[int]
    ) -> list[dict]:
        """Decode one batch with a KV cache; returns text, finish reason and token counts."""
        import torch

        with torch.inference_mode():
            return self._generate(items, ids_list, seeds)

    def _generate(self, items, ids_list, seeds):
        import torch

        n, width = len(items), max(len(p) for p in ids_list)
        dev = self.device
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for r, p in enumerate(ids_list):
            ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p) :] = 1
        s = [it.sampling for it in items]
        max_new = [x.max_new_tokens for x in s]
        steps = max(max_new)
        # One uniform number per token position from each sampled row's own generator.
        u = torch.zeros((n, steps), dtype=torch.float64)
        for r, (x, seed) in enumerate(zip(s, seeds)):
            if x.do_sample:
                g = torch.Generator().manual_seed(seed)
                u[r, : x.max_new_tokens] = torch.rand(
                    x.max_new_tokens, generator=g, dtype=torch.float64
                )
        u = u.to(device=dev, dtype=torch.float32)
        do_sample = torch.tensor([x.do_sample for x in s], device=dev)
        temperature = torch.tensor(
            [x.temperature if x.do_sample else 1.0 for x in s], dtype=torch.float32, device=dev
        )
        top_p = torch.tensor([x.top_p for x in s], dtype=torch.float32, device=dev)
        top_k = torch.tensor([x.top_k for x in s], dtype=torch.long, device=dev)
        limit = torch.tensor(max_new, device=dev)
        min_new = torch.tensor([x.min_new_tokens for x in s], device=dev)
        bar_steps = max(x.min_new_tokens for x in s)  # steps at which some row may not stop

        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        done = self._prefill_per_row(ids_list, width) if self.prefill == "per_row" else None
        logits, cache = (
            done if done is not None else self._forward(ids, mask, pos, None, first=True)
        )
        next_pos = pos[:, -1:] + 1
        static = None
        if self.decode != "dynamic" and steps > 1:
            # one mask of fixed width for every step: the prompt's, then a column set per token
            length = -(-(width + steps) // STATIC_BUCKET) * STATIC_BUCKET
            static = self._static_cache(cache, n, length)
        if static is not None:
            cache = static
            full = torch.zeros((n, length), dtype=mask.dtype, device=dev)
            full[:, :width] = mask
        finished = torch.zeros(n, dtype=torch.bool, device=dev)
        if bar_steps:
            stop_vocab = torch.zeros(logits.shape[-1], dtype=torch.bool, device=dev)
            stop_vocab[self.stop_ids[self.stop_ids < logits.shape[-1]]] = True
        out_tokens = []
        for step in range(steps):
            if step < bar_steps:  # too early to stop: bar the stop tokens
                bar = (min_new > step).unsqueeze(1) & stop_vocab.unsqueeze(0)
                logits = logits.masked_fill(bar, float("-inf"))
            tok = choose_tokens(logits, do_sample, temperature, top_p, top_k, u[:, step])
            tok = torch.where(finished, torch.full_like(tok, self.pad_id), tok)
            out_tokens.append(tok)
            finished |= torch.isin(tok, self.stop_ids) | (step + 1 >= limit)
            if step + 1 == steps or bool(finished.all()):
                break
            if static is not None:
                full[:, width + step] = 1
                mask = full
            else:
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=dev)], dim=1)
            logits, cache = self._forward(tok.unsqueeze(1), mask, next_pos, cache, first=False)
            next_pos = next_pos + 1
        gen = torch.stack(out_tokens, dim=1).tolist()
        stop = set(self.stop_ids.tolist())
        results = []
        for r, row in enumerate(gen):
            row = row[: max_new[r]]
            cut = next((j for j, t in enumerate(row) if t in stop), None)
            kept = row if cut is None else row[:cut]
            results.append(
                {
                    "text": self.tok.decode(kept, skip_special_tokens=True),
                    "finish_reason": "length" if cut is None else "stop",
                    "prompt_tokens": len(ids_list[r]),
                    "new_tokens": len(kept),
                }
            )
        return results


def _plain_kv(cache) -> list[tuple] | None:
    """Per-layer (keys, values) of a DynamicCache whose layers are all plain full-attention
    layers (transformers 4.x lists or 5.x layers); None for anything else."""
    from transformers import DynamicCache

    if type(cache) is not DynamicCache:
        return None
    layers = getattr(cache, "layers", None)
    if layers is not None:
        DynamicLayer = internal("transformers.cache_utils", "DynamicLayer")
        if not layers or any(
            type(layer) is not DynamicLayer or not getattr(layer, "is_initialized", True)
            for layer in layers
        ):
            return None
        return [(layer.keys, layer.values) for layer in layers]
    keys, values = getattr(cache, "key_cache", None), getattr(cache, "value_cache", None)
    if not keys or values is None or len(keys) != len(values):
        return None
    return list(zip(keys, values))


def resolve_prefill(prefill: str) -> str:
    """``auto`` is ``per_row``: prefilling prompts one by one and stacking the caches was faster
    than one padded batch both on CPU (about 3x on the prefill) and on an H200 (1.6x end to end,
    0.37B model, ~830-token prompts, batch 32), because attention with a padding mask leaves
    the fast causal kernels. Models whose cache cannot be stacked fall back to ``batched``."""
    if prefill not in ("auto", "batched", "per_row"):
        raise ValueError(f"prefill must be auto, batched or per_row, got {prefill!r}")
    return "per_row" if prefill == "auto" else prefill


DECODES = ("auto", "dynamic", "static", "compiled")
# A static cache's length is rounded up to a multiple of this, so that batches of similar
# lengths share one compiled step (each new shape compiles again).
STATIC_BUCKET = 64
# how the decoding step is compiled under decode="compiled": CUDA graphs of fixed shapes
COMPILE_OPTIONS = {"mode": "reduce-overhead", "dynamic": False}


def resolve_decode(decode: str, cuda: bool) -> str:
    """``auto`` is ``dynamic``: the growing cache, measured on CPU and on an H200; ``static``
    gave the same tokens (tests/unit/test_generation.py) but has not been measured faster on a
    GPU yet, so it stays a choice, with ``compiled`` (``benchmarks/gpu_proof.py`` times the
    three). ``compiled`` needs CUDA: a :class:`ValueError` otherwise."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}")
    if decode == "compiled" and not cuda:
        raise ValueError(
            "decode: compiled runs the decoding steps as CUDA graphs and needs a CUDA GPU; "
            "this node has none (use dynamic or static)"
        )
    return "dynamic" if decode == "auto" else decode


def deterministic_cuda() -> None:
    """Make CUDA kernels reproducible for this process (a no-op on CPU).

    Without it, a rerun of the same batch on an H200 now and then picked other kernels and one
    sampled row in 80 flipped a near-tied token; with PyTorch's deterministic algorithms and
    cuBLAS's fixed workspace, six reruns were identical. ``CUBLAS_WORKSPACE_CONFIG`` only takes
    effect if no cuBLAS call was made before in the process; ops without a deterministic
    implementation warn instead of failing.
    """
    import torch

    if not torch.cuda.is_available():
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def device_and_dtype(precision: str = "auto"):
    """This rank's device and the dtype of ``precision`` (``auto``: bf16 on a GPU that has it
    and on a CPU with native bf16, else fp32; see :func:`esc_dist.dist.resolve_precision`)."""
    import torch

    dev = (
        torch.device("cuda", dist.cuda_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    return dev, dist.torch_dtype(precision)
