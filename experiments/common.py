"""What the study drivers share: their results file, launching one esc-dist stage, the
stage times of a run, means over seeds, and the declaration of a study."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.report import ROOT
from benchmarks.report import write_section as _write_section
from esc_dist.config import load_recipe
from esc_dist.dist import free_port
from esc_dist.io import read_json
from esc_dist.pipeline import launcher_cmd, needed_stages, plan, plan_reusing, resolve

RESULTS_MD = ROOT / "experiments" / "RESULTS.md"  # every study's section and its reading
RESULTS = ROOT / "experiments" / "results"  # the committed result files they render from


@dataclass(frozen=True)
class Study:
    """A study, declared: the recipe, the seeds (``run.seed``; one run directory each), the
    pipeline stages each seed runs (None: all), and the variants run on a seed's run as
    overrides that reuse every stage they do not change (``esc-dist pipeline --reuse``)."""

    recipe: Path
    seeds: tuple[int, ...]
    stages: tuple[str, ...] | None = None
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)


def write_section(text: str, start: str, end: str, path: Path = RESULTS_MD) -> None:
    """Replace a study's marked section of ``experiments/RESULTS.md`` (or ``path``)."""
    _write_section(text, start, end, path)


def run_pipeline(
    config: Path, overrides: list[str], only: tuple[str, ...] = (), reuse: Path | None = None
) -> None:
    """``esc-dist pipeline`` of ``config`` with ``overrides`` (``only`` these stages; ``reuse``:
    the run this one is a variant of), its output on this terminal; stops the study on failure
    (the failing stage's log is named)."""
    cmd = [sys.executable, "-m", "esc_dist", "pipeline", "--config", str(config)]
    cmd += ["--only", ",".join(only)] if only else []
    cmd += ["--reuse", str(reuse)] if reuse else []
    print(" ".join(cmd[3:] + overrides), flush=True)
    if subprocess.run(cmd + overrides, cwd=ROOT).returncode != 0:
        raise SystemExit(f"the pipeline failed ({' '.join(overrides)}); see its stage log")


def run_reusing(
    config: Path, overrides: list[str], base: Path, targets: tuple[str, ...] = ()
) -> dict[str, Path]:
    """A variant of the run in ``base``: ``esc-dist pipeline --reuse base`` of ``config`` with
    ``overrides`` (its own ``run.output_dir`` among them), through the stages ``targets`` need
    (``pipeline.needed_stages``; none given: every stage; nothing runs when ``base`` holds them
    all). Returns each stage's output directory, in ``base`` for the stages it reused."""
    stages, reused = plan_reusing(resolve(load_recipe(config, overrides)), base)
    if not targets:
        run_pipeline(config, overrides, reuse=base)
    elif only := needed_stages(stages, reused, targets):
        run_pipeline(config, overrides, only=only, reuse=base)
    return {st.name: st.out for st in stages}


def launch(recipe, args: list[str], log: Path) -> None:
    """One esc-dist command on the recipe's launcher and ranks, its output added to ``log``
    (a command run again, to resume or to find its output complete, keeps the earlier log)."""
    cmd = launcher_cmd(recipe.pipeline.launcher, recipe.pipeline.nproc, free_port()) + args
    with open(log, "a") as f:
        r = subprocess.run(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed; log: {log}")


def stage_seconds(recipe) -> dict:
    """Each finished stage's seconds, as the pipeline recorded them."""
    out = {}
    for stage in plan(recipe):
        state = Path(stage.out) / "pipeline.json"
        if state.is_file():
            out[stage.name] = read_json(state).get("seconds")
    return out


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for one value) of the values given."""
    import numpy as np

    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)
