"""What this machine has, read without the process group: a CUDA device for torch, a CPU that
computes in bf16, the GPUs the NVIDIA driver lists, and the one-line refusal of a CPU build of
torch on a GPU node. Below ``config`` and ``dist`` (both use it); imports nothing else of ours
but the errors."""

from __future__ import annotations

import re
import shutil
import subprocess

from .errors import ConfigError


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# CPU flags of a native bf16 dot product (AVX512-BF16, Intel AMX): without them PyTorch's bf16
# matmuls on the CPU fall back to slow paths (measured 0.3 GFLOP/s against 106 in fp32 on an
# AVX2-only EPYC), so ``auto`` stays fp32 there.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bf16 natively (its /proc/cpuinfo flags; False elsewhere)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set(
        re.findall(
            r"[\w.]+",
            "\n".join(
                line.partition(":")[2] for line in cpuinfo.splitlines() if line.startswith("flags")
            ),
        )
    )
    return any(f in flags for f in CPU_BF16_FLAGS)


def driver_gpus() -> list[str]:
    """The GPUs the NVIDIA driver lists (``nvidia-smi -L``); empty without the tool."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.startswith("GPU ")]


def gpu_mismatch() -> str | None:
    """Why torch cannot use the GPUs the driver lists (a CPU build of torch on a GPU node would
    train on the CPU, silently and ~100x slower), or None."""
    import torch

    listed = driver_gpus()
    if listed and not (torch.cuda.is_available() and torch.cuda.device_count()):
        build = f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})"
        return (
            f"the driver lists {len(listed)} GPU(s) but {build} sees none: install a "
            "CUDA build of torch (https://pytorch.org/get-started/locally/) or check "
            "CUDA_VISIBLE_DEVICES"
        )
    return None


def require_gpus_usable() -> None:
    """What a stage launch checks (``dist.init``): one line where :func:`gpu_mismatch` says."""
    problem = gpu_mismatch()
    if problem:
        raise ConfigError(problem)
