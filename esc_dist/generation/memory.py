"""``batch_size: auto`` (mine, infer): the rows of a batch sized from the GPU's free memory.

A row's sample depends only on its own logits and seed (:mod:`esc_dist.generation`), so the
batch size changes how fast a stage runs, not what it writes. On a GPU, before the replica
loads, every rank measures its free memory and works out how many rows fit
(:func:`rows_that_fit`); the smallest over the ranks is the batch size, recorded in the plan, so
a resumed run keeps it whatever the GPU has free then. On a CPU, ``auto`` is
:data:`AUTO_CPU_ROWS` (larger batches did not decode faster on 2 cores), and with a vLLM
server :data:`AUTO_SERVER_ROWS` requests in flight.
"""

from __future__ import annotations

from ..models.shape import kv_bytes_per_token, parameters_of_shape

AUTO_CPU_ROWS = 16
AUTO_SERVER_ROWS = 64  # requests in flight per rank: a vLLM server schedules its own memory
AUTO_MAX_ROWS = 512  # past this a batch's rows wait on its longest one more than they gain
HEADROOM = 0.85  # the share of the free memory a batch may take (allocator, kernel workspaces)
LOGITS_COPIES = 4  # a row's last-position logits in fp32: logits, sorted, softmax, cumsum


def rows_that_fit(
    shape: dict, dtype_bytes: int, free_bytes: int, prompt_tokens: int, new_tokens: int
) -> int:
    """How many rows of ``prompt_tokens`` + ``new_tokens`` decode within ``free_bytes`` (the
    free memory before the model loads), between 1 and :data:`AUTO_MAX_ROWS`.

    Taken from the free memory: the weights; one prompt's prefill at a time (prompts are
    prefilled one by one: its hidden states and MLP activations); and per row, its keys and
    values twice (the per-row caches and the stacked batch cache exist together once) and its
    logits over the vocabulary in fp32, :data:`LOGITS_COPIES` times.
    """
    weights = parameters_of_shape(shape) * dtype_bytes
    prefill = prompt_tokens * (4 * shape["hidden_size"] + 3 * shape["intermediate_size"])
    per_row = (
        2 * kv_bytes_per_token(shape, dtype_bytes) * (prompt_tokens + new_tokens)
        + LOGITS_COPIES * 4 * shape["vocab_size"]
    )
    usable = free_bytes * HEADROOM - weights - prefill * dtype_bytes
    return max(1, min(AUTO_MAX_ROWS, int(usable // per_row)))


def free_bytes(device) -> int | None:
    """The free memory of ``device`` now; None on a CPU (``auto`` is then a fixed size)."""
    import torch

    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()  # blocks cached by an earlier phase's replica are free
    return torch.cuda.mem_get_info(device)[0]
