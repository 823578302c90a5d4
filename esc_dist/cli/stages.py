"""`esc-dist pipeline` (every stage of a recipe) and `esc-dist stage` (one stage at a time, as the
Slurm templates and the launch scripts drive it, with the pipeline's commands, outputs and
up-to-date checks: a stage finished one way is up to date for the others)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..config import Recipe
from ..errors import ConfigError
from ..layout import RunLayout
from .common import Command, recipe_of, split_overrides


def run_pipeline_cmd(args: argparse.Namespace) -> int:
    from ..pipeline import run_pipeline

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    if args.dry_run:
        return dry_run(args)
    run_pipeline(recipe_of(args), only=only, force=args.force, reuse=args.reuse)
    return 0


def dry_run(args: argparse.Namespace) -> int:
    """The stages and whether each would run, the Slurm jobs `slurm/submit_pipeline.sh` would
    submit (its own --dry-run output), and the estimates of memory per GPU and disk. Writes
    nothing; needs no GPU."""
    import subprocess

    from .. import pipeline
    from ..estimates import needs

    recipe = pipeline.resolve(recipe_of(args))
    if args.reuse:
        stages, reused = pipeline.plan_reusing(recipe, args.reuse)
    else:
        stages, reused = pipeline.plan(recipe), set()
    print(f"run directory: {recipe.run.output_dir}")
    for i, st in enumerate(stages, 1):
        key = pipeline.stage_key(st, recipe)
        if st.name in reused:
            state = "reused"
        elif not args.force and pipeline.is_current(st, key):
            state = "up to date"
        else:
            state = "to run"
        where = (
            f"{recipe.pipeline.nproc} ranks ({recipe.pipeline.launcher})"
            if st.distributed
            else "1 process"
        )
        print(
            f"[{i:2d}/{len(stages)}] {st.name:<22} {state:<10} {where:<22} "
            f"esc-dist {' '.join(shlex.quote(a) for a in st.args)}"
        )
    gpus = recipe.pipeline.nproc
    est = needs(recipe, gpus)
    print(
        f"\nestimates (model shape from {est['shape_from']}; model states only, "
        "activations and buffers come on top):"
    )
    if est["parameters"] is None:
        print("  parameters: unknown; memory per GPU: unknown; disk: unknown")
    else:
        print(f"  parameters: {est['parameters'] / 1e9:.2f} B")
        for stage in ("sft", "dpo"):
            print(
                f"  {stage}: ZeRO-{est[f'{stage}_zero_stage']} over {gpus} GPUs: "
                f"{est[f'{stage}_model_states_gb_per_gpu']:.1f} GB of model states per GPU"
            )
        print(
            f"  one checkpoint with optimizer states: {est['checkpoint_gb']:.0f} GB; the "
            f"pipeline's disk: about {est['pipeline_disk_gb']:.0f} GB at its peak "
            f"({est['pipeline_disk_gb_kept']:.0f} GB with keep_checkpoints: true)"
        )
    root = Path(__file__).resolve().parents[2]
    script = root / "slurm" / "submit_pipeline.sh"
    if script.is_file():
        print("\nSlurm jobs (slurm/submit_pipeline.sh --dry-run):", flush=True)
        r = subprocess.run(
            [
                "bash",
                str(script),
                "--dry-run",
                *([args.config] if args.config else []),
                *args.overrides,
            ],
            cwd=Path.cwd(),
            capture_output=True,
            text=True,
        )
        print(r.stdout.rstrip() or r.stderr.rstrip())
    return 0


def pipeline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", metavar="STAGE,...", help="run only these stages (e.g. sft-planner)")
    p.add_argument("--force", action="store_true", help="rerun stages even when up to date")
    p.add_argument(
        "--reuse",
        metavar="RUN",
        help="a finished run this recipe is a variant of: stages whose inputs and settings "
        "are unchanged are read from RUN instead of run again (the variant's own stages run "
        "into run.output_dir)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the stages, the Slurm jobs "
        "and the memory and disk estimates; run and write nothing",
    )


def run_doctor(args: argparse.Namespace) -> int:
    from ..doctor import run_checks

    checks = run_checks(recipe_of(args))
    for c in checks:
        print(f"{c.status:<5} {c.name:<10} {c.detail}")
    failed = [c.name for c in checks if c.status == "error"]
    if failed:
        raise ConfigError(f"{len(failed)} check(s) failed: {', '.join(failed)} (see above)")
    return 0


ACTIONS = ("init", "show", "out", "start", "done", "run", "jobs", "status")
NAMED = ("show", "out", "start", "done", "run")  # actions on one stage


def _recipe(args: argparse.Namespace) -> Recipe:
    """The recipe of ``[RECIPE.yaml]`` (or ``--config``) and the overrides, resolved as the
    pipeline resolves it."""
    from ..pipeline import resolve

    words, more = split_overrides(list(args.words))
    path = args.config
    if words and words[0].endswith((".yaml", ".yml")):
        if path is not None:
            raise ConfigError(f"give the recipe once: --config {path} or {words[0]}")
        path = words.pop(0)
    if words:
        raise ConfigError(
            f"unexpected argument(s) {' '.join(words)}; expected "
            "[RECIPE.yaml] [section.key=value ...]"
        )
    args.config, args.overrides = path, list(args.overrides) + more
    return resolve(recipe_of(args))


def _show(recipe: Recipe, name: str) -> None:
    from .. import pipeline

    i, stage = pipeline.find_stage(recipe, name)
    values = {
        "ESC_STAGE_DISTRIBUTED": str(int(stage.distributed)),
        "ESC_STAGE_CURRENT": str(
            int(pipeline.is_current(stage, pipeline.stage_key(stage, recipe)))
        ),
        # training checkpoints on SIGUSR1; other stages restart (mining and inference resume
        # from their chunk files)
        "ESC_STAGE_PREEMPT": "checkpoint" if stage.args[0] in pipeline.TRAINING else "restart",
        "ESC_STAGE_OUT": str(stage.out),
        "ESC_RUN_DIR": str(recipe.run.output_dir),
    }
    for k, v in values.items():
        print(f"{k}={shlex.quote(v)}")
    args = stage.args + ["--config", str(pipeline.recipe_file(recipe))]
    print("ESC_STAGE_ARGS=(" + " ".join(shlex.quote(a) for a in args) + ")")


def _jobs(recipe: Recipe, force: bool) -> None:
    """One tab-separated line per job to submit, in dependency order: JOB, Slurm job name,
    TEMPLATE, VAR=value words, dependencies (JOBs, comma-separated), stages ("-" for an empty
    field), the sbatch options the recipe sets (the signal lead time). A job is left out when
    all its stages are up to date and none of the jobs it depends on is submitted (a rerun
    upstream changes the inputs, so its stages would be stale)."""
    from .. import pipeline

    stages = {s.name: s for s in pipeline.plan(recipe)}
    submitted: set[str] = set()
    for job in pipeline.slurm_jobs(recipe):
        deps = job.deps & submitted
        current = not force and all(
            pipeline.is_current(stages[s], pipeline.stage_key(stages[s], recipe))
            for s in job.stages
        )
        if current and not deps:
            print(f"up to date: {job.name} ({', '.join(job.stages)})", file=sys.stderr)
            continue
        submitted.add(job.name)
        env = " ".join(f"{k}={v}" for k, v in job.env.items())
        print(
            "\t".join(
                [
                    job.name,
                    f"{recipe.run.name}-{job.name}",
                    job.template,
                    env or "-",
                    ",".join(sorted(deps)) or "-",
                    ",".join(job.stages),
                    f"--signal=B:USR1@{recipe.pipeline.signal_lead_s}",
                ]
            )
        )


def run_stage_cmd(args: argparse.Namespace) -> int:
    from .. import pipeline

    if args.action in NAMED:
        if not args.words or "=" in args.words[0] or args.words[0].endswith((".yaml", ".yml")):
            raise ConfigError(f"stage {args.action} needs a stage name first")
        name, args.words = args.words[0], args.words[1:]
    recipe = _recipe(args)
    if args.action == "init":
        if not args.dry_run:
            pipeline.write_recipe(recipe)
        print(Path(recipe.run.output_dir))
    elif args.action == "show":
        _show(recipe, name)
    elif args.action == "out":  # where a stage writes: scripts ask instead of spelling paths
        place = RunLayout.of(recipe).place(name)
        print(place if place is not None else pipeline.find_stage(recipe, name)[1].out)
    elif args.action == "start":
        _, stage = pipeline.find_stage(recipe, name)
        pipeline.clear_stale(stage, pipeline.stage_key(stage, recipe), RunLayout.of(recipe))
    elif args.action == "done":
        _, stage = pipeline.find_stage(recipe, name)
        marker = pipeline.done_marker(stage.out)
        if not marker.is_file():
            raise ConfigError(
                f"stage {name} exited 0 but {stage.out} is not complete (no {marker.name})"
            )
        pipeline.mark_current(stage, pipeline.stage_key(stage, recipe), args.seconds)
    elif args.action == "run":
        i, stage = pipeline.find_stage(recipe, name)
        key = pipeline.stage_key(stage, recipe)
        if not args.force and pipeline.is_current(stage, key):
            print(
                f"{name} is up to date ({stage.out}); --force (FORCE=1 for the launch "
                "scripts) runs it again"
            )
            return 0
        pipeline.write_recipe(recipe)
        seconds = pipeline.run_stage(recipe, stage, i, key)
        print(f"{name}: done in {seconds:.0f}s ({stage.out})")
    elif args.action == "jobs":
        _jobs(recipe, args.force)
    else:  # status
        stale = [
            s.name
            for s in pipeline.plan(recipe)
            if not pipeline.is_current(s, pipeline.stage_key(s, recipe))
        ]
        if stale:
            print(f"not finished: {', '.join(stale)}", file=sys.stderr)
            return 1
        comparison = RunLayout.of(recipe).comparison / "comparison.md"
        print(f"every stage is finished; comparison: {comparison}")
    return 0


def stage_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("action", choices=ACTIONS)
    p.add_argument(
        "words",
        nargs="*",
        metavar="[STAGE] [RECIPE.yaml]",
        help="the stage (show, out, start, done, run), then optionally the recipe",
    )
    p.add_argument("--seconds", type=float, help="(done) how long the stage ran")
    p.add_argument(
        "--force",
        action="store_true",
        help="(jobs) submit every job; (run) run even when up to date",
    )
    p.add_argument("--dry-run", action="store_true", help="(init) print RUN, write nothing")


STAGE_HELP = """\
One stage of the pipeline at a time, exactly as `esc-dist pipeline` runs it.

  init   [RECIPE]           write RUN/recipe.yaml (the resolved recipe), print RUN
  show   STAGE [RECIPE]     shell assignments describing STAGE (ESC_STAGE_ARGS, ...)
  out    STAGE [RECIPE]     print the directory STAGE writes, or a place of the run
                            layout: run, recipe, logs, slurm-logs
  start  STAGE [RECIPE]     clear what STAGE left for other inputs or settings
  done   STAGE [RECIPE]     check STAGE's output is complete, record it as up to date
  run    STAGE [RECIPE]     start + run it with pipeline.launcher on pipeline.nproc ranks + done
  jobs   [RECIPE]           the Slurm jobs slurm/submit_pipeline.sh submits (tab-separated)
  status [RECIPE]           exit 0 when every stage is up to date

