"""Full-parameter DPO of the planner, generator or vanilla model on IPM-PrefDial pairs.

Shares SFT's glue (arguments, DeepSpeed, checkpoints and ``resume: auto``, preemption, export,
W&B). The pairs are tokenized here with the same prompt fitting as SFT (oldest history dropped
until the prompt and the longer of chosen/rejected fit ``max_length``).

Reference model:
- ``precomputed`` (default): reference log-probs of every pair in one pass before training,
  sharded over the ranks, cached beside the tokenized pairs and keyed by the data fingerprint and
  a hash of the reference weights (a resumed or repeated run reads them back);
- ``live``: a second model scored every step — partitioned under ZeRO-3, a replica under ZeRO-2,
  its parameters optionally offloaded to CPU (``dpo.reference_offload``, ZeRO-3).

On CPU, the policy and the reference apply the LM head at completion positions only (see
``heads.py``); on GPU, TRL's fused LM head.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path

from .. import dist
from ..config import Recipe
from ..errors import DataError, MissingInput
from ..internals import internal, patched, require_method
from ..io import COMPLETED, require_verified
from ..layout import RunLayout
from ..log import get_logger
from ..models.loading import attention, load_tokenizer
from .arguments import trainer_arguments, zero_stage
from .checkpoints import stage_callbacks
from .common import TrainerExtras, require_one_global_batch, stage_paths
from .heads import completion_lm_head, packs_prompts
from .models import load_policy
from .runner import data_input, run_training, stage_inputs, start_stage
from .tokens import PromptFitter, tokenized_cached

log = get_logger(__name__)

SUMMARY_KEYS = (
    "final_loss",
    "global_step",
    "final_reward_accuracy",
    "final_reward_margin",
)  # W&B run summary


def dpo_row(ex: dict, fit: PromptFitter) -> dict | None:
    r = fit(ex["prompt"], [ex["chosen"], ex["rejected"]])
    if r is None:
        return None
    p, (chosen, rejected), dropped = r
    return {
        "id": ex["id"],
        "prompt_ids": p,
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "trimmed": dropped,
    }


def load_pairs(pairs_dir: str | Path):
    from datasets import load_from_disk

    pairs_dir = Path(pairs_dir)
    if not (pairs_dir / COMPLETED).is_file():
        raise MissingInput(
            f"not a completed `esc-dist judge` output (no {COMPLETED} marker)", path=pairs_dir
        )
    require_verified(pairs_dir)
    ds = load_from_disk(str(pairs_dir / "dataset"))
    if len(ds) == 0:
        raise DataError(pairs_dir, "the preference dataset is empty (the judge kept no pair)")
    return ds


def _dpo_trainer_class():
    from trl import DPOTrainer

    for private in ("_prepare_dataset", "_get_train_sampler"):  # overridden below
        require_method(DPOTrainer, private)

    class EscDPOTrainer(TrainerExtras, DPOTrainer):
        def __init__(self, *args, packed: bool = False, **kwargs):
            # see heads.py: the LM head at completions only (always for packed batches)
            with completion_lm_head(everywhere=packed):
                super().__init__(*args, **kwargs)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:
                return dataset  # tokenized and fitted by us
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def example_lengths(self, ds):
            cols = ds.column_names
            if not {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(cols):
                return None
            return [
                len(p) + max(len(c), len(r))
                for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])
            ]

    return EscDPOTrainer


@contextmanager
def _offloaded_reference(enabled: bool):
    """While the DPO trainer builds its live reference engine, add CPU parameter offload to the
    DeepSpeed config that TRL copies for it; the policy's engine, built later, is unaffected."""
    if not enabled:
        yield
        return

    def offloaded(original):
        def prepare_offloaded(model, accelerator):
            zero = accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
            zero["offload_param"] = {"device": "cpu", "pin_memory": dist.has_cuda()}
            try:
                return original(model, accelerator)
            finally:
                zero.pop("offload_param", None)

        return prepare_offloaded

    with patched("trl.trainer.dpo_trainer", "prepare_deepspeed", offloaded):
        yield


