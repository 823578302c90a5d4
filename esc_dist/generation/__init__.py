"""Sharded, resumable, batched generation with a plain model replica per rank.

Mining and inference both hand this module a list of :class:`WorkItem` (an id, a chat prompt,
per-item sampling settings, a sample index and JSON ``meta`` to carry through) and a model
directory. :func:`generate` computes every item exactly once over all ranks, writing results as
atomic chunk files; :func:`merge` reads them back, verified, in id order.

**Same result whatever the world size, and after any restart.** The whole item list is put in
one global order (prompt token length, longest first so that a too-large batch fails at once,
ties by id) and cut into fixed batches of ``batch_size``; consecutive batches form chunks of
``chunk_size`` items. Ranks get whole chunks (balanced by padded token cost with
:func:`esc_dist.dist.shard_balanced`), so each batch -- its rows, their order and padding -- is
the same on 1 rank, on 8 ranks, and after a restart. Sampling draws no random numbers from a
shared stream: each row has its own ``torch.Generator`` seeded from (run seed, stream, item key,
sample index), which yields one uniform number per generated token, and the token is picked by
inverse-CDF sampling over the temperature / top-k / top-p filtered distribution of that row.
A row's sample therefore depends only on its own logits and seed, never on its batch partners'
random draws or on the order in which chunks run. Greedy decoding uses no randomness. The
guarantee is bit-for-bit on the same hardware and software stack, as long as the same batch gives
the same logits: on CPU it does (tested: 2 ranks == 1 rank, byte for byte); on CUDA the engine
turns on PyTorch's deterministic algorithms (:func:`deterministic_cuda`), without which an H200
now and then flipped a near-tied sampled token between reruns. A GPU bf16 run and a CPU fp32 run
of the same items give different texts, which is why the device type and dtype are part of the
fingerprint that guards a resume.

**Nothing lost, nothing twice.** Each finished chunk is written to ``chunks/chunk-NNNNNN.jsonl``
through a temporary file and ``os.replace``; a (re)started rank skips chunks whose file exists.
``plan.json`` (written before any chunk) records the fingerprint of the inputs (items, model
files, batch and chunk sizes, seed, device type, dtype) and the ids each chunk must hold: a run
over a directory planned for other inputs is refused, and :func:`merge` checks that every
planned chunk exists and that every input id appears exactly once and no other id appears,
naming the chunk or id at fault.

**Prompts fit the model.** Each prompt whose tokens and ``max_new_tokens`` exceed the model's
context (its config's positions, or the tokenizer's ``model_max_length`` when lower and sane)
loses its oldest history messages, the way training fits prompts (never the system message,
never the last seeker message); a prompt that cannot fit even so is refused, naming its turn,
before anything is generated. The run's statistics count the prompts shortened; a prompt that
fits is tokenized as it is, so its result does not change.

**Decoding.** Each prompt of a batch is prefilled on its own (the fast causal attention path)
and the caches are stacked, left-padded, for the batched decoding steps with a KV cache
(``prefill="batched"`` prefills the padded batch in one call instead; see
:func:`resolve_prefill`). Decoding stops at the tokenizer's eos, the pad token and any eos id of
the model's generation config, or after the item's ``max_new_tokens``; the text is decoded
without special tokens.

**Where things are.** :mod:`.sampling` (per-item settings, row seeds, token choice),
:mod:`.work` (work items, engine settings, their fingerprint), :mod:`.replica` (the model replica
of one rank), :mod:`.shards` (layout, chunk files, :func:`generate`, :func:`merge`),
:mod:`.output` (claiming a stage's output directory, finishing it on rank 0) and :mod:`.stage`
(the one runner of the generation stages, mining and inference). Re-merging a stage's output
from its ``job.json`` (``esc-dist merge``) is the command layer's: it picks the stage's own
``finalize`` (:func:`esc_dist.cli.generate.merge_output`).
"""

from __future__ import annotations

from ..errors import MergeError, PlanMismatch
from ..io import model_fingerprint
from .output import claim_output, finalize_on_main
from .replica import (
    Replica,
    deterministic_cuda,
    device_and_dtype,
    fit_prompts,
    load_tokenizer,
    prompt_ids,
    resolve_prefill,
)
from .sampling import Sampling, choose_tokens, row_seed
from .shards import (
    CHUNK_PREFIX,
    ENGINE_VERSION,
    PLAN,
    Chunk,
    chunk_name,
    chunk_path,
    existing_chunks,
    generate,
    merge,
    plan_layout,
    throughput_summary,
)
from .work import EngineConfig, WorkItem, items_fingerprint, messages_sha

__all__ = [
    "Sampling",
    "WorkItem",
    "EngineConfig",
    "MergeError",
    "PlanMismatch",
    "generate",
    "merge",
    "choose_tokens",
    "row_seed",
    "model_fingerprint",
    "items_fingerprint",
    "plan_layout",
    "Replica",
    "load_tokenizer",
    "prompt_ids",
    "fit_prompts",
    "throughput_summary",
    "resolve_prefill",
    "deterministic_cuda",
    "claim_output",
    "finalize_on_main",
    "messages_sha",
    "device_and_dtype",
    "existing_chunks",
    "chunk_path",
    "chunk_name",
    "Chunk",
    "ENGINE_VERSION",
    "PLAN",
    "CHUNK_PREFIX",
]
