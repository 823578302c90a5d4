"""The one runner of the generation stages (mining, inference).

A stage describes itself as a :class:`GenerationStage`: its name and labels (``role``; ``mode`` and
``split``), its inputs (data directory, models by name), its recipe section, its phases (each
one :func:`generate` pass into a chunk directory of the output) and how the merged records
become its own output files. :func:`run_stage` does the rest, the same way for every stage:

1. the job (:func:`build_job`: inputs, the settings the result depends on, and the fingerprint
   of both and of the first phase's items) and the claim of the output directory
   (:func:`claim_output`: a completed output of the same job is returned as is; one of another
   job is an error);
2. the stage's W&B run (:func:`esc_dist.tracking.stage_run`: closed, and marked failed on error);
3. each phase over all ranks, a later phase's items built from the merged records of the one
   before;
4. :func:`finalize` on rank 0 (outputs, manifest, COMPLETED) and the W&B summary; the manifest
   is returned on every rank.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .. import __version__, dist, tracking
from ..config import NEUTRAL_KEYS, Recipe
from ..errors import ConfigError, EscError
from ..hardware import has_cuda
from ..io import mark_completed, model_fingerprint, read_manifest, sha256_json, write_manifest
from ..log import get_logger
from .output import claim_output, finalize_on_main
from .replica import resolve_decode
from .shards import generate, merge, throughput_summary
from .work import EngineConfig, WorkItem, items_fingerprint

log = get_logger(__name__)

# The keys every job has; its other keys are its labels (role; mode and split), in that order.
JOB_KEYS = ("stage", "inputs", "config", "fingerprint")

# (out, job) -> (the manifest's "outputs", its "counts"): merges the chunk files of ``out`` and
# writes the stage's own output files.
WriteOutputs = Callable[[Path, dict], tuple[dict, dict]]


@dataclass
class Phase:
    """One :func:`generate` pass of a stage."""

    label: str  # the log label and seed stream, e.g. "mine-planner"
    model_dir: Path
    chunks: str  # the chunk directory under the output, e.g. "chunks" or "chunks/planner"
    # The items, or how to build them from the previous phase's merged records.
    items: Sequence[WorkItem] | Callable[[list[dict]], Sequence[WorkItem]]
    key: str | None = None  # its statistics' key in the manifest's "generation"; None: the
    # stage's only phase, whose statistics are the whole "generation"


@dataclass
class GenerationStage:
    """What one generation stage run is made of; :func:`run_stage` runs it."""

    name: str  # "mine" | "infer": the job's and the manifest's "stage", the recipe section
    labels: dict[str, Any]  # what names the job: {"role": ...} | {"mode": ..., "split": ...}
    job_type: str  # the W&B job type and the name in logs, e.g. "mine-planner"
    out: Path
    data_dir: Path
    models: dict[str, Path]  # the model inputs by name
    settings: Any  # the recipe section (batch and chunk size, recorded in the job's config)
    phases: list[Phase]
    write_outputs: WriteOutputs
    extra_config: dict[str, Any] = field(default_factory=dict)  # more settings of the result
    wandb_config: dict[str, Any] = field(default_factory=dict)  # beyond the stage and labels
    # (out, manifest, generation) -> the W&B run's summary
    wandb_summary: Callable[[Path, dict, dict], dict] | None = None
    report: Callable[[Path, dict], None] | None = None  # logs the result (rank 0)


@contextmanager
def settings_errors(stage: str) -> Iterator[None]:
    """Raise a ValueError of bad sampling or batch settings as a ConfigError naming the stage
    (the recipe's own checks catch these first; errors of ours pass through as they are)."""
    try:
        yield
    except ValueError as e:
        if isinstance(e, EscError):
            raise
        raise ConfigError(f"{stage}: {e}") from None


def engine_config(recipe: Recipe, settings: Any, stream: str) -> EngineConfig:
    if settings.backend == "hf":  # refused here, before any model loads, on a node without
        resolve_decode(settings.decode, has_cuda())  # what the setting needs
    return EngineConfig(
        batch_size=settings.batch_size,
        chunk_size=settings.chunk_size,
        seed=recipe.run.seed,
        stream=stream,
        trust_remote_code=recipe.model.trust_remote_code,
        attn_implementation=recipe.model.attn_implementation,
        precision=settings.precision,
        decode=settings.decode,
        backend=settings.backend,
        server=asdict(recipe.vllm) if settings.backend == "vllm" else None,
    )


def build_job(recipe: Recipe, stage: GenerationStage) -> dict:
    """The job of ``stage`` (what ``job.json`` records and ``esc-dist merge`` reads)."""
    fps = {name: model_fingerprint(p) for name, p in stage.models.items()}
    settings = {  # keys added later, at their neutral value, keep older outputs' jobs
        k: v
        for k, v in asdict(stage.settings).items()
        if NEUTRAL_KEYS.get((stage.name, k), object()) != v
    }
    config = {
        stage.name: settings,
        "seed": recipe.run.seed,
        **stage.extra_config,
        "model": {
            "trust_remote_code": recipe.model.trust_remote_code,
            "attn_implementation": recipe.model.attn_implementation,
        },
    }
    # A stage whose one model input is named "model" (mining) fingerprints it as "model", any
    # other as "models": the fingerprints of existing outputs depend on it.
    models = {"model": fps["model"]} if list(fps) == ["model"] else {"models": fps}
    return {
        "stage": stage.name,
        **stage.labels,
        "inputs": {
            "data": {
                "path": str(stage.data_dir),
                "sha256": sha256_json(read_manifest(stage.data_dir) or {}),
            },
            **{
                name: {"path": str(p), "fingerprint": fps[name]} for name, p in stage.models.items()
            },
        },
        "config": config,
        # What the result depends on (paths and timings left out: the items carry the data).
        "fingerprint": sha256_json(
            {
                "stage": stage.name,
                **stage.labels,
                **models,
                "config": config,
                "items": items_fingerprint(stage.phases[0].items),
            }
        ),
    }


def run_stage(recipe: Recipe, stage: GenerationStage, t0: float) -> dict:
    """Run ``stage`` over all ranks (every rank calls this, after ``dist.init``) and return its
    manifest; ``t0`` is when the stage started (the manifest's ``seconds``)."""
    with settings_errors(stage.name):
        engines = [engine_config(recipe, stage.settings, p.label) for p in stage.phases]
    job = build_job(recipe, stage)
    out = stage.out
    done = claim_output(out, job, stage.job_type.replace("-", " ", 1))
    if done is not None:
        return done
    config = {"stage": stage.name, **stage.labels, **stage.wandb_config}
    with tracking.stage_run(recipe, stage.job_type, out, config=config) as run:
        generation = run_phases(out, stage.phases, engines, stage.data_dir)

        def write_output() -> dict:
            manifest = finalize(out, job, stage.write_outputs, generation, t0)
            if run is not None and stage.wandb_summary is not None:
                run.summary.update(stage.wandb_summary(out, manifest, generation))
            return manifest

        manifest = finalize_on_main(out, write_output)
    if dist.is_main() and stage.report is not None:
        stage.report(out, manifest)
    return manifest


def run_phases(
    out: Path,
    phases: Sequence[Phase],
    engines: Sequence[EngineConfig],
    data_dir: Path | None = None,
) -> dict:
    """Generate every phase over all ranks; returns the statistics by phase key (the only
    phase's own when its key is None). ``data_dir`` is named when a prompt cannot fit."""
    generation: dict = {}
    for k, (phase, engine) in enumerate(zip(phases, engines)):
        items = phase.items
        if callable(items):  # every rank reads the previous phase (after its barrier)
            items = items(merge(out / phases[k - 1].chunks))
        generation[phase.key] = generate(
            items, phase.model_dir, out / phase.chunks, engine, label=phase.label, source=data_dir
        )
        log.info("%s", throughput_summary(generation[phase.key]))
    return generation[None] if list(generation) == [None] else generation


def generation_summary(prefix: str, stats: dict, keys: Sequence[str]) -> dict:
    """W&B summary entries ``prefix/key`` of one phase's statistics (those that are set)."""
    return {f"{prefix}/{k}": stats[k] for k in keys if stats.get(k) is not None}


def world_size_of(generation: dict) -> int:
    """The world size of a run's statistics: one phase's, or each phase's by key."""
    one = generation if "world_size" in generation else next(iter(generation.values()))
    return one["world_size"]


def finalize(
    out: str | Path,
    job: dict,
    write_outputs: WriteOutputs,
    generation: dict | None = None,
    t0: float | None = None,
) -> dict:
    """Merge and verify the chunk files of ``out``, write the stage's outputs, its manifest and
    COMPLETED.

    At the end of a run (rank 0), ``generation`` is the run's statistics; without it (alone,
    ``esc-dist merge``), the previous manifest's statistics are kept and ``merged_alone`` set.
    """
    out = Path(out)
    outputs, counts = write_outputs(out, job)
    manifest = {
        "stage": job["stage"],
        **{k: v for k, v in job.items() if k not in JOB_KEYS},
        "esc_dist_version": __version__,
        "fingerprint": job["fingerprint"],
        "inputs": job["inputs"],
        "config": job["config"],
        "outputs": outputs,
        "counts": counts,
    }
    if generation is not None:
        manifest["generation"] = generation
        manifest["world_size"] = world_size_of(generation)
    else:
        prev = read_manifest(out) or {}
        manifest["generation"] = prev.get("generation")
        manifest["world_size"] = prev.get("world_size")
        manifest["merged_alone"] = True
    if t0 is not None:
        manifest["seconds"] = round(time.time() - t0, 3)
    write_manifest(out, manifest)
    mark_completed(out)
    return manifest
