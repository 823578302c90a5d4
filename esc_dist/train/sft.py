"""Full-parameter SFT of the planner, generator or vanilla model with TRL + DeepSpeed ZeRO.

Examples are tokenized here, not by TRL, so that a long dialogue is never cut through the reply:
the oldest history messages are dropped until prompt + completion fit ``max_length``. The loss is
on the completion tokens only (prompt labels are -100). Batches are length-grouped by global
batch (see ``GlobalBatchLengthSampler``); ``sft.padding_free`` puts a micro-batch in one row
without padding (TRL's on flash attention, ``packing.SftPaddingFreeCollator`` on sdpa/eager), and
``sft.packing`` (flash attention only) packs examples to ``max_length`` rows.
"""

from __future__ import annotations

import functools
import inspect

from ..config import PADDING_FREE_ATTENTION, Recipe
from ..data.tasks import load_task
from ..internals import require_method
from ..layout import RunLayout
from ..log import get_logger
from ..models.loading import attention, load_tokenizer
from .arguments import trainer_arguments
from .checkpoints import stage_callbacks
from .common import TrainerExtras, default_base_model, require_one_global_batch, stage_paths
from .models import load_policy
from .packing import SftPaddingFreeCollator, takes_mask
from .runner import run_training, stage_inputs, start_stage
from .tokens import PromptFitter, tokenized_cached

log = get_logger(__name__)

SUMMARY_KEYS = ("final_loss", "global_step", "mean_non_pad_fraction")  # W&B run summary


def sft_row(ex: dict, fit: PromptFitter) -> dict | None:
    """input_ids and labels (-100 on the prompt) of one example, or None if it cannot fit."""
    r = fit(ex["prompt"], [ex["completion"]])
    if r is None:
        return None
    p, (c,), dropped = r
    return {"id": ex["id"], "input_ids": p + c, "labels": [-100] * len(p) + c, "trimmed": dropped}


