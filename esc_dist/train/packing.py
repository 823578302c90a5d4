"""Packed batches: shared-prompt DPO and padding-free DPO and SFT.

TRL's DPO trainer scores ``[prompt | chosen]`` and ``[prompt | rejected]`` as two sequences,
padded to the longest in the batch. Two things are wasted: the prompt (the dialogue history:
90-99% of an ESConv pair's tokens; a planner pair differs in a few) goes through the policy and
the reference twice, and the padding is computed too. Here a batch is laid out again:

- **shared prompt**: each pair is one sequence ``[prompt | chosen | rejected]`` whose position
  ids restart after the prompt for the rejected reply (``P .. P+R-1``, as in its own sequence)
  and in which no rejected token sees a chosen token; the first rejected token is predicted
  from the prompt's last state, like the first chosen one;
- **padding-free** (``one_row``): every sequence of the batch (pairs shared or not) follows the
  one before it in a single row, with no pad token at all; position ids restart at each
  sequence and attention stays inside it.

Every state a completion token's log-prob is read from is thus computed over exactly the keys
and positions of its unshared, padded sequence: the log-probs are TRL's up to floating-point
summation order (tested: fp32 on CPU, the tiny model and SmolLM2).

Attention: ``sdpa`` and ``eager`` get a 4D mask built from ``packed_sequences`` (causal, same
sequence, no padding key, no rejected query on a chosen key); FlashAttention's variable-length
kernels take the sequences from the position ids' restarts, which can express padding-free two
sequences but not a shared prompt (a block-diagonal mask only). The mask of a padding-free row
is (tokens x tokens): SDPA computes attention over the whole row, so on sdpa/eager padding-free
trades pad tokens in the MLPs for masked-out pairs in attention (measured in
``benchmarks/dpo_shared_prompt.py``).

The DPO collator adds the packed batch (``packed_*`` keys) beside TRL's unshared one, whose
``input_ids`` and ``completion_mask`` TRL's loss still reads for labels and masks; the model's
forward (``heads.completion_log_probs``) runs the backbone on the packed batch only and returns
the per-token log-probs in TRL's unshared layout (``packed_source``), so TRL's losses, metrics,
precomputed and live reference run unchanged.
"""

from __future__ import annotations

from ..config import MASK_ATTENTION

PACKED_KEYS = ("packed_input_ids", "packed_position_ids", "packed_sequences", "packed_source")
PROMPT, CHOSEN, REJECTED = 0, 1, 2  # the part of a sequence a token belongs to
PAD = -1


def takes_mask(attn_implementation: str | None) -> bool:
    """Whether the attention implementation takes a 4D mask (config.MASK_ATTENTION)."""
    return attn_implementation in MASK_ATTENTION


def _tag(sequence: int, part: int) -> int:
    """A token's ``packed_sequences`` value: its sequence and its part of it."""
    return 4 * sequence + part


