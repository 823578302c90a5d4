"""Distributed setup: the only module that talks to torch.distributed directly.

Every stage runs unchanged under `deepspeed`, `torchrun`, `accelerate launch`, `srun` (one task
per GPU; Slurm variables are mapped to torch's) or as a plain single process. On GPUs it uses
NCCL; without CUDA it applies, in one place, the workarounds DeepSpeed and accelerate need on CPU
(gloo backend, no JIT-built shared-memory op, accelerate told about the process group).
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import sys
from typing import Any, Iterable, Sequence

from .hardware import cpu_has_bf16, has_cuda, require_gpus_usable

_CPU_PATCHED = False


def resolve_precision(precision: str) -> str:
    """A recipe's ``precision``: ``auto`` is bf16 on a GPU that supports it and on a CPU with
    native bf16 (:func:`cpu_has_bf16`), else fp32; any other value is kept."""
    if precision != "auto":
        return precision
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        resolve_precision(precision), torch.float32
    )


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def cuda_device() -> int:
    """The index of the GPU this rank drives, among those it sees. srun may give each task one
    GPU (``--gpus-per-task=1``, ``--gpu-bind=single:1``: every task sees one device, index 0,
    whatever its local rank), every task all of the node's GPUs (index = local rank), or the
    site may set ``CUDA_VISIBLE_DEVICES``; a local rank with no GPU of its own is a launch
    mistake, refused with one line."""
    import torch

    from .errors import ConfigError

    n, local = torch.cuda.device_count(), local_rank()
    if n == 1:
        return 0
    if local < n:
        return local
    raise ConfigError(
        f"local rank {local} sees {n} GPU(s) (CUDA_VISIBLE_DEVICES="
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start one task per GPU (srun "
        "--ntasks-per-node=G with --gpus-per-task=1, or with all G GPUs visible to every task)"
    )


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def free_port() -> int:
    """A TCP port that is free on this host now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_master_port(job_id: str | int | None = None) -> int:
    """The rendezvous port of a Slurm job (``slurm/common.sh`` asks for it too): a base plus the
    job id, so that jobs sharing a node do not collide."""
    if job_id is None:
        job_id = os.environ.get("SLURM_JOB_ID", "0")
    return 29500 + int(job_id) % 2000


