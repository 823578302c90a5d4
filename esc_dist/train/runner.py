"""One runner for the training stages (SFT and DPO).

A stage supplies what is its own (its inputs, a function that builds its configured trainer, its
extra manifest fields and W&B summary keys); ``run_training`` does the rest, the same for both:
the run's key, the checkpoint to resume from, the DeepSpeed config, the W&B run, training, the
preemption check, the manifest and the export.
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .. import __version__, dist, tracking
from ..config import Recipe, TrainConfig, redact
from ..constants import ROLES
from ..errors import ConfigError
from ..io import model_fingerprint, read_manifest, sha256_json
from ..log import get_logger
from ..outputs import check_output, claim_dir
from .arguments import deepspeed_config
from .checkpoints import find_resume_checkpoint, prepare_resume, training_key, was_preempted
from .common import StagePaths
from .disk import export_need, precision_bytes, remove_checkpoints, require_space
from .models import export_model

log = get_logger(__name__)

# build_trainer(ds_cfg, report_wandb, key) -> (trainer, tokenizer, tokenization stats)
BuildTrainer = Callable[[dict | None, bool, str], tuple[Any, Any, dict]]


def start_stage(recipe: Recipe, cfg: TrainConfig, role: str) -> None:
    """Check the role and join the process group of a training stage."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; expected one of {ROLES}")
    dist.init(recipe.run.dist_timeout_s, deepspeed=bool(cfg.deepspeed))


def data_input(data_dir: str) -> dict:
    """A data directory a stage reads, identified by its manifest's hash."""
    return {"path": str(data_dir), "sha256": sha256_json(read_manifest(data_dir) or {})}


def stage_inputs(name: str, data_dir: str, model_dir: str) -> dict:
    """What a stage trains on: its data directory (by manifest hash) and its starting model."""
    from ..models.hub import identity

    model = {"path": str(model_dir), "fingerprint": model_fingerprint(model_dir)}
    hub = identity(model_dir)
    if hub is not None:  # a Hub model: its id and commit
        model["hub"] = hub
    return {name: data_input(data_dir), "model": model}


def run_training(
    stage: str,
    role: str,
    recipe: Recipe,
    cfg: TrainConfig,
    inputs: dict,
    model_dir: str,
    paths: StagePaths,
    build_trainer: BuildTrainer,
    summary_keys: tuple[str, ...],
    extra_manifest: Callable[[Any], dict] | None = None,
    exported_weights: Callable[[], Path | None] | None = None,
) -> dict | None:
    """Train (resuming when a checkpoint of the same run exists) and export; returns the export
    manifest, or None when training stopped on a preemption signal (checkpoint saved, no export).
    ``exported_weights`` names a saved model directory to export instead of the last step's
    weights (the DPO guard's best step).
    """
    claim_outputs(stage, paths, [v["path"] for v in inputs.values()])
    key = training_key(stage, role, recipe, cfg, inputs)
    ckpt = find_resume_checkpoint(paths.checkpoints, cfg.resume, key)
    ds_cfg = deepspeed_config(cfg, universal=prepare_resume(ckpt))
    with tracking.stage_run(
        recipe, f"{stage}-{role}", paths.work, config={"stage": stage, "role": role}
    ) as run:
        trainer, tokenizer, tok_stats = build_trainer(ds_cfg, run is not None, key)
        if ckpt is not None:
            log.info("resuming from %s", ckpt)
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        if was_preempted(trainer):
            return None

        manifest = base_manifest(stage, role, recipe, cfg, inputs, model_dir)
        manifest.update(
            summarize_history(trainer),
            tokenization=tok_stats,
            resumed_from=str(ckpt) if ckpt else None,
            export_dir=str(paths.export),
            **(extra_manifest(trainer) if extra_manifest else {}),
        )
        require_space(paths.work, export_need(model_dir, precision_bytes(cfg)), "the export")
        weights = exported_weights() if exported_weights else None
        export_model(trainer, tokenizer, paths, manifest, weights=weights)
        if not cfg.keep_checkpoints:  # the guard's best-step copy went into the export too
            remove_checkpoints(paths.checkpoints, [weights] if weights else [])
        if recipe.hub.push and dist.is_main():
            from ..models.hub import push

            url = push(paths.export, f"{recipe.hub.repo_prefix}-{stage}-{role}", recipe.hub.private)
            log.info("pushed %s to the Hugging Face Hub: %s", paths.export, url)
            if run is not None:
                run.summary["hub_commit"] = url
        if run is not None:
            run.summary.update({k: manifest[k] for k in summary_keys})
            tracking.log_reference(run, paths.export, f"{recipe.run.name}-{stage}-{role}", "model")
    return manifest


def claim_outputs(stage: str, paths: StagePaths, inputs: list[str]) -> None:
    """Check the export directory and claim the work directory (rank 0 creates and marks it)
    before any rank writes; every rank checks, so that a refusal stops them all."""
    check_output(paths.export, stage, inputs)
    check_output(paths.work, stage, inputs)
    dist.barrier()  # every rank has looked before rank 0 writes: they all see the same state
    if dist.is_main():
        claim_dir(paths.work, stage, inputs)
    dist.barrier()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def base_manifest(
    stage: str, role: str, recipe: Recipe, cfg: TrainConfig, inputs: dict, base_model: str
) -> dict:
    return {
        "stage": stage,
        "role": role,
        "esc_dist_version": __version__,
        "git_commit": git_commit(),
        "base_model": base_model,
        "inputs": inputs,
        "config": redact(
            {"train": asdict(cfg), "run": asdict(recipe.run), "model": asdict(recipe.model)}
        ),
        "world_size": dist.world_size(),
    }


def summarize_history(trainer) -> dict:
    """Final numbers of a finished run from the trainer's log history."""
    hist = trainer.state.log_history
    losses = [h["loss"] for h in hist if "loss" in h]
    fracs = [h["non_pad_fraction"] for h in hist if "non_pad_fraction" in h]
    return {
        "global_step": trainer.state.global_step,
        "final_loss": losses[-1] if losses else None,
        "mean_non_pad_fraction": sum(fracs) / len(fracs) if fracs else None,
        "train_runtime_s": next(
            (h["train_runtime"] for h in reversed(hist) if "train_runtime" in h), None
        ),
        "final_eval_loss": next((h["eval_loss"] for h in reversed(hist) if "eval_loss" in h), None),
    }
