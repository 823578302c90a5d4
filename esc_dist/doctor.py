"""`esc-dist doctor`: what a cluster user runs first on a node, and the checks stage launches
repeat.

Each check gives a status (ok, warn, error) and one line. Errors are what would make a run fail
or silently wrong: a CPU build of torch on a node whose driver sees GPUs, a recipe model not in
the Hugging Face cache, too little disk for the pipeline's estimated need. ``gpu_check`` is what
every stage runs in :func:`esc_dist.dist.init` (one line, before anything loads).
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

from .config import Recipe
from .hardware import cpu_has_bf16, driver_gpus, gpu_mismatch

PACKAGES = (
    "torch",
    "deepspeed",
    "transformers",
    "trl",
    "accelerate",
    "huggingface_hub",
    "flash_attn",
    "liger_kernel",
    "wandb",
    "datasets",
    "peft",
)


@dataclass
class Check:
    name: str
    status: str  # ok | warn | error
    detail: str


def version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_check() -> Check:
    """GPUs the driver sees against those torch sees: a CPU torch on a GPU node is an error
    (it would train on the CPU, silently and ~100x slower)."""
    import torch

    listed = driver_gpus()
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    build = f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})"
    problem = gpu_mismatch()
    if problem:
        return Check("gpus", "error", problem)
    if seen:
        name = torch.cuda.get_device_name(0)
        return Check(
            "gpus",
            "ok",
            f"{seen} visible to torch ({name}); driver lists "
            f"{len(listed) or '?'}; {build}, NCCL "
            f"{'.'.join(map(str, torch.cuda.nccl.version()))}",
        )
    return Check("gpus", "ok", f"none (CPU run: gloo, {os.cpu_count()} cores); {build}")


def precision_check() -> Check:
    import torch

    if torch.cuda.is_available():
        ok = torch.cuda.is_bf16_supported()
        return Check(
            "bf16",
            "ok" if ok else "warn",
            "the GPU computes in bf16"
            if ok
            else "no bf16 on this GPU: precision auto "
            "trains in fp32 (fp16 is possible, set it explicitly)",
        )
    native = cpu_has_bf16()
    return Check(
        "bf16",
        "ok",
        "CPU with native bf16 (auto: bf16)" if native else "CPU without native bf16 (auto: fp32)",
    )


def model_check(recipe: Recipe) -> Check:
    from .models import hub
    from .models.gguf import is_gguf

    base = recipe.model.base
    if base is None:
        return Check("model", "ok", "the tiny model (built by the pipeline)")
    if is_gguf(base):
        return Check("model", "ok", f"GGUF {base} (converted by the pipeline)")
    if hub.is_hub_id(base):
        try:
            path = hub.resolve(base, recipe.model.revision)
        except Exception as e:  # MissingInput: its line says what to run
            return Check("model", "error", str(e))
        ident = hub.identity(path) or {}
        return Check(
            "model",
            "ok",
            f"{base} at {ident.get('revision', '?')[:12]} in the "
            f"Hugging Face cache ({hub.cache_dir()})",
        )
    if not Path(base).is_dir():
        return Check("model", "error", f"model.base {base!r}: no such directory")
    return Check("model", "ok", f"directory {base}")


def disk_check(recipe: Recipe, gpus: int) -> Check:
    from .estimates import needs
    from .train.disk import free_bytes, size

    out = Path(recipe.run.output_dir)
    free = free_bytes(out)
    est = needs(recipe, max(gpus, 1))
    if est["parameters"] is None:
        return Check(
            "disk",
            "ok",
            f"{size(free)} free at {out}; the need is unknown (model shape: {est['shape_from']})",
        )
    need = est["pipeline_disk_gb"] * 1e9
    status = "ok" if free >= need else "error"
    return Check(
        "disk",
        status,
        f"{size(free)} free at {out}; the pipeline needs about "
        f"{size(need)} (estimate: 6 exports + each role's "
        f"{recipe.sft.save_total_limit} checkpoints of {est['checkpoint_gb']:.0f} GB)",
    )


def cache_check() -> Check:
    from .models import hub

    offline = os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "TRUE", "yes")
    return Check(
        "hf cache",
        "ok",
        f"{hub.cache_dir()} (HF_HUB_OFFLINE "
        f"{'on: stages read the cache only' if offline else 'off'}; stages never "
        "download)",
    )


def wandb_check(recipe: Recipe) -> Check:
    from .tracking import resolve_mode

    mode = resolve_mode(recipe.wandb)
    key = "set" if os.environ.get("WANDB_API_KEY") else "not set"
    return Check(
        "wandb",
        "ok",
        f"mode {mode} (wandb.mode {recipe.wandb.mode}; WANDB_API_KEY "
        f"{key}; project {recipe.wandb.project})",
    )


def attention_check(recipe: Recipe) -> Check:
    from .models.loading import attention

    return Check(
        "attention",
        "ok",
        f"{attention(recipe.model.attn_implementation)} "
        f"(model.attn_implementation: {recipe.model.attn_implementation or 'auto'})",
    )


def run_checks(recipe: Recipe) -> list[Check]:
    import torch

    versions = ", ".join(f"{p} {version(p) or '-'}" for p in PACKAGES)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [
        Check("packages", "ok", versions),
        gpu_check(),
        precision_check(),
        attention_check(recipe),
        model_check(recipe),
        cache_check(),
        disk_check(recipe, gpus * max(1, int(os.environ.get("SLURM_NNODES", "1")))),
        wandb_check(recipe),
    ]