def launcher_env() -> None:
    """Fill torch's rendezvous variables when a launcher did not.

    Under `srun` without torchrun, Slurm's task variables give rank and world size; a bare
    `python`/`esc-dist` process becomes a world of one on a free local port.
    """
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        if "MASTER_ADDR" not in os.environ:
            nodes = os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
            os.environ["MASTER_ADDR"] = _first_host(nodes)
        os.environ.setdefault("MASTER_PORT", str(slurm_master_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if world_size() > 1:
            raise RuntimeError(
                "WORLD_SIZE > 1 but MASTER_PORT is not set: start several processes "
                "with a launcher (torchrun, deepspeed, accelerate launch, srun)"
            )
        os.environ["MASTER_PORT"] = str(free_port())


def _first_host(nodelist: str) -> str:
    """First host of a Slurm node list such as ``gpu[01-04,07],cpu1`` (no scontrol needed)."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def patch_cpu_deepspeed() -> None:
    """CPU only: skip DeepSpeed's JIT-compiled shared-memory all-reduce (30-60 s of g++ per
    process, needed only by CPU inference kernels) and pick its CPU accelerator quietly."""
    global _CPU_PATCHED
    if _CPU_PATCHED or has_cuda():
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from .internals import set_internal

    set_internal("deepspeed.comm.torch", "build_shm_op", lambda: None)
    _CPU_PATCHED = True


def _cpu_threads() -> None:
    """One share of the cores per local rank. torchrun sets OMP_NUM_THREADS=1, the deepspeed
    launcher sets nothing, and torch sized its pool at import: two ranks of two threads on two
    cores run several times slower than one thread each."""
    import torch

    n = os.environ.get("OMP_NUM_THREADS", "")
    if not n.isdigit() or int(n) < 1:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
        n = str(max(1, (os.cpu_count() or 1) // max(1, local)))
        os.environ["OMP_NUM_THREADS"] = n
    if int(n) != torch.get_num_threads():
        torch.set_num_threads(int(n))


def init(timeout_s: int = 1800, deepspeed: bool = False) -> None:
    """Create the process group (NCCL on GPU, gloo on CPU) and tell accelerate about it.

    Idempotent. Must run before any trainer config is built: without it, accelerate sees a
    world of one on every CPU rank and the DeepSpeed batch-size check fails. ``deepspeed``
    says whether a trainer will use a DeepSpeed config (accelerate must know before its state
    is created).
    """
    import torch
    import torch.distributed as td

    launcher_env()
    if has_cuda():
        torch.cuda.set_device(cuda_device())
    else:
        require_gpus_usable()  # a CPU torch on a GPU node: one line, not a silent CPU run
        patch_cpu_deepspeed()
        _cpu_threads()
    if td.is_available() and not td.is_initialized():
        from accelerate import PartialState

        if deepspeed:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        backend = "nccl" if has_cuda() else "gloo"
        # Without DeepSpeed, cpu=True makes accelerate treat a multi-process CPU run as
        # MULTI_CPU (DDP-wrapped); otherwise its ranks would train unsynchronised. With
        # DeepSpeed it must stay False or accelerate does not see the DeepSpeed state.
        PartialState(
            cpu=not has_cuda() and not deepspeed,
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        if rank() == 0:
            from .log import get_logger

            # one process without a launcher has no process group (accelerate makes none)
            group = td.get_backend() if td.is_initialized() else "none (one process)"
            get_logger(__name__).info(
                "process group: %s, world size %d%s",
                group,
                td.get_world_size() if td.is_initialized() else 1,
                f", {torch.cuda.get_device_name()}" if has_cuda() else "",
            )


def barrier() -> None:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.barrier()


def shutdown(ok: bool = True) -> None:
    """Tear the process group down before the interpreter exits: after a last barrier when the
    command succeeded (no rank leaves while another still talks to the rendezvous store), then
    ``destroy_process_group``. Left to interpreter exit, the teardown races with gloo's and the
    store's threads and can abort a finished rank ("terminate called without an active
    exception")."""
    td = sys.modules.get("torch.distributed")  # never imported: nothing to tear down
    if td is None or not (td.is_available() and td.is_initialized()):
        return
    try:
        if ok and td.get_world_size() > 1:
            td.barrier()
    finally:
        td.destroy_process_group()
        # accelerate's state still describes the destroyed group: a later command in this
        # process would start its first barrier on it
        from .internals import forget_accelerate_state

        forget_accelerate_state()


def all_gather_object(obj: Any) -> list[Any]:
    import torch.distributed as td

    if not (td.is_available() and td.is_initialized()) or td.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * td.get_world_size()
    td.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Sum a few numbers over ranks (on the device the backend needs)."""
    import torch
    import torch.distributed as td

    if not (td.is_available() and td.is_initialized()) or td.get_world_size() == 1:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if has_cuda() else "cpu"
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    td.all_reduce(t)
    return t.tolist()


def shard_balanced(items: Iterable[tuple[str, int]], world: int, rank_: int) -> list[str]:
    """Deterministic shard of ``(id, cost)`` items for one rank, balanced by cost.

    Items are sorted by id, then dealt greedily by decreasing cost to the least-loaded rank, so the
    assignment depends only on the items and the world size.
    """
    items = sorted(items)
    order = sorted(range(len(items)), key=lambda i: (-items[i][1], items[i][0]))
    load = [0] * world
    mine = []
    for i in order:
        r = min(range(world), key=lambda k: (load[k], k))
        load[r] += items[i][1] + 1
        if r == rank_:
            mine.append(items[i][0])
    return sorted(mine)
