"""Checkpoints: what a run's checkpoints belong to (``training_key``), the marker of a complete
checkpoint, the choice of the checkpoint to resume from (``resume: auto``), resuming on another
world size (universal checkpoints), and checkpoint-and-stop on a preemption signal."""

from __future__ import annotations

import glob
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from .. import dist
from ..config import NEUTRAL_KEYS, Recipe, TrainConfig, key_view
from ..errors import EscError
from ..internals import internal
from ..io import COMPLETED, atomic_write_json, mark_completed, read_json, sha256_json
from ..log import get_logger
from ..versions import code_version
from .disk import size as disk_size

log = get_logger(__name__)


# Settings that do not change what is trained: a checkpoint stays resumable when only they change.
_NOT_IN_KEY = (
    "resume",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "dataloader_num_workers",
    "keep_checkpoints",
    "eval_steps",
    "eval_examples",
)


def training_key(stage: str, role: str, recipe: Recipe, cfg: TrainConfig, inputs: dict) -> str:
    """What a training run's checkpoints belong to: its settings, seed and inputs. The batch
    enters as the global batch, so a run may resume on another number of ranks."""
    from .common import global_batch

    neutral = {k: v for (section, k), v in NEUTRAL_KEYS.items() if section == stage}
    train = {
        k: v
        for k, v in asdict(cfg).items()
        if k
        not in (
            *_NOT_IN_KEY,
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "global_batch_size",
        )
        and not (k in neutral and v == neutral[k])
    }
    train["global_batch"] = global_batch(cfg)
    return sha256_json(
        {
            "stage": stage,
            "role": role,
            "train": train,
            "seed": recipe.run.seed,
            "model": key_view(recipe)["model"],
            "inputs": inputs,
            # the code's version (esc_dist/versions.py) where bumped: older checkpoints are not
            # resumed by changed code
            **({"code_version": v} if (v := code_version(stage)) else {}),
        }
    )


def checkpoint_callback(key: str):
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        """Writes ``COMPLETED`` (with the world size and the run's key) into a checkpoint once
        every rank has saved it, and logs how long the save took and its size: what the Slurm
        signal lead time (``pipeline.signal_lead_s``) must cover."""

        started = None

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:
                self.started = time.monotonic()
            return control

        def on_save(self, args, state, control, **kwargs):
            dist.barrier()
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                seconds = time.monotonic() - self.started if self.started else None
                size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
                atomic_write_json(
                    ckpt / "esc_dist.json",
                    {
                        "world_size": dist.world_size(),
                        "global_step": state.global_step,
                        "key": key,
                        "save_seconds": seconds,
                        "bytes": size,
                    },
                )
                mark_completed(ckpt)
                log.info(
                    "checkpoint-%d saved in %s (%s on this node's view of the disk)",
                    state.global_step,
                    f"{seconds:.1f} s" if seconds is not None else "?",
                    disk_size(size),
                )
            dist.barrier()
            return control

    return CheckpointMarker()


PREEMPT_SIGNALS = ("SIGUSR1",)


def stage_callbacks(key: str, cfg: TrainConfig, model_dir: str, checkpoints: Path) -> list:
    """The callbacks every training stage runs: the checkpoint marker, checkpoint-and-stop on
    a preemption signal, and the free-space check before each checkpoint (disk.py)."""
    from .disk import disk_guard, precision_bytes

    return [
        checkpoint_callback(key),
        preemption_callback(),
        disk_guard(model_dir, checkpoints, precision_bytes(cfg)),
    ]


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
                log.warning(
                    "preemption signal: saving a checkpoint at step %d and stopping",
                    state.global_step,
                )
                self.preempted = True
                control.should_save = True
                control.should_training_stop = True
            return control

    return Preemption()


def was_preempted(trainer) -> bool:
    """True when training stopped on a preemption signal (a checkpoint was saved)."""
    cb = next((c for c in trainer.callback_handler.callbacks if hasattr(c, "preempted")), None)
    if cb is not None and cb.preempted:
        log.warning(
            "stopped early at step %d on a preemption signal; the checkpoint is "
            "saved and the next run resumes from it",
            trainer.state.global_step,
        )
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
            log.warning(
                "%s holds checkpoints of %s; moving them to %s and starting fresh",
                checkpoints,
                "another configuration" if resume == "auto" else "an earlier run (resume=never)",
                stale,
            )
            os.replace(checkpoints, stale)
        dist.barrier()
    return None


FAILED = "FAILED"  # beside COMPLETED: rank 0 could not convert a checkpoint


class ConversionFailed(EscError):
    """Rank 0 could not convert a checkpoint to a universal one (seen by the other ranks)."""


def prepare_resume(ckpt: Path | None, poll_s: float = 2.0) -> bool:
    """Make ``ckpt`` loadable on this world size; True when a universal checkpoint is needed.

    A DeepSpeed ZeRO checkpoint holds optimizer partitions for the world size that wrote it.
    On another world size it is converted once (rank 0) to DeepSpeed's universal format, which
    any world size can load with ``load_universal``. The other ranks wait for the conversion's
    marker on the (shared) checkpoint directory, not in a collective: converting a 7B
    checkpoint takes longer than any sensible process-group timeout (``run.dist_timeout_s``).
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
    converted = (dst / COMPLETED).is_file()
    if dist.is_main() and not converted:
        shutil.rmtree(dst, ignore_errors=True)  # a half-converted attempt, and its FAILED marker
    dist.barrier()  # no rank reads a FAILED marker of an earlier attempt
    if converted:
        return True
    if dist.is_main():
        log.info(
            "checkpoint %s was written by %d ranks, this run has %d: converting it to a "
            "universal checkpoint",
            ckpt.name,
            saved,
            dist.world_size(),
        )
        t0 = time.time()
        try:
            from argparse import Namespace

            ds_to_universal = internal("deepspeed.checkpoint.ds_to_universal", "main")

            ds_to_universal(
                Namespace(
                    input_folder=str(src),
                    output_folder=str(dst),
                    num_extract_workers=1,
                    num_merge_workers=1,
                    keep_temp_folder=False,
                    strict=True,
                    inject_missing_state=False,
                )
            )
        except BaseException:
            dst.mkdir(parents=True, exist_ok=True)
            (dst / FAILED).touch()
            raise
        mark_completed(dst)
        log.info("converted %s in %.0f s", dst.name, time.time() - t0)
    else:
        while not (dst / COMPLETED).is_file():
            if (dst / FAILED).is_file():
                raise ConversionFailed(
                    f"{src}: rank 0 could not convert this checkpoint to a "
                    "universal one (its log says why)"
                )
            time.sleep(poll_s)
    dist.barrier()
    return True
