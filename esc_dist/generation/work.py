"""What the engine is asked to compute: work items, engine settings and their fingerprint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from ..io import sha256_json
from .sampling import Sampling


@dataclass
class WorkItem:
    id: str
    messages: list[dict]  # the chat prompt; the generation prompt is added by the template
    sampling: Sampling
    key: str | None = None  # seed key (default: id): e.g. the turn id shared by n samples
    sample: int = 0  # sample index, mixed into the seed
    meta: dict[str, Any] = field(default_factory=dict)  # carried into the result, JSON only

    @property
    def seed_key(self) -> str:
        return self.id if self.key is None else self.key


@dataclass
class EngineConfig:
    batch_size: int | str  # rows per batch, or "auto": from free memory (.memory)
    chunk_size: int  # items per chunk file; a multiple of batch_size (auto: rounded down)
    seed: int = 0
    stream: str = ""  # mixed into the seeds, so that two phases of one job draw independently
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    prefill: str = "auto"  # auto (= per_row) | batched | per_row: see resolve_prefill
    precision: str = "auto"  # auto | bf16 | fp16 | fp32: see device_and_dtype
    decode: str = "auto"  # auto (= dynamic) | dynamic | static | compiled: see resolve_decode
    backend: str = "hf"  # hf (a model replica per rank) | vllm (.server)
    # the recipe's vllm section (url | python, args, timeouts) when backend is vllm
    server: dict | None = None

    def __post_init__(self):
        if self.batch_size == "auto":
            if self.chunk_size < 1:
                raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
            return
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.chunk_size < self.batch_size or self.chunk_size % self.batch_size:
            raise ValueError(
                f"chunk_size ({self.chunk_size}) must be a positive multiple of "
                f"batch_size ({self.batch_size})"
            )


def messages_sha(messages: Sequence[dict]) -> str:
    return sha256_json([{"role": m["role"], "content": m["content"]} for m in messages])


def items_fingerprint(items: Sequence[WorkItem]) -> str:
    return sha256_json(
        [
            [
                it.id,
                it.seed_key,
                it.sample,
                messages_sha(it.messages),
                asdict(it.sampling),
                sha256_json(it.meta),
            ]
            for it in items
        ]
    )