def pair_collator(tokenizer, model, args, shared: bool, padding_free: bool):
    """TRL's preference collator, with its pad token chosen as TRL chooses it, wrapped to add
    the packed batch (packing.py): pairs as ``[prompt | chosen | rejected]`` when ``shared``,
    all in one row when ``padding_free``."""
    from .packing import PairCollator

    DataCollatorForPreference = internal("trl.trainer.dpo_trainer", "DataCollatorForPreference")

    tokenizer.pad_token = args.pad_token or tokenizer.pad_token or tokenizer.eos_token
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return PairCollator(
        DataCollatorForPreference(
            pad_token_id=tokenizer.pad_token_id,
            max_length=args.max_length,
            truncation_mode=args.truncation_mode,
            pad_to_multiple_of=args.pad_to_multiple_of,
        ),
        shared=shared,
        one_row=padding_free,
    )


def packing(recipe: Recipe, model) -> tuple[bool, bool]:
    """(shared prompt, padding-free) of this run's DPO batches: ``dpo.shared_prompt`` and
    ``dpo.padding_free`` (null: on with flash attention) where the attention backend and the
    model allow them; what is left off is logged once."""
    from ..config import PADDING_FREE_ATTENTION
    from .packing import takes_mask

    cfg, attn = recipe.dpo, attention(recipe.model.attn_implementation)
    plain = packs_prompts(model)
    why_not = None if plain else "the model's logits are rescaled or routed"
    shared = cfg.shared_prompt and plain and takes_mask(attn)
    if cfg.shared_prompt and not shared:
        log.info(
            "dpo: prompts not shared (%s): chosen and rejected scored as two sequences",
            why_not or f"attention {attn} takes no 4D mask",
        )
    flash = attn in PADDING_FREE_ATTENTION
    padding_free = flash if cfg.padding_free is None else cfg.padding_free
    if padding_free and not (plain and (flash or takes_mask(attn))):
        log.info("dpo: batches padded (%s)", why_not or f"attention {attn} cannot keep rows apart")
        padding_free = False
    return shared, padding_free


def planner_guard(recipe: Recipe, role: str, data_dir: str | None, score, model_dir: str, paths):
    """The validation guard of a planner DPO run (None when ``dpo.validation_every`` is 0 or the
    role is not the planner)."""
    cfg = recipe.dpo
    if role != "planner" or cfg.validation_every == 0:
        return None
    if score is None:
        raise ValueError(
            "dpo.validation_every needs a score function (the command layer "
            "passes esc_dist.eval.strategy.strategy_metrics)"
        )
    from ..models.loading import model_context
    from .guard import GUARD_NEW_TOKENS, PlannerGuard, validation_prompts

    data_dir = Path(data_dir or RunLayout.of(recipe).data)
    prompts, gold = validation_prompts(data_dir, cfg.validation_turns)
    tokenizer = load_tokenizer(model_dir, recipe.model.trust_remote_code)
    return PlannerGuard(
        prompts,
        gold,
        tokenizer,
        score,
        paths.work,
        cfg.validation_every,
        cfg.export_best,
        cfg.best_q_tolerance,
        GUARD_NEW_TOKENS,
        cfg.per_device_train_batch_size * 2,
        model_context(model_dir, tokenizer),
    )