def spread(ds, n: int | None):
    """``n`` rows spread evenly over ``ds`` (all when ``n`` is None or at least its size)."""
    if n is None or n >= len(ds):
        return ds
    return ds.select([i * len(ds) // n for i in range(n)])


def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_logits_to_keep(type(base))


@functools.cache
def _forward_takes_logits_to_keep(cls) -> bool:  # once per model class, not once per step
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def completion_loss(trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
    """Summed NLL of the completion tokens over ``num_items_in_batch`` (the Trainer's
    normalisation), computing logits only at the positions where some row has a label."""
    import torch
    import torch.nn.functional as F

    target = inputs["labels"][:, 1:]  # logits at position t predict the token at t + 1
    keep = (target != -100).any(dim=0).nonzero().flatten()
    outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep)
    logits = outputs.logits.float()
    target = target[:, keep].to(logits.device)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    if num_items_in_batch is None:
        loss = loss / (target != -100).sum().clamp(min=1)
    else:
        loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
        if trainer.args.average_tokens_across_devices:
            loss = loss * trainer.accelerator.num_processes
    return (loss, outputs) if return_outputs else loss


def _sft_trainer_class():
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    require_method(SFTTrainer, "_get_train_sampler")  # overridden by TrainerExtras

    class EscSFTTrainer(TrainerExtras, SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """On CPU, the causal-LM loss with the LM head applied to completion positions only.

            TRL's fused LM-head kernel saves GPU memory by never materialising the logits; on CPU
            it only costs time (2-3x per step for the tiny model). Here the model is asked for
            the logits of the positions that predict a completion token in some row of the batch
            (``logits_to_keep``), which skips most of the head and of the softmax for a planner
            (its completion is a strategy name): 1.6x faster per step of the tiny planner in one
            process, 1.15x under ZeRO on 2 ranks, where communication takes its share. Both
            give the NLL of the completion tokens averaged over the global batch (tested equal);
            TRL's entropy and token accuracy are then not logged.
            """
            mask = inputs.get("attention_mask")
            one_row = mask is not None and mask.dim() == 4  # our padding-free batch
            if torch.cuda.is_available() and not one_row:  # TRL's metrics read a 2D mask
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if not _accepts_logits_to_keep(self.accelerator.unwrap_model(model)):
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            return completion_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return EscSFTTrainer


def build_sft_trainer(
    recipe: Recipe,
    role: str,
    data_dir: str,
    model_dir: str,
    paths,
    ds_cfg: dict | None,
    report_wandb: bool,
    key: str = "",
):
    """The configured trainer for one role, and the tokenization stats of its data."""
    from trl import SFTConfig

    recipe = recipe.for_role(role)
    cfg = recipe.sft
    attn = attention(recipe.model.attn_implementation)
    flash = attn in PADDING_FREE_ATTENTION
    packing = cfg.packing and flash
    if cfg.packing and not packing:  # auto resolved to sdpa: packed examples would mix
        log.info(
            "sft %s: sft.packing off: attention is not flash attention here, "
            "length-grouped padded batches instead",
            role,
        )
    padding_free = packing or (flash if cfg.padding_free is None else cfg.padding_free)
    if padding_free and not (flash or takes_mask(attn)):
        log.info("sft %s: batches padded: attention %s cannot keep examples apart", role, attn)
        padding_free = False
    evaluate = (
        {
            "eval_strategy": "steps",
            "eval_steps": cfg.eval_steps,
            "per_device_eval_batch_size": cfg.per_device_train_batch_size,
        }
        if cfg.eval_steps
        else {}
    )
    args = SFTConfig(
        **trainer_arguments(cfg, recipe, paths, f"sft-{role}", report_wandb, ds_cfg),
        packing=packing,
        padding_free=padding_free and flash,
        **evaluate,
    )
    tokenizer = load_tokenizer(model_dir, recipe.model.trust_remote_code)
    data = load_task(data_dir, role)
    train, stats = tokenized_cached(
        data["train"],
        tokenizer,
        cfg.max_length,
        paths.work / "tokenized",
        f"{role}-train",
        sft_row,
        ("id", "input_ids", "labels"),
    )
    log.info(
        "sft %s: %d training examples (%d with history trimmed, %d too long dropped)",
        role,
        stats["examples"],
        stats["history_trimmed"],
        stats["dropped_too_long"],
    )
    require_one_global_batch(len(train), cfg, "sft", role, "training examples")
    validation = None
    if cfg.eval_steps:
        rows = spread(data["validation"], cfg.eval_examples)
        validation, vstats = tokenized_cached(
            rows,
            tokenizer,
            cfg.max_length,
            paths.work / "tokenized",
            f"{role}-validation",
            sft_row,
            ("id", "input_ids", "labels"),
        )
        log.info(
            "sft %s: validation loss every %d steps on %d validation examples",
            role,
            cfg.eval_steps,
            vstats["examples"],
        )
    model = load_policy(model_dir, recipe, cfg)  # after args: ZeRO-3 partitions while loading
    callbacks = stage_callbacks(key, cfg, model_dir, paths.checkpoints)
    collator = None
    if padding_free and not flash:  # ours: one row and a 4D mask (additive for eager)
        weights = model.get_input_embeddings().weight.dtype
        collator = SftPaddingFreeCollator(
            tokenizer.pad_token_id, weights if attn == "eager" else None
        )
    trainer = _sft_trainer_class()(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return trainer, tokenizer, stats


def train_sft(
    recipe: Recipe,
    role: str,
    data_dir: str | None = None,
    model_dir: str | None = None,
    out: str | None = None,
) -> dict | None:
    """Train one role and export it; returns the export manifest (None if preempted)."""
    recipe = recipe.for_role(role)  # sft.roles: this role's own settings
    cfg = recipe.sft
    start_stage(recipe, cfg, role)
    data_dir = data_dir or str(RunLayout.of(recipe).data)
    model_dir = model_dir or default_base_model(recipe)
    paths = stage_paths(recipe, "sft", role, out)

    build = functools.partial(build_sft_trainer, recipe, role, data_dir, model_dir, paths)
    return run_training(
        "sft",
        role,
        recipe,
        cfg,
        stage_inputs("data", data_dir, model_dir),
        model_dir,
        paths,
        build,
        SUMMARY_KEYS,
    )
