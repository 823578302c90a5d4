"""The run layout: where each output of a run lives, under ``run.output_dir``.

The one definition. The pipeline's plan, every command's defaults (``--data``, ``--model``,
``--out`` left out), chat and the demo, ``esc-dist stage out`` (the Slurm templates and launch
scripts) and the studies all ask a :class:`RunLayout`; no other module spells a path inside a
run directory (``tests/unit/test_structure.py`` checks)::

    RUN/recipe.yaml                    the resolved recipe every stage reads
    RUN/data/                          prepare
    RUN/models/tiny|base/              the base model (tiny-model, or base-model from a GGUF)
    RUN/models/{sft,dpo}-{role}/       training, one export per stage and role
    RUN/models/{sft,dpo}-{role}.work/  its checkpoints, W&B files and tokenized data
    RUN/ipm/mine-{role}/               mining (pairs.jsonl)
    RUN/prefdial/{role}/               the judged (or mismatch) preference pairs
    RUN/predictions/{system}/          inference
    RUN/reports/{system}/              eval; RUN/reports/comparison/: compare
    RUN/logs/{stage}.log               the pipeline's log of each stage
    RUN/logs/slurm/                    the Slurm jobs' logs (slurm/submit_pipeline.sh)
    RUN/.pipeline/{stage}.json         the key of a stage's attempt in progress
    RUN/extra/{name}/                  a study's own variants (``work_dir``)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGES = ("sft", "dpo")


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def of(cls, recipe) -> RunLayout:
        """The layout of a recipe's run directory (``run.output_dir``)."""
        return cls(Path(recipe.run.output_dir))

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def tiny(self) -> Path:
        """The from-scratch tiny model (recipes without ``model.base``)."""
        return self.models / "tiny"

    @property
    def base(self) -> Path:
        """The base model converted from a GGUF ``model.base``."""
        return self.models / "base"

    def model(self, stage: str, role: str) -> Path:
        """A trained model: ``stage`` sft or dpo, ``role`` planner, generator or vanilla."""
        if stage not in STAGES:
            raise ValueError(f"no trained model of stage {stage!r}")
        return self.models / f"{stage}-{role}"

    def mined(self, role: str) -> Path:
        return self.root / "ipm" / f"mine-{role}"

    def pairs(self, role: str) -> Path:
        """The preference pairs DPO trains on (the judge stage's output)."""
        return self.root / "prefdial" / role

    def predictions(self, system: str) -> Path:
        return self.root / "predictions" / system

    def report(self, system: str) -> Path:
        return self.root / "reports" / system

    @property
    def comparison(self) -> Path:
        return self.root / "reports" / "comparison"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, stage: str) -> Path:
        return self.logs / f"{stage}.log"

    @property
    def slurm_logs(self) -> Path:
        return self.logs / "slurm"

    def place(self, name: str) -> Path | None:
        """A place that is not one stage's output, by name (``esc-dist stage out``)."""
        places = {
            "run": self.root,
            "recipe": self.recipe,
            "logs": self.logs,
            "slurm-logs": self.slurm_logs,
        }
        return places.get(name)

    def attempt(self, stage: str) -> Path:
        """The key of a stage's attempt in progress (cleared outputs of another key go first)."""
        return self.root / ".pipeline" / f"{stage}.json"


def training_work(export: Path) -> Path:
    """A training stage's work directory beside its export: checkpoints, W&B files, tokens."""
    return export.with_name(export.name + ".work")


def work_dir(root: Path, name: str) -> Path:
    """A study's own directory beside a run's layout (variants a run does not make)."""
    return Path(root) / "extra" / name