def build_dpo_trainer(
    recipe: Recipe,
    role: str,
    pairs_dir: str,
    model_dir: str,
    paths,
    ds_cfg: dict | None,
    report_wandb: bool,
    key: str = "",
    guard=None,
):
    """The configured DPO trainer for one role, and the tokenization stats of its pairs."""
    from trl import DPOConfig

    recipe = recipe.for_role(role)
    cfg = recipe.dpo
    losses, weights = [cfg.loss_type], [1.0]
    if cfg.sft_weight > 0:
        losses.append("sft")
        weights.append(cfg.sft_weight)
    args = DPOConfig(
        **trainer_arguments(cfg, recipe, paths, f"dpo-{role}", report_wandb, ds_cfg),
        beta=cfg.beta,
        loss_type=losses,
        loss_weights=weights,
        precompute_ref_log_probs=cfg.reference == "precomputed",
        precompute_ref_batch_size=cfg.per_device_train_batch_size,
    )
    tokenizer = load_tokenizer(model_dir, recipe.model.trust_remote_code)
    pairs = load_pairs(pairs_dir)
    train, stats = tokenized_cached(
        pairs,
        tokenizer,
        cfg.max_length,
        paths.work / "tokenized",
        f"{role}-pairs",
        dpo_row,
        ("id", "prompt_ids", "chosen_ids", "rejected_ids"),
    )
    log.info(
        "dpo %s: %d pairs (%d with history trimmed, %d too long dropped)",
        role,
        stats["examples"],
        stats["history_trimmed"],
        stats["dropped_too_long"],
    )
    require_one_global_batch(len(train), cfg, "dpo", role, "preference pairs")
    model = load_policy(model_dir, recipe, cfg)
    shared, padding_free = packing(recipe, model)
    offload = cfg.reference == "live" and cfg.reference_offload and zero_stage(ds_cfg) == 3
    callbacks = stage_callbacks(key, cfg, model_dir, paths.checkpoints)
    if guard is not None:  # before the checkpoint marker: a step's guard state is saved first
        callbacks.insert(0, guard.callback())
    with _offloaded_reference(offload):
        trainer = _dpo_trainer_class()(
            model=model,
            args=args,
            train_dataset=train,
            processing_class=tokenizer,
            callbacks=callbacks,
            packed=shared or padding_free,
            data_collator=pair_collator(tokenizer, model, args, shared, padding_free)
            if shared or padding_free
            else None,
        )
    if guard is not None:
        guard.trainer, guard.key = trainer, key
    return trainer, tokenizer, stats


def reward_summary(trainer) -> dict:
    """The last logged reward accuracy and margin (DPO's extra manifest fields)."""
    hist = trainer.state.log_history
    return {
        "final_reward_accuracy": next(
            (h["rewards/accuracies"] for h in reversed(hist) if "rewards/accuracies" in h), None
        ),
        "final_reward_margin": next(
            (h["rewards/margins"] for h in reversed(hist) if "rewards/margins" in h), None
        ),
    }


def train_dpo(
    recipe: Recipe,
    role: str,
    pairs_dir: str | None = None,
    model_dir: str | None = None,
    out: str | None = None,
    *,
    data_dir: str | None = None,
    score=None,
) -> dict | None:
    """DPO of one role from its SFT export; returns the export manifest (None if preempted).

    ``data_dir`` (default: the run's ``data``) and ``score`` (strategy metrics of gold and
    predicted labels) serve the planner's validation guard (``dpo.validation_every``)."""
    recipe = recipe.for_role(role)  # dpo.roles: this role's own settings
    cfg = recipe.dpo
    start_stage(recipe, cfg, role)
    run = RunLayout.of(recipe)
    pairs_dir = pairs_dir or str(run.pairs(role))
    model_dir = model_dir or str(run.model("sft", role))
    paths = stage_paths(recipe, "dpo", role, out)
    guard = planner_guard(recipe, role, data_dir, score, model_dir, paths)
    inputs = stage_inputs("pairs", pairs_dir, model_dir)
    if guard is not None:
        inputs["validation"] = data_input(str(data_dir or run.data))

    def extra(trainer) -> dict:
        return {
            **reward_summary(trainer),
            **({"guard": guard.outcome()} if guard is not None else {}),
        }

    build = functools.partial(
        build_dpo_trainer, recipe, role, pairs_dir, model_dir, paths, guard=guard
    )
    best = (lambda: guard.best_dir) if guard is not None and cfg.export_best else None
    return run_training(
        "dpo",
        role,
        recipe,
        cfg,
        inputs,
        model_dir,
        paths,
        build,
        SUMMARY_KEYS,
        extra_manifest=extra,
        exported_weights=best,
    )
