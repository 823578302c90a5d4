"""Estimates of what a recipe needs, from its model's shape, without a GPU: parameters, memory
per GPU for the model states under ZeRO, and disk for a whole pipeline. Every number here is an
estimate and says so: activations, fragmentation and the framework's buffers come on top.

The shape comes from the recipe (``model.shape``, written in the 7B/8B recipes so that a login
node without the weights can estimate), else from the base model's ``config.json`` (a local
directory, a Hub id already in the cache, or a converted GGUF), else it is unknown.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import Recipe
from .constants import ROLES
from .layout import RunLayout
from .models.shape import parameters_of_shape

GB = 1e9


def model_shape(recipe: Recipe) -> tuple[dict | None, str]:
    """The base model's shape and where it was read from ("unknown" when nowhere)."""
    if recipe.model.shape:
        return dict(recipe.model.shape), "the recipe (model.shape)"
    from .models import hub
    from .models.gguf import is_gguf

    base = recipe.model.base
    candidates = []
    if base is None:
        return None, "unknown (the tiny model is built by the pipeline)"
    if is_gguf(base):
        candidates.append(RunLayout.of(recipe).base)
    elif hub.is_hub_id(base):
        try:
            candidates.append(Path(hub.resolve(base, recipe.model.revision)))
        except Exception:  # not in the cache: unknown, said so
            return None, f"unknown ({base} is not in the Hugging Face cache)"
    else:
        candidates.append(Path(base))
    for d in candidates:
        cfg = d / "config.json"
        if cfg.is_file():
            data = json.loads(cfg.read_text())
            return data.get("text_config", data), str(cfg)
    return None, "unknown (no config.json)"


def needs(recipe: Recipe, gpus: int) -> dict:
    """Estimated parameters, model-state memory per GPU for SFT/DPO under the recipe's ZeRO
    stage, and pipeline disk (peak checkpoints + the six exports)."""
    from .train.arguments import deepspeed_config, zero_stage

    shape, source = model_shape(recipe)
    out: dict = {"shape_from": source, "parameters": None}
    if shape is None:
        return out
    n = parameters_of_shape(shape)
    out["parameters"] = n
    half = recipe.sft.precision != "fp32"
    weights = 2 if half else 4
    states = 16 if half else 12  # weights (+ fp32 master) + Adam m and v
    for stage in ("sft", "dpo"):
        cfg = getattr(recipe, stage)
        z = zero_stage(deepspeed_config(cfg)) if cfg.deepspeed else 0
        total = states + weights  # + the 16-bit (or fp32) gradients
        # what each ZeRO stage keeps whole on every GPU: nothing; the weights; weights and grads
        whole = {3: 0, 2: weights, 1: 2 * weights}.get(min(z, 3), total)
        per_gpu = n * whole + n * (total - whole) / gpus
        if stage == "dpo" and recipe.dpo.reference == "live":
            per_gpu += n * weights / (gpus if z >= 3 else 1)
        out[f"{stage}_model_states_gb_per_gpu"] = per_gpu / GB
        out[f"{stage}_zero_stage"] = z
    checkpoint = n * states
    keep = max(recipe.sft.save_total_limit, recipe.dpo.save_total_limit)
    exports = 2 * len(ROLES) * n * weights  # SFT and DPO model of each role
    out["checkpoint_gb"] = checkpoint / GB
    # the three roles may train side by side (Slurm), each keeping save_total_limit checkpoints
    out["pipeline_disk_gb"] = (exports + len(ROLES) * keep * checkpoint) / GB
    out["pipeline_disk_gb_kept"] = (exports + 2 * len(ROLES) * keep * checkpoint) / GB
    return out