class PairCollator:
    """TRL's preference collator plus the packed batch of the same pairs.

    ``shared``: a pair is one ``[prompt | chosen | rejected]`` sequence, else two sequences
    ``[prompt | chosen]``, ``[prompt | rejected]``. ``one_row``: all sequences in one row
    (padding-free), else one row per pair (``shared`` only: two unshared sequences per row are
    TRL's own batch). ``packed_source[r, t]`` is the flat index (row * S + position) of the
    packed state that predicts token ``t + 1`` of row ``r`` of TRL's batch (chosen rows, then
    rejected rows), -1 where no completion token follows."""

    def __init__(self, base, shared: bool = True, one_row: bool = False):
        if not (shared or one_row):
            raise ValueError("unshared pairs one per row are TRL's own batch: nothing to pack")
        self.base = base  # trl's DataCollatorForPreference
        self.pad_token_id = base.pad_token_id
        self.shared, self.one_row = shared, one_row

    def _sequences(self, i: int, e: dict, n: int):
        """The packed sequences of pair ``i``: (token ids, positions, tags, [(TRL row, first
        TRL position, packed offset of that position, count)])."""
        p, c, r = len(e["prompt_ids"]), len(e["chosen_ids"]), len(e["rejected_ids"])
        if self.shared:
            ids = e["prompt_ids"] + e["chosen_ids"] + e["rejected_ids"]
            pos = [*range(p + c), *range(p, p + r)]
            tags = [_tag(i, PROMPT)] * p + [_tag(i, CHOSEN)] * c + [_tag(i, REJECTED)] * r
            # chosen row: as packed; rejected row: the prompt's states, then its own
            reads = [(i, 0, 0, p + c - 1), (n + i, 0, 0, p), (n + i, p, p + c, r - 1)]
            return [(ids, pos, tags, reads)]
        out = []
        for k, (row, completion) in enumerate(((i, e["chosen_ids"]), (n + i, e["rejected_ids"]))):
            m = len(completion)
            part = CHOSEN if k == 0 else REJECTED
            tags = [_tag(2 * i + k, PROMPT)] * p + [_tag(2 * i + k, part)] * m
            out.append(
                (e["prompt_ids"] + completion, [*range(p + m)], tags, [(row, 0, 0, p + m - 1)])
            )
        return out

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        out = self.base(examples)
        n, width = len(examples), out["input_ids"].shape[1]
        lengths = [
            (len(e["prompt_ids"]), len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples
        ]
        if any(p + max(c, r) > width for p, c, r in lengths):
            raise ValueError(
                "packed DPO batches need untruncated pairs (the pairs are fitted "
                "to max_length when tokenized)"
            )
        rows = [[]]
        for i, e in enumerate(examples):
            for seq in self._sequences(i, e, n):
                if not self.one_row and rows[-1]:
                    rows.append([])
                rows[-1].append(seq)
        s = max(sum(len(seq[0]) for seq in row) for row in rows)
        ids = torch.full((len(rows), s), self.pad_token_id, dtype=torch.long)
        pos = torch.zeros((len(rows), s), dtype=torch.long)
        tags = torch.full((len(rows), s), PAD, dtype=torch.long)
        source = torch.full((2 * n, width - 1), -1, dtype=torch.long)
        for j, row in enumerate(rows):
            at = 0
            for seq_ids, seq_pos, seq_tags, reads in row:
                m = len(seq_ids)
                ids[j, at : at + m] = torch.tensor(seq_ids)
                pos[j, at : at + m] = torch.tensor(seq_pos)
                tags[j, at : at + m] = torch.tensor(seq_tags)
                for trl_row, first, offset, count in reads:
                    start = j * s + at + offset
                    source[trl_row, first : first + count] = start + torch.arange(count)
                at += m
        out.update(
            packed_input_ids=ids,
            packed_position_ids=pos,
            packed_sequences=tags,
            packed_source=source,
        )
        return out


def attention_mask(sequences, dtype=None):
    """The 4D mask (rows, 1, S, S) of a packed batch: causal, inside one sequence, no padding
    keys, no rejected query on a chosen key; boolean (True: attend) when ``dtype`` is None, else
    additive in ``dtype``. A padding query attends to itself (no empty softmax row; its state
    is never read)."""
    import torch

    s = sequences.shape[1]
    idx = torch.arange(s, device=sequences.device)
    causal = idx[None, :] <= idx[:, None]  # [query, key]
    seq, part = sequences.div(4, rounding_mode="floor"), sequences.remainder(4)
    allowed = (
        causal[None]
        & (sequences != PAD)[:, None, :]
        & (seq[:, :, None] == seq[:, None, :])
        & ~((part == REJECTED)[:, :, None] & (part == CHOSEN)[:, None, :])
    )
    allowed |= torch.eye(s, dtype=torch.bool, device=sequences.device)[None]
    if dtype is None:
        return allowed[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=sequences.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def packed_mask(model, sequences):
    """What the model's attention takes for a packed batch: the boolean 4D mask for SDPA (any
    query dtype, autocast included), an additive one in the weights' dtype for eager, None for
    FlashAttention (its variable-length kernels read the sequences from the position ids)."""
    from ..internals import attention_of

    attn = attention_of(model)
    if not takes_mask(attn):
        return None
    dtype = model.get_input_embeddings().weight.dtype if attn == "eager" else None
    return attention_mask(sequences, dtype)


def packed_states(model, packed: dict):
    """The backbone's last hidden states of the packed batch, flattened to (rows * S, hidden),
    and the source index of every unshared (row, position) of TRL's batch."""
    hidden = model.base_model(
        input_ids=packed["packed_input_ids"],
        position_ids=packed["packed_position_ids"],
        attention_mask=packed_mask(model, packed["packed_sequences"]),
        use_cache=False,
    ).last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1]), packed["packed_source"]


class SftPaddingFreeCollator:
    """Padding-free SFT batches on sdpa/eager: the examples one after another in a single row,
    position ids restarting at each, the first token of each labelled -100 (nothing before it
    in its own sequence predicts it) and a 4D mask that keeps each example to itself. (On
    FlashAttention TRL's own ``padding_free`` does this with position ids alone.)"""

    def __init__(self, pad_token_id: int, eager_dtype=None):
        self.pad_token_id = pad_token_id
        self.eager_dtype = eager_dtype  # additive mask in this dtype (eager), else boolean

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        ids, pos, labels, tags = [], [], [], []
        for k, e in enumerate(examples):
            m = len(e["input_ids"])
            ids += e["input_ids"]
            pos += range(m)
            labels += [-100] + list(e["labels"][1:])
            tags += [_tag(k, PROMPT)] * m
        tags = torch.tensor([tags])
        return {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([pos]),
            "labels": torch.tensor([labels]),
            "attention_mask": attention_mask(tags, self.eager_dtype),
        }


def token_counts(inputs: dict) -> tuple[float, float, float]:
    """(tokens of the batch as TRL would compute it, unpadded; real tokens computed; tokens
    computed, padding included) of a training batch: the first over time is the throughput
    any layout can be compared by, the second over the third the non-pad fraction."""
    masks = [
        v
        for k, v in inputs.items()
        if k.endswith("attention_mask") and v is not None and v.dim() == 2
    ]
    useful = float(sum(float(m.sum()) for m in masks))
    if "packed_sequences" in inputs:  # packed DPO: TRL's batch rides along, unused
        tags = inputs["packed_sequences"]
        return useful, float((tags != PAD).sum()), float(tags.numel())
    if not masks:  # padding-free SFT (a 4D mask, or FlashAttention's position ids): no pad
        n = float(inputs["input_ids"].numel())
        return n, n, n
    return useful, useful, float(sum(m.numel() for m in masks))
