"""Trainer glue shared by SFT and DPO: where a stage's files go, sampling and logging.

``stage_paths`` (where things go), ``TrainerExtras`` (world-size-invariant length-grouped
sampling, non-pad fraction and tokens/s logging) and ``require_one_global_batch``. The rest of
the glue lives beside it, one module per job: ``arguments`` (TrainConfig → HF/TRL arguments,
DeepSpeed config, precision), ``models`` (ZeRO-3 aware model loading, export as one plain HF
directory), ``checkpoints`` (complete checkpoints only, ``resume: auto``, resume on another world
size, preemption) and ``runner`` (the one skeleton both stages run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .. import dist
from ..config import Recipe, TrainConfig
from ..errors import ConfigError, MissingInput
from ..layout import RunLayout, training_work

# ---------------------------------------------------------------------------------------------
# Paths


@dataclass(frozen=True)
class StagePaths:
    export: Path  # the final HF directory
    work: Path  # checkpoints, W&B files, token cache

    @property
    def checkpoints(self) -> Path:
        return self.work / "checkpoints"


def stage_paths(recipe: Recipe, stage: str, role: str, out: str | None = None) -> StagePaths:
    export = Path(out) if out else RunLayout.of(recipe).model(stage, role)
    return StagePaths(export=export, work=training_work(export))


def default_base_model(recipe: Recipe) -> str:
    """``model.base``: a Hub id's cached snapshot, a GGUF file's conversion
    (``RUN/models/base``); else the tiny model."""
    from ..models import hub
    from ..models.gguf import is_gguf

    base = recipe.model.base
    if hub.is_hub_id(base):
        return hub.resolve(base, recipe.model.revision)
    if is_gguf(base):
        converted = RunLayout.of(recipe).base
        if not (converted / "config.json").is_file():
            raise MissingInput(
                f"model.base is a GGUF file ({base}): convert it first with "
                "`esc-dist base-model` (the pipeline does)",
                path=converted,
            )
        return str(converted)
    return base or str(RunLayout.of(recipe).tiny)


# ---------------------------------------------------------------------------------------------
# Sampling and logging


class GlobalBatchLengthSampler:
    """Length-grouped order whose global batches do not depend on the world size.

    The dataset is shuffled (seed + epoch), cut into mega-batches of ``mega`` global batches,
    each sorted by length and cut into global batches (per-device batch × accumulation × world),
    and the global batches are shuffled. A global step therefore sees the same examples on any
    number of ranks, with little padding inside each micro-batch.
    """

    def __init__(self, lengths: list[int], global_batch: int, seed: int, mega: int = 16):
        self.lengths, self.global_batch, self.seed, self.mega = lengths, global_batch, seed, mega
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch

        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.global_batch * self.mega
        batches = []
        for i in range(0, len(order), size):
            chunk = sorted(order[i : i + size], key=lambda j: -self.lengths[j])
            batches += [
                chunk[k : k + self.global_batch] for k in range(0, len(chunk), self.global_batch)
            ]
        perm = torch.randperm(len(batches), generator=g).tolist()
        for b in perm:
            yield from batches[b]


class TrainerExtras:
    """Mixin for TRL trainers: our sampler, non-pad fraction and tokens/s in the logs."""

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        lengths = self.example_lengths(ds) if ds is not None else None
        if lengths is None:
            return super()._get_train_sampler(train_dataset)
        a = self.args
        global_batch = (
            a.per_device_train_batch_size * a.gradient_accumulation_steps * max(1, a.world_size)
        )
        return GlobalBatchLengthSampler(lengths, global_batch, a.data_seed or a.seed)

    def example_lengths(self, ds) -> list[int] | None:
        if "input_ids" not in ds.column_names or getattr(self.args, "packing", False):
            return None
        return [len(x) for x in ds["input_ids"]]

    def training_step(self, model, inputs, *args, **kwargs):
        from .packing import token_counts

        stats = getattr(self, "_esc_tokens", [0.0, 0.0, 0.0])
        for i, v in enumerate(token_counts(inputs)):
            stats[i] += v
        self._esc_tokens = stats
        return super().training_step(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """``non_pad_fraction``: of the tokens computed, those not padding; ``tokens_per_second``:
        the batch's tokens as TRL would compute them (unpadded, prompts once per sequence) per
        second, so that packed and unpacked layouts compare by it."""
        if self.model.training and "loss" in logs:
            useful, real, total = dist.all_reduce_sum(getattr(self, "_esc_tokens", [0.0, 0.0, 0.0]))
            now = time.perf_counter()
            start = getattr(self, "_esc_t0", None)
            if total > 0:
                logs["non_pad_fraction"] = real / total
            if start is not None and now > start:
                logs["tokens_per_second"] = useful / (now - start)
            self._esc_tokens, self._esc_t0 = [0.0, 0.0, 0.0], now
        super().log(logs, *args, **kwargs)


def require_one_global_batch(n: int, cfg: TrainConfig, stage: str, role: str, what: str) -> None:
    """Refuse a dataset smaller than one global batch (ZeRO-3 ranks left without data hang or
    crash), with the settings to change."""
    world, accumulate = dist.world_size(), accumulation(cfg)
    global_batch = cfg.per_device_train_batch_size * accumulate * world
    if n < global_batch:
        raise ConfigError(
            f"{stage} {role}: {n} {what}, fewer than one global batch "
            f"({cfg.per_device_train_batch_size} per device x {accumulate} "
            f"accumulation x {world} ranks = {global_batch}); lower "
            f"{stage}.per_device_train_batch_size or provide more data"
        )


def accumulation(cfg: TrainConfig) -> int:
    """Gradient accumulation steps on this world size: ``gradient_accumulation_steps``, or
    derived from ``global_batch_size`` (which must be a multiple of per device x ranks)."""
    if cfg.global_batch_size is None:
        return cfg.gradient_accumulation_steps
    per_step = cfg.per_device_train_batch_size * dist.world_size()
    if cfg.global_batch_size % per_step:
        raise ConfigError(
            f"global_batch_size {cfg.global_batch_size} is not a multiple of "
            f"{cfg.per_device_train_batch_size} per device x "
            f"{dist.world_size()} ranks: choose a per-device batch or rank count "
            "that divides it"
        )
    return cfg.global_batch_size // per_step


def global_batch(cfg: TrainConfig) -> int:
    return cfg.per_device_train_batch_size * accumulation(cfg) * dist.world_size()
