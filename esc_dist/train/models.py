"""Models: loading the tokenizer and the policy to train (ZeRO-3 aware), and exporting the trained
model as one plain HF directory with its manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import dist
from ..config import Recipe, TrainConfig
from ..io import directory_outputs, mark_completed, write_manifest
from ..models.loading import load_causal_lm
from ..outputs import staged_dir
from .card import write_model_card
from .common import StagePaths


def load_policy(path: str, recipe: Recipe, cfg: TrainConfig):
    """Load the model to train. Call *after* the trainer config exists: its live DeepSpeed config
    makes ``from_pretrained`` build the model already partitioned under ZeRO-3."""
    dtype = dist.torch_dtype(cfg.precision)
    model = load_causal_lm(
        path, dtype, recipe.model.trust_remote_code, recipe.model.attn_implementation
    )
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora.target_modules
        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=targets[0] if targets == ["all-linear"] else targets,
                task_type="CAUSAL_LM",
            ),
        )
    return model


def export_model(
    trainer, tokenizer, paths: StagePaths, manifest: dict, weights: Path | None = None
) -> None:
    """Save one HF directory (safetensors, config, tokenizer, generation config, manifest) at
    ``paths.export``, saved first inside the stage's work directory.

    Under ZeRO-3 every rank takes part in gathering the weights; rank 0 writes. LoRA adapters
    are merged so that the export loads with plain ``from_pretrained``. ``weights``: a directory
    that ``trainer.save_model`` wrote earlier in the run, exported instead of the last weights.
    """
    out, tmp = paths.export, paths.work / "export.saving"
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    if weights is None:
        trainer.save_model(str(tmp))  # collective under ZeRO-3
    elif dist.is_main():
        shutil.copytree(weights, tmp)
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
        write_model_card(tmp, manifest)
        manifest["outputs"] = directory_outputs(tmp)
        write_manifest(tmp, manifest)
        mark_completed(tmp)
        with staged_dir(out, manifest["stage"]) as stage:
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
