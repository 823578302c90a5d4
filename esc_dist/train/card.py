"""The model card (``README.md``) written into every exported model directory.

What a reader of an exported model (or of a Hub upload) needs: what it is (role, stage, the
model it started from and, for a Hub base, its revision), what it was trained on (ESConv and
its CC BY-NC 4.0 licence, the split, the preference pairs), how (the recipe's training
settings, world size), what the run measured (steps, final loss, DPO's reward accuracy, the
planner guard's exported step), and where its evaluation is written. Built from the stage's
manifest only, so the card and the manifest cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

from ..constants import SYSTEMS

ROLE_TEXT = {
    "planner": "picks the next ESConv support strategy (one of 8) for a supporter turn",
    "generator": "writes the supporter's reply for a given support strategy",
    "vanilla": 'writes "[Strategy] reply": the strategy and the reply in one output',
}
DATA_LICENCE = (
    "ESConv (Liu et al., 2021) is licensed CC BY-NC 4.0: this model was trained on "
    "it, so use it for non-commercial research only and credit the dataset."
)


def _started_from(manifest: dict) -> str:
    model = manifest.get("inputs", {}).get("model", {})
    hub = model.get("hub")
    if hub:
        return f"`{hub['repo_id']}` at revision `{hub['revision']}` (Hugging Face Hub)"
    return f"`{model.get('path', manifest.get('base_model'))}`"


def _systems(role: str, stage: str) -> list[str]:
    out = []
    for name, (kind, model_stage) in SYSTEMS.items():
        if model_stage == stage and (kind == "vanilla") == (role == "vanilla"):
            out.append(name)
    return out


def model_card(manifest: dict) -> str:
    stage, role = manifest["stage"], manifest["role"]
    train = manifest.get("config", {}).get("train", {})
    run = manifest.get("config", {}).get("run", {})
    keys = (
        "learning_rate",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "max_length",
        "precision",
        "deepspeed",
    )
    if stage == "dpo":
        keys += ("beta", "loss_type", "sft_weight", "reference")
    metrics = [
        f"- steps: {manifest.get('global_step')}",
        f"- final training loss: {manifest.get('final_loss')}",
    ]
    if stage == "dpo":
        metrics.append(f"- final reward accuracy: {manifest.get('final_reward_accuracy')}")
        guard = manifest.get("guard") or {}
        if guard.get("best"):
            b = guard["best"]
            metrics.append(
                f"- exported step (validation guard: lowest validation B within "
                f"{guard.get('q_tolerance_points')} point(s) of the SFT model's Q): "
                f"{b['step']} (B {b['B']:.3f}, Q {100 * b['Q']:.1f})"
            )
    data = manifest.get("inputs", {}).get("data") or manifest.get("inputs", {}).get("pairs", {})
    systems = _systems(role, stage)
    hub = manifest.get("inputs", {}).get("model", {}).get("hub")
    return "\n".join(
        [
            "---",
            "license: other",
            "license_name: esconv-cc-by-nc-4.0-and-base-model-licence",
            *([f"base_model: {hub['repo_id']}"] if hub else []),
            "tags: [esc-dist, emotional-support, esconv, "
            + ("dpo" if stage == "dpo" else "sft")
            + "]",
            "---",
            "",
            f"# {run.get('name', 'esc-dist')}: {role}, {stage.upper()}",
            "",
            f"The **{role}** of an esc-dist run: it {ROLE_TEXT.get(role, role)}. Trained "
            f"full-parameter with {stage.upper()} from {_started_from(manifest)} by esc-dist "
            f"{manifest.get('esc_dist_version')} "
            f"(commit {manifest.get('git_commit') or 'unknown'}) "
            f"on {manifest.get('world_size')} rank(s).",
            "",
            "## Data",
            "",
            f"- {'preference pairs (IPM)' if stage == 'dpo' else 'supervised turns'}: "
            f"`{data.get('path')}` (manifest sha256 `{str(data.get('sha256'))[:16]}`)",
            f"- {DATA_LICENCE}",
            "",
            "## Training settings",
            "",
            *[f"- {k}: {train.get(k)}" for k in keys if k in train],
            f"- seed: {run.get('seed')}",
            "",
            "## Training metrics",
            "",
            *metrics,
            "",
            "## Evaluation",
            "",
            (
                "Evaluated as "
                + ", ".join(f"`{s}`" for s in systems)
                + " by the run's eval stages: "
                "`reports/SYSTEM/report.md` in the run directory."
                if systems
                else "Not evaluated as a system of its own."
            ),
            "",
            "Full provenance (inputs, configuration, outputs with their hashes): `manifest.json`.",
            "",
        ]
    )


def write_model_card(directory: Path, manifest: dict) -> None:
    (Path(directory) / "README.md").write_text(model_card(manifest), encoding="utf-8")
