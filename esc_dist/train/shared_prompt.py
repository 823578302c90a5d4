"""Shared-prompt DPO: a pair's prompt is computed once for its chosen and its rejected reply.

TRL's DPO trainer scores ``[prompt | chosen]`` and ``[prompt | rejected]`` as two sequences, so
the prompt (the dialogue history: 90-99% of an ESConv pair's tokens, a planner pair differs in a
few) goes through the policy and the reference twice. Here each pair is one sequence
``[prompt | chosen | rejected]`` with

- a 4D attention mask: causal, no padding keys, and no rejected token sees a chosen token;
- position ids that restart after the prompt for the rejected reply (``P .. P+R-1``, as in its
  own sequence);
- the first rejected token predicted from the prompt's last state, like the first chosen one.

Every state a reply token's log-prob is read from is thus computed over exactly the keys and
positions of its unshared sequence: the log-probs are the unshared ones up to floating-point
summation order (tested: fp32 on CPU, the tiny model and SmolLM2).

The collator adds the packed batch (``shared_*`` keys) beside TRL's unshared one, whose
``input_ids`` and ``completion_mask`` TRL's loss still reads for labels and masks; the model's
forward (``heads.completion_log_probs``) runs the backbone on the packed batch only and returns
the per-token log-probs in TRL's unshared layout, so TRL's losses, metrics, precomputed and
live reference run unchanged. The LM head is applied at completion positions only.

Needs an attention backend that takes an arbitrary 4D mask: ``sdpa`` and ``eager``.
``flash_attention_2`` (variable-length kernels: block-diagonal masks only) keeps TRL's two
sequences; so do models whose logits TRL rescales (``heads._supported``).
"""

from __future__ import annotations

SHARED_KEYS = ("shared_input_ids", "shared_position_ids", "shared_segments", "shared_source")
PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, -1
MASK_BACKENDS = ("sdpa", "eager")  # attention implementations that take a 4D mask


def supports_shared_prompt(attn_implementation: str | None) -> bool:
    return attn_implementation in MASK_BACKENDS


class SharedPromptCollator:
    """TRL's preference collator plus the packed ``[prompt | chosen | rejected]`` batch.

    ``shared_source[r, t]`` is the flat index (row * S + position) of the packed state that
    predicts token ``t + 1`` of row ``r`` of TRL's batch (chosen rows, then rejected rows), -1
    where no completion token follows."""

    def __init__(self, base):
        self.base = base  # trl's DataCollatorForPreference
        self.pad_token_id = base.pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        out = self.base(examples)
        n, width = len(examples), out["input_ids"].shape[1]
        lengths = [
            (len(e["prompt_ids"]), len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples
        ]
        if any(p + max(c, r) > width for p, c, r in lengths):
            raise ValueError(
                "shared-prompt DPO needs untruncated pairs (the pairs are fitted "
                "to max_length when tokenized)"
            )
        s = max(p + c + r for p, c, r in lengths)
        ids = torch.full((n, s), self.pad_token_id, dtype=torch.long)
        pos = torch.zeros((n, s), dtype=torch.long)
        seg = torch.full((n, s), PAD, dtype=torch.long)
        source = torch.full((2 * n, width - 1), -1, dtype=torch.long)
        for i, (e, (p, c, r)) in enumerate(zip(examples, lengths)):
            ids[i, : p + c + r] = torch.tensor(
                e["prompt_ids"] + e["chosen_ids"] + e["rejected_ids"]
            )
            pos[i, : p + c] = torch.arange(p + c)
            pos[i, p + c : p + c + r] = torch.arange(p, p + r)
            seg[i, :p], seg[i, p : p + c], seg[i, p + c : p + c + r] = PROMPT, CHOSEN, REJECTED
            base = i * s
            source[i, : p + c - 1] = base + torch.arange(p + c - 1)  # chosen row: as packed
            source[n + i, :p] = base + torch.arange(p)  # rejected row: the prompt's states,
            source[n + i, p : p + r - 1] = base + p + c + torch.arange(r - 1)  # then its own
        out.update(
            shared_input_ids=ids, shared_position_ids=pos, shared_segments=seg, shared_source=source
        )
        return out


def attention_mask(segments, dtype=None):
    """The 4D mask (rows, 1, S, S) of a packed batch: causal, no padding keys, no rejected query
    on a chosen key; boolean (True: attend) when ``dtype`` is None, else additive in ``dtype``.
    A padding query attends to itself (no empty softmax row; its state is never read)."""
    import torch

    s = segments.shape[1]
    idx = torch.arange(s, device=segments.device)
    causal = idx[None, :] <= idx[:, None]  # [query, key]
    allowed = (
        causal[None]
        & (segments != PAD)[:, None, :]
        & ~((segments == REJECTED)[:, :, None] & (segments == CHOSEN)[:, None, :])
    )
    allowed |= torch.eye(s, dtype=torch.bool, device=segments.device)[None]
    if dtype is None:
        return allowed[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def packed_states(model, shared: dict):
    """The backbone's last hidden states of the packed batch, flattened to (rows * S, hidden),
    and the source index of every unshared (row, position) of TRL's batch. SDPA takes the
    boolean mask (any query dtype, autocast included); eager adds it, so it gets an additive
    mask in the weights' dtype."""
    eager = getattr(model.config, "_attn_implementation", None) == "eager"
    dtype = model.get_input_embeddings().weight.dtype if eager else None
    hidden = model.base_model(
        input_ids=shared["shared_input_ids"],
        position_ids=shared["shared_position_ids"],
        attention_mask=attention_mask(shared["shared_segments"], dtype),
        use_cache=False,
    ).last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1]), shared["shared_source"]
