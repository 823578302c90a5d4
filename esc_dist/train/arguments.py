"""Trainer arguments: TrainConfig → the keyword arguments shared by TRL's ``SFTConfig`` and
``DPOConfig``, the DeepSpeed config (universal loading on resume) and the training precision."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import dist
from ..config import Recipe, TrainConfig
from ..errors import DataError, MissingInput
from ..io import parse_json, read_text
from ..log import get_logger
from .common import StagePaths, accumulation, global_batch

log = get_logger(__name__)


PACKAGE_DIR = Path(__file__).resolve().parents[1]


def resolve_deepspeed(name: str) -> Path:
    """The DeepSpeed config a recipe names: a path as given (relative to the working directory),
    else one of the configs shipped in the package (``ds_configs/zero2.json``, ``zero3.json``,
    ``zero3_offload.json``), so the defaults work from any directory."""
    path = Path(name)
    if path.is_file() or path.is_absolute():
        return path
    shipped = PACKAGE_DIR / path
    if shipped.is_file():
        return shipped
    raise MissingInput(
        f"DeepSpeed config not found (neither in {Path.cwd()} nor among the "
        f"configs shipped in {PACKAGE_DIR / 'ds_configs'})",
        path=path,
    )


def deepspeed_config(cfg: TrainConfig, universal: bool = False) -> dict | None:
    if not cfg.deepspeed:
        return None
    path = resolve_deepspeed(cfg.deepspeed)
    ds = parse_json(read_text(path, "DeepSpeed config"), path)
    if not isinstance(ds, dict):
        raise DataError(path, "a DeepSpeed config must be a JSON object")
    if universal:
        ds.setdefault("checkpoint", {})["load_universal"] = True
    return ds


def zero_stage(ds: dict | None) -> int:
    return int((ds or {}).get("zero_optimization", {}).get("stage", 0))


LIGER_KERNELS = {
    "rope": True,
    "swiglu": True,
    "rms_norm": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": False,
}  # TRL computes the loss's head itself


def use_liger(cfg: TrainConfig) -> bool:
    """``liger``: true (validated to run here), false, or null = where it runs (CUDA and the
    liger-kernel package); logged once when auto turns it on or off."""
    if cfg.liger is not None:
        return cfg.liger
    import importlib.util

    on = dist.has_cuda() and importlib.util.find_spec("liger_kernel") is not None
    if dist.is_main():
        log.info(
            "liger kernels: %s (liger: auto)",
            "on"
            if on
            else "off (no CUDA)"
            if not dist.has_cuda()
            else "off (liger-kernel not installed)",
        )
    return on


def trainer_arguments(
    cfg: TrainConfig,
    recipe: Recipe,
    paths: StagePaths,
    job: str,
    report_wandb: bool,
    ds: dict | None,
) -> dict[str, Any]:
    """Keyword arguments shared by ``SFTConfig`` and ``DPOConfig``."""
    import torch

    precision = dist.resolve_precision(cfg.precision)
    accumulate = accumulation(cfg)
    if dist.is_main():
        log.info(
            "%s: %s, %s, world size %d, global batch %d (%d per device x %d accumulation)",
            job,
            f"DeepSpeed ZeRO-{zero_stage(ds)}" if ds else "no DeepSpeed",
            precision,
            dist.world_size(),
            global_batch(cfg),
            cfg.per_device_train_batch_size,
            accumulate,
        )
    return dict(
        output_dir=str(paths.checkpoints),
        run_name=f"{recipe.run.name}/{job}",
        seed=recipe.run.seed,
        data_seed=recipe.run.seed,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=accumulate,
        activation_checkpointing=cfg.gradient_checkpointing,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=["wandb"] if report_wandb else [],
        deepspeed=ds,
        ddp_timeout=recipe.run.dist_timeout_s,
        dataloader_num_workers=cfg.dataloader_num_workers,
        accelerator_config={"use_configured_state": True},
        disable_tqdm=not dist.is_main() or not os.isatty(2),
        max_length=cfg.max_length,
        **(
            {"use_liger_kernel": True, "liger_kernel_config": dict(LIGER_KERNELS)}
            if use_liger(cfg)
            else {}
        ),
    )
