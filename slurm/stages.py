#!/usr/bin/env python3
"""The pipeline's stages as Slurm jobs see them: a thin shell-facing view of `esc_dist.pipeline`.

The Slurm templates and `submit_pipeline.sh` never spell out a stage command themselves: they ask
this helper, which reads `esc_dist.pipeline.plan`, so the jobs run exactly the commands, outputs
and up-to-date checks of `esc-dist pipeline` (a stage finished by a Slurm job is "up to date" for a
later local `esc-dist pipeline` run, and the other way round).

    stages.py init   [RECIPE.yaml] [key=value ...] [--dry-run]
                                                          write RUN/recipe.yaml, print RUN
    stages.py show   STAGE [RECIPE.yaml] [key=value ...]  shell assignments describing STAGE
    stages.py start  STAGE [RECIPE.yaml] [key=value ...]  clear outputs left for other inputs
    stages.py done   STAGE [RECIPE.yaml] [key=value ...] [--seconds S]
                                                          check STAGE's output, record it as done
    stages.py jobs   [RECIPE.yaml] [key=value ...] [--force]
                                                          the jobs `submit_pipeline.sh` submits
    stages.py status [RECIPE.yaml] [key=value ...]        exit 0 when every stage is up to date

RECIPE defaults to the built-in tiny recipe, as for every `esc-dist` command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # usable from a checkout without an installed package
    sys.path.insert(1, str(ROOT))

from esc_dist.cli import split_overrides  # noqa: E402
from esc_dist.config import ConfigError, Recipe, dump_recipe, load_recipe  # noqa: E402
from esc_dist.io import atomic_write_text  # noqa: E402
from esc_dist import pipeline  # noqa: E402

TRAINING = ("sft", "dpo")  # stages that checkpoint on SIGUSR1 and resume from the checkpoint


def load(words: list[str]) -> Recipe:
    """The recipe named by ``[RECIPE.yaml] [section.key=value ...]``."""
    rest, overrides = split_overrides(words)
    path = None
    if rest and rest[0].endswith((".yaml", ".yml")):
        path = rest.pop(0)
    if rest:
        raise ConfigError(f"expected [RECIPE.yaml] [section.key=value ...], got {rest}")
    return pipeline.resolve(load_recipe(path, overrides))


def recipe_file(recipe: Recipe) -> Path:
    return Path(recipe.run.output_dir) / "recipe.yaml"


def write_recipe(recipe: Recipe) -> Path:
    """What `esc-dist pipeline` does first: the resolved recipe every stage command reads."""
    path = recipe_file(recipe)
    atomic_write_text(path, dump_recipe(recipe))
    return path


def find_stage(recipe: Recipe, name: str) -> pipeline.Stage:
    stages = pipeline.plan(recipe)
    for s in stages:
        if s.name == name:
            return s
    raise SystemExit(f"stages.py: unknown stage {name!r}; the stages of this recipe are "
                     f"{', '.join(s.name for s in stages)}")


def stage_command(recipe: Recipe, stage: pipeline.Stage) -> list[str]:
    """The `esc-dist` arguments of a stage, exactly as `esc-dist pipeline` runs them."""
    return list(stage.args) + ["--config", str(recipe_file(recipe))]


def is_current(recipe: Recipe, stage: pipeline.Stage) -> bool:
    return pipeline.is_current(stage, pipeline.stage_key(stage, recipe))


# ---------------------------------------------------------------------------------------------
# Jobs of a whole pipeline


@dataclass
class Job:
    name: str
    template: str  # slurm/<template>.sbatch
    env: dict[str, str]
    stages: list[str] = field(default_factory=list)
    deps: set[str] = field(default_factory=set)


def job_of(stage: pipeline.Stage) -> tuple[str, str, dict[str, str]]:
    """(job name, template, environment) of the job that runs ``stage``."""
    name = stage.name
    kind, _, rest = name.partition("-")
    if name in ("prepare", "tiny-model"):
        return "prepare", "single", {}
    if kind in TRAINING and stage.distributed:
        return name, "train", {"STAGE": kind, "ROLE": rest}
    if kind == "mine" and stage.distributed:
        return name, "mine", {"ROLE": rest}
    if kind in ("infer", "eval") and rest in pipeline.SYSTEMS:
        return f"infer-{rest}", "infer_eval", {"SYSTEM": rest}
    # anything else (judge, compare, stages added later): one job per stage
    return name, ("stage" if stage.distributed else "single"), {}


def pipeline_jobs(recipe: Recipe) -> list[Job]:
    stages = pipeline.plan(recipe)
    jobs: dict[str, Job] = {}
    producer: dict[Path, str] = {}
    for s in stages:
        name, template, env = job_of(s)
        job = jobs.setdefault(name, Job(name, template, env))
        job.stages.append(s.name)
        job.deps |= {producer[p] for p in s.inputs if p in producer} - {name}
        producer[s.out] = name
    for job in jobs.values():
        if job.template in ("single", "stage"):
            job.env = {"STAGE": ",".join(job.stages)}
    return list(jobs.values())


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_init(words: list[str], dry: bool) -> int:
    recipe = load(words)
    if not dry:
        write_recipe(recipe)
    print(Path(recipe.run.output_dir))
    return 0


def cmd_show(name: str, words: list[str]) -> int:
    recipe = load(words)
    stage = find_stage(recipe, name)
    kind = stage.args[0]
    values = {
        "ESC_STAGE_DISTRIBUTED": str(int(stage.distributed)),
        "ESC_STAGE_CURRENT": str(int(is_current(recipe, stage))),
        # training checkpoints on SIGUSR1; other stages restart (mining and inference resume
        # from their chunk files)
        "ESC_STAGE_PREEMPT": "checkpoint" if kind in TRAINING else "restart",
        "ESC_STAGE_OUT": str(stage.out),
        "ESC_RUN_DIR": str(recipe.run.output_dir),
    }
    for k, v in values.items():
        print(f"{k}={shlex.quote(v)}")
    print("ESC_STAGE_ARGS=(" + " ".join(shlex.quote(a) for a in stage_command(recipe, stage))
          + ")")
    return 0


def cmd_start(name: str, words: list[str]) -> int:
    """Before a stage runs: clear what it left for other inputs, as `esc-dist pipeline` does."""
    recipe = load(words)
    stage = find_stage(recipe, name)
    pipeline.clear_stale(stage, pipeline.stage_key(stage, recipe), Path(recipe.run.output_dir))
    return 0


def cmd_done(name: str, words: list[str], seconds: float | None) -> int:
    """Record a stage as finished the way `esc-dist pipeline` does (its ``pipeline.json``)."""
    recipe = load(words)
    stage = find_stage(recipe, name)
    marker = pipeline.done_marker(stage.out)
    if not marker.is_file():
        print(f"stages.py: stage {name} exited 0 but {stage.out} is not complete "
              f"(no {marker.name})", file=sys.stderr)
        return 1
    pipeline.mark_current(stage, pipeline.stage_key(stage, recipe), seconds)
    return 0


def cmd_jobs(words: list[str], force: bool) -> int:
    """One tab-separated line per job to submit, in dependency order:
    JOB, Slurm job name, TEMPLATE, VAR=value words, dependencies (JOBs, comma-separated), stages
    ("-" for an empty field).

    A job is left out when all its stages are up to date and none of the jobs it depends on is
    submitted (a rerun upstream changes the inputs, so its stages would no longer be current).
    """
    recipe = load(words)
    stages = {s.name: s for s in pipeline.plan(recipe)}
    submitted: set[str] = set()
    for job in pipeline_jobs(recipe):
        deps = job.deps & submitted
        current = not force and all(is_current(recipe, stages[s]) for s in job.stages)
        if current and not deps:
            print(f"up to date: {job.name} ({', '.join(job.stages)})", file=sys.stderr)
            continue
        submitted.add(job.name)
        env = " ".join(f"{k}={v}" for k, v in job.env.items())
        print("\t".join([job.name, f"{recipe.run.name}-{job.name}", job.template, env or "-",
                         ",".join(sorted(deps)) or "-",
                         ",".join(job.stages)]))
    return 0


def cmd_status(words: list[str]) -> int:
    recipe = load(words)
    stale = [s.name for s in pipeline.plan(recipe) if not is_current(recipe, s)]
    if stale:
        print(f"not finished: {', '.join(stale)}", file=sys.stderr)
        return 1
    print(f"every stage is finished; comparison: "
          f"{Path(recipe.run.output_dir) / 'reports' / 'comparison' / 'comparison.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="slurm/stages.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["init", "show", "start", "done", "jobs", "status"])
    p.add_argument("--seconds", type=float, help="(done) how long the stage ran")
    p.add_argument("--force", action="store_true", help="(jobs) submit every job")
    p.add_argument("--dry-run", action="store_true", help="(init) print RUN, write nothing")
    args, words = p.parse_known_args(argv)
    try:
        if args.command in ("show", "start", "done"):
            if not words or "=" in words[0] or words[0].endswith((".yaml", ".yml")):
                p.error(f"{args.command} needs a stage name first")
            name, words = words[0], words[1:]
            if args.command == "done":
                return cmd_done(name, words, args.seconds)
            return (cmd_show if args.command == "show" else cmd_start)(name, words)
        return {"init": lambda: cmd_init(words, args.dry_run),
                "jobs": lambda: cmd_jobs(words, args.force),
                "status": lambda: cmd_status(words)}[args.command]()
    except ConfigError as e:
        print(f"stages.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
