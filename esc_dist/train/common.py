"""Trainer glue shared by SFT and DPO: paths, arguments, sampling, checkpoints, export, logging.

One object does not own everything here; each piece is a small function or class that both
stages compose: ``stage_paths`` (where things go), ``trainer_arguments`` (TrainConfig → HF/TRL
arguments, DeepSpeed config, precision), ``load_policy`` (ZeRO-3 aware model loading),
``TrainerExtras`` (world-size-invariant length-grouped sampling, non-pad fraction and tokens/s
logging), ``CheckpointMarker`` + ``find_resume_checkpoint`` (complete checkpoints only, resume on
another world size) and ``export_model`` (one plain HF directory with a manifest).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import __version__, dist
from ..config import Recipe, TrainConfig, redact
from ..errors import ConfigError
from ..io import COMPLETED, atomic_write_json, mark_completed, read_json, sha256_json, staged_dir
from ..log import get_logger

log = get_logger(__name__)



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
    export = Path(out) if out else Path(recipe.run.output_dir) / "models" / f"{stage}-{role}"
    return StagePaths(export=export, work=export.with_name(export.name + ".work"))


def default_base_model(recipe: Recipe) -> str:
    return recipe.model.base or str(Path(recipe.run.output_dir) / "models" / "tiny")


# ---------------------------------------------------------------------------------------------
# Precision and arguments


def resolve_precision(cfg: TrainConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def deepspeed_config(cfg: TrainConfig, universal: bool = False) -> dict | None:
    if not cfg.deepspeed:
        return None
    path = Path(cfg.deepspeed)
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config not found: {path}")
    ds = json.loads(path.read_text())
    if universal:
        ds.setdefault("checkpoint", {})["load_universal"] = True
    return ds


def zero_stage(ds: dict | None) -> int:
    return int((ds or {}).get("zero_optimization", {}).get("stage", 0))


def trainer_arguments(cfg: TrainConfig, recipe: Recipe, paths: StagePaths, job: str,
                      report_wandb: bool, ds: dict | None) -> dict[str, Any]:
    """Keyword arguments shared by ``SFTConfig`` and ``DPOConfig``."""
    import torch

    if not 0 <= cfg.warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    precision = resolve_precision(cfg)
    if dist.is_main():
        log.info("%s: %s, %s, world size %d, global batch %d (%d per device x %d accumulation)",
                 job, f"DeepSpeed ZeRO-{zero_stage(ds)}" if ds else "no DeepSpeed", precision,
                 dist.world_size(), cfg.per_device_train_batch_size
                 * cfg.gradient_accumulation_steps * dist.world_size(),
                 cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps)
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
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
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
    )


# ---------------------------------------------------------------------------------------------
# Model loading


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(path: str, recipe: Recipe, cfg: TrainConfig):
    """Load the model to train. Call *after* the trainer config exists: its live DeepSpeed config
    makes ``from_pretrained`` build the model already partitioned under ZeRO-3."""
    import torch
    from transformers import AutoModelForCausalLM

    precision = resolve_precision(cfg)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    extra = {"attn_implementation": recipe.model.attn_implementation} \
        if recipe.model.attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code, **extra)
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora.target_modules
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=targets[0] if targets == ["all-linear"] else targets,
            task_type="CAUSAL_LM"))
    return model


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
            chunk = sorted(order[i:i + size], key=lambda j: -self.lengths[j])
            batches += [chunk[k:k + self.global_batch] for k in range(0, len(chunk),
                                                                     self.global_batch)]
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
        global_batch = a.per_device_train_batch_size * a.gradient_accumulation_steps * max(
            1, a.world_size)
        return GlobalBatchLengthSampler(lengths, global_batch, a.data_seed or a.seed)

    def example_lengths(self, ds) -> list[int] | None:
        if "input_ids" not in ds.column_names or getattr(self.args, "packing", False):
            return None
        return [len(x) for x in ds["input_ids"]]

    def training_step(self, model, inputs, *args, **kwargs):
        masks = [v for k, v in inputs.items() if k.endswith("attention_mask") and v is not None]
        stats = getattr(self, "_esc_tokens", [0.0, 0.0])
        for m in masks:
            stats[0] += float(m.sum())
            stats[1] += float(m.numel())
        self._esc_tokens = stats
        return super().training_step(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.model.training and "loss" in logs:
            real, total = dist.all_reduce_sum(getattr(self, "_esc_tokens", [0.0, 0.0]))
            now = time.perf_counter()
            start = getattr(self, "_esc_t0", None)
            if total > 0:
                logs["non_pad_fraction"] = real / total
            if start is not None and now > start:
                logs["tokens_per_second"] = real / (now - start)
            self._esc_tokens, self._esc_t0 = [0.0, 0.0], now
        super().log(logs, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Checkpoints


# Settings that do not change what is trained: a checkpoint stays resumable when only they change.
_NOT_IN_KEY = ("resume", "save_steps", "save_total_limit", "logging_steps",
               "dataloader_num_workers")


def training_key(stage: str, role: str, recipe: Recipe, cfg: TrainConfig, inputs: dict) -> str:
    """What a training run's checkpoints belong to: its settings, seed and inputs. The batch
    enters as the global batch, so a run may resume on another number of ranks."""
    train = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_KEY}
    train["global_batch"] = (train.pop("per_device_train_batch_size")
                             * train.pop("gradient_accumulation_steps") * dist.world_size())
    return sha256_json({"stage": stage, "role": role, "train": train, "seed": recipe.run.seed,
                        "model": asdict(recipe.model), "inputs": inputs})


def checkpoint_callback(key: str):
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        """Writes ``COMPLETED`` (with the world size and the run's key) into a checkpoint once
        every rank has saved it."""

        def on_save(self, args, state, control, **kwargs):
            dist.barrier()
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                atomic_write_json(ckpt / "esc_dist.json", {
                    "world_size": dist.world_size(), "global_step": state.global_step,
                    "key": key})
                mark_completed(ckpt)
            dist.barrier()
            return control

    return CheckpointMarker()


PREEMPT_SIGNALS = ("SIGUSR1",)


def preemption_callback():
    """Checkpoint and stop at the end of the current step when the job is told to go away.

    Slurm sends SIGUSR1 ahead of a time limit or preemption (``--signal=B:USR1@120`` in our
    templates, forwarded to every task). All ranks agree on the stop through a tiny all-reduce
    per step, so they save the same step; the caller then exits without exporting and the job
    requeues itself and resumes (``resume: auto``).
    """
    import signal

    from transformers import TrainerCallback

    class Preemption(TrainerCallback):
        def __init__(self):
            self.requested = False
            self.preempted = False
            for name in PREEMPT_SIGNALS:
                signal.signal(getattr(signal, name), self._on_signal)

        def _on_signal(self, signum, frame):
            self.requested = True

        def on_step_end(self, args, state, control, **kwargs):
            if dist.all_reduce_sum([float(self.requested)])[0] > 0 and not self.preempted:
                log.warning("preemption signal: saving a checkpoint at step %d and stopping",
                            state.global_step)
                self.preempted = True
                control.should_save = True
                control.should_training_stop = True
            return control

    return Preemption()


def was_preempted(trainer) -> bool:
    """True when training stopped on a preemption signal (a checkpoint was saved)."""
    cb = next((c for c in trainer.callback_handler.callbacks if hasattr(c, "preempted")), None)
    if cb is not None and cb.preempted:
        log.warning("stopped early at step %d on a preemption signal; the checkpoint is "
                    "saved and the next run resumes from it", trainer.state.global_step)
        return True
    return False


def _step(p: Path) -> int:
    try:
        return int(p.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _key_of(ckpt: Path) -> str | None:
    meta = ckpt / "esc_dist.json"
    return read_json(meta).get("key") if meta.is_file() else None


def find_resume_checkpoint(checkpoints: Path, resume: str, key: str) -> Path | None:
    """The checkpoint to resume from.

    ``auto``: the newest complete checkpoint written for the same settings and inputs (``key``);
    checkpoints of another configuration are moved aside (``checkpoints-stale-N``) and training
    starts fresh. ``never``: start fresh (existing checkpoints moved aside). A path: that
    checkpoint, which must be complete.
    """
    checkpoints = Path(checkpoints)
    if resume not in ("auto", "never"):
        p = Path(resume)
        if not (p / COMPLETED).is_file():
            raise FileNotFoundError(f"resume={resume}: not a complete checkpoint (no {COMPLETED})")
        if _key_of(p) not in (None, key):
            log.warning("resume=%s: this checkpoint was written with other settings or inputs", p)
        return p
    existing = list(checkpoints.glob("checkpoint-*"))
    mine = [p for p in existing if (p / COMPLETED).is_file() and _key_of(p) == key]
    if resume == "auto" and mine:
        return max(mine, key=_step)
    if existing:
        stale = checkpoints.with_name(f"{checkpoints.name}-stale-1")
        n = 1
        while stale.exists():
            n += 1
            stale = checkpoints.with_name(f"{checkpoints.name}-stale-{n}")
        if dist.is_main():
            log.warning("%s holds checkpoints of %s; moving them to %s and starting fresh",
                        checkpoints, "another configuration" if resume == "auto" else
                        "an earlier run (resume=never)", stale)
            os.replace(checkpoints, stale)
        dist.barrier()
    return None


def prepare_resume(ckpt: Path | None) -> bool:
    """Make ``ckpt`` loadable on this world size; True when a universal checkpoint is needed.

    A DeepSpeed ZeRO checkpoint holds optimizer partitions for the world size that wrote it.
    On another world size it is converted once (rank 0) to DeepSpeed's universal format, which
    any world size can load with ``load_universal``.
    """
    if ckpt is None:
        return False
    meta = ckpt / "esc_dist.json"
    saved = read_json(meta)["world_size"] if meta.is_file() else dist.world_size()
    tags = sorted(glob.glob(str(ckpt / "global_step*")))
    tags = [t for t in tags if not t.endswith("_universal")]
    if saved == dist.world_size() or not tags:
        return False
    src = Path(tags[-1])
    dst = src.with_name(src.name + "_universal")
    if dist.is_main() and not (dst / COMPLETED).is_file():
        log.info("checkpoint %s was written by %d ranks, this run has %d: converting it to a "
                 "universal checkpoint", ckpt.name, saved, dist.world_size())
        shutil.rmtree(dst, ignore_errors=True)
        from argparse import Namespace

        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        ds_to_universal(Namespace(input_folder=str(src), output_folder=str(dst),
                                  num_extract_workers=1, num_merge_workers=1,
                                  keep_temp_folder=False, strict=True,
                                  inject_missing_state=False))
        mark_completed(dst)
    dist.barrier()
    return True


# ---------------------------------------------------------------------------------------------
# Export


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[2], timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def export_model(trainer, tokenizer, out: Path, manifest: dict) -> None:
    """Save one HF directory (safetensors, config, tokenizer, generation config, manifest).

    Under ZeRO-3 every rank takes part in gathering the weights; rank 0 writes. LoRA adapters
    are merged so that the export loads with plain ``from_pretrained``.
    """
    tmp = out.with_name(out.name + ".saving")
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    trainer.save_model(str(tmp))  # collective under ZeRO-3
    dist.barrier()
    if dist.is_main():
        model = trainer.model
        if hasattr(model, "peft_config"):
            _merge_lora(tmp, manifest["base_model"])
        tokenizer.save_pretrained(str(tmp))
        gen = getattr(trainer.model, "generation_config", None)
        if gen is not None and not (tmp / "generation_config.json").is_file():
            gen.save_pretrained(str(tmp))
        for f in ("training_args.bin",):
            (tmp / f).unlink(missing_ok=True)
        atomic_write_json(tmp / "manifest.json", manifest)
        mark_completed(tmp)
        with staged_dir(out) as stage:
            for item in tmp.iterdir():
                shutil.move(str(item), stage / item.name)
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()


def _merge_lora(adapter_dir: Path, base: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_model = AutoModelForCausalLM.from_pretrained(base)
    merged = PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
    for f in adapter_dir.glob("adapter_*"):
        f.unlink()
    merged.save_pretrained(str(adapter_dir))


def base_manifest(stage: str, role: str, recipe: Recipe, cfg: TrainConfig, inputs: dict,
                  base_model: str) -> dict:
    return {
        "stage": stage,
        "role": role,
        "esc_dist_version": __version__,
        "git_commit": git_commit(),
        "base_model": base_model,
        "inputs": inputs,
        "config": redact({"train": asdict(cfg), "run": asdict(recipe.run),
                          "model": asdict(recipe.model)}),
        "world_size": dist.world_size(),
    }


def require_one_global_batch(n: int, cfg: TrainConfig, stage: str, role: str, what: str) -> None:
    """Refuse a dataset smaller than one global batch (ZeRO-3 ranks left without data hang or
    crash), with the settings to change."""
    world = dist.world_size()
    global_batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
    if n < global_batch:
        raise ConfigError(
            f"{stage} {role}: {n} {what}, fewer than one global batch "
            f"({cfg.per_device_train_batch_size} per device x {cfg.gradient_accumulation_steps} "
            f"accumulation x {world} ranks = {global_batch}); lower "
            f"{stage}.per_device_train_batch_size or provide more data")


def summarize_history(trainer) -> dict:
    """Final numbers of a finished run from the trainer's log history."""
    hist = trainer.state.log_history
    losses = [h["loss"] for h in hist if "loss" in h]
    fracs = [h["non_pad_fraction"] for h in hist if "non_pad_fraction" in h]
    return {
        "global_step": trainer.state.global_step,
        "final_loss": losses[-1] if losses else None,
        "mean_non_pad_fraction": sum(fracs) / len(fracs) if fracs else None,
        "train_runtime_s": next((h["train_runtime"] for h in reversed(hist)
                                 if "train_runtime" in h), None),
    }