RECIPE is a YAML file (or --config); the built-in tiny recipe by default."""

COMMANDS = [
    Command(
        "pipeline",
        run_pipeline_cmd,
        "run every stage of a recipe, skipping finished ones",
        "prepare -> tiny model (or a GGUF base converted) -> SFT x3 -> mine x3 -> judge x3 "
        "-> DPO x3 -> infer (Vanilla-SFT/DPO, Decoupled-SFT/DPO) -> eval x4 -> compare, "
        "into run.output_dir; "
        "training, mining and inference on pipeline.nproc ranks with pipeline.launcher. "
        "A stage whose output is complete and whose inputs and settings are unchanged is "
        "skipped; a failed stage stops the run and names its log.",
        pipeline_arguments,
    ),
    Command(
        "doctor",
        run_doctor,
        "check this node for a recipe's run (GPUs, versions, disk)",
        "What a cluster user runs first: package versions, the GPUs the driver lists "
        "against those torch sees (a CPU torch on a GPU node is an error), bf16, the "
        "attention backend, whether the recipe's model is in the Hugging Face cache, free "
        "disk at run.output_dir against the pipeline's estimated need, the W&B mode. Exit "
        "status 2 when a check fails.",
        lambda p: None,
    ),
    Command(
        "stage",
        run_stage_cmd,
        "one pipeline stage: show, start, done, run (for Slurm jobs and launch scripts)",
        STAGE_HELP,
        stage_arguments,
    ),
]
