"""Disk: free space checked before a checkpoint or an export is written, and the checkpoints of a
stage removed once its export is complete (``keep_checkpoints: false``, the default).

A full-parameter 7B ZeRO-3 checkpoint holds the 16-bit weights, fp32 master weights and two
Adam moments: ~16 bytes per parameter, ~120 GB; a pipeline trains six models. Sizes: a
checkpoint is expected to be as large as the previous one of the run (measured), else
parameters x 16 bytes (12 in fp32; parameters counted from the starting model's safetensors
headers); an export, parameters x the training dtype's bytes. A save that would not fit stops
the stage with one line before anything is written (every rank agrees, so none waits in a
collective); a save cut short by the disk anyway never becomes the checkpoint a run resumes
from, because its ``COMPLETED`` marker is written last.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import dist
from ..errors import EscError
from ..log import get_logger

log = get_logger(__name__)

# bytes a checkpoint holds per parameter: fp32 weights + Adam m and v (fp32 training), or
# 16-bit weights + fp32 master weights + m and v (+ DeepSpeed's 16-bit copy: bf16/fp16)
CHECKPOINT_BYTES = {4: 12, 2: 16}
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "U8": 1, "I8": 1}
MARGIN = 1.05


class DiskFull(EscError):
    """Not enough free space for a checkpoint or an export."""


def parameters(model_dir: str | Path) -> int | None:
    """Parameters of a model directory, from its safetensors headers (None without them)."""
    total = 0
    files = sorted(Path(model_dir).glob("*.safetensors"))
    for f in files:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name != "__metadata__":
                count = 1
                for d in t["shape"]:
                    count *= d
                total += count
    return total or None


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def require_space(path: Path, need: int, what: str) -> None:
    """Stop every rank with one line when rank 0 sees fewer than ``need`` free bytes."""
    free = free_bytes(path) if dist.is_main() else 0
    short = dist.all_reduce_sum([float(dist.is_main() and free < need * MARGIN)])[0] > 0
    if short:
        raise DiskFull(
            f"{what} needs about {size(need)} but only {size(free)} are free there "
            "(rank 0's view): free space, move run.output_dir, or set "
            "keep_checkpoints: false / a lower save_total_limit",
            path=path,
        )


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return ""


def disk_guard(model_dir: str, checkpoints: Path, precision_bytes: int):
    """A trainer callback that checks the space of each checkpoint before it is written."""
    from transformers import TrainerCallback

    n = parameters(model_dir)

    class DiskGuard(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:
                done = sorted(
                    (p for p in checkpoints.glob("checkpoint-*") if (p / "COMPLETED").is_file()),
                    key=lambda p: p.stat().st_mtime,
                )
                need = (
                    directory_bytes(done[-1])
                    if done
                    else (n or 0) * CHECKPOINT_BYTES[precision_bytes]
                )
                require_space(checkpoints, need, f"checkpoint-{state.global_step}")
            return control

    return DiskGuard()


def precision_bytes(cfg) -> int:
    """Bytes per weight of a training config's precision."""
    return 2 if dist.resolve_precision(cfg.precision) in ("bf16", "fp16") else 4


def export_need(model_dir: str, precision_bytes: int) -> int:
    return (parameters(model_dir) or 0) * precision_bytes


def remove_checkpoints(checkpoints: Path, also: list[Path] = ()) -> None:
    """After a complete export (rank 0): the stage's checkpoints, stale ones included, and
    ``also`` (saved weights the export was copied from)."""
    if not dist.is_main():
        return
    freed = 0
    for d in [checkpoints, *checkpoints.parent.glob(f"{checkpoints.name}-stale-*"), *also]:
        if d.is_dir():
            freed += directory_bytes(d)
            shutil.rmtree(d, ignore_errors=True)
    if freed:
        log.info(
            "removed the checkpoints of %s (%s; keep_checkpoints: true keeps them)",
            checkpoints.parent.name,
            size(freed),
        )
