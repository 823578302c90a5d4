"""`esc-dist pipeline`: every stage of a run, in order, each launched as its own job.

prepare → tiny model (unless ``model.base``; a GGUF ``model.base`` is converted instead) →
SFT ×3 → mine ×3 → judge ×3 → DPO ×3 → infer (Vanilla-SFT, Vanilla-DPO, Decoupled-SFT,
Decoupled-DPO, with ``eval.generator_gold`` the SFT and DPO generators on gold strategies, with
``eval.zero_shot`` the base model untrained as planner and generator) →
eval of each → compare, into one run directory (``run.output_dir``). Training,
mining and inference run on ``pipeline.nproc`` ranks with ``pipeline.launcher``; the others run
as one process.

The resolved recipe is written to ``RUN/recipe.yaml`` and every stage reads it, so all W&B runs of
the pipeline share one group. A stage is skipped when its output is complete and carries the key
of its inputs: a hash of the recipe sections it reads and of the manifests of the outputs it
consumes (``pipeline.json`` beside its output). A failed stage stops the run and names its log.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .config import Recipe, dump_recipe, key_view
from .constants import GOLD_SYSTEMS, ROLES, SYSTEM_TITLES, SYSTEMS, ZERO_SHOT_SYSTEMS
from .data.tasks import settings_view
from .dist import free_port
from .errors import ConfigError, MissingInput, StageError
from .io import (
    COMPLETED,
    atomic_write_json,
    atomic_write_text,
    read_json,
    sha256_json,
    verify_outputs,
)
from .ipm.judge import judge_version
from .layout import RunLayout, training_work
from .log import get_logger
from .models import hub
from .models.gguf import is_gguf, resolve_gguf
from .outputs import remove_output
from .versions import code_version

log = get_logger(__name__)


@dataclass
class Stage:
    name: str
    args: list[str]  # esc-dist subcommand and its flags
    out: Path  # the directory whose COMPLETED marks it done
    sections: tuple[str, ...]  # recipe sections it reads
    inputs: list[Path] = field(default_factory=list)  # outputs of earlier stages it consumes
    distributed: bool = False
    code: str | None = None  # a version of the stage's own logic (judge rules), part of its key


def evaluated_systems(recipe: Recipe) -> dict[str, tuple[str, str]]:
    """The systems a run infers and evaluates: the four of the paper, the generators on gold
    strategies when ``eval.generator_gold``, the base model untrained when ``eval.zero_shot``."""
    return {
        **SYSTEMS,
        **(GOLD_SYSTEMS if recipe.eval.generator_gold else {}),
        **(ZERO_SHOT_SYSTEMS if recipe.eval.zero_shot else {}),
    }


def plan(recipe: Recipe) -> list[Stage]:
    run = RunLayout.of(recipe)
    data = run.data
    stages = [Stage("prepare", ["prepare", "--out", str(data)], data, ("data",))]
    base = recipe.model.base
    if base is None:
        base_dir = run.tiny
        # the tokenizer learns from the training split only
        stages.append(
            Stage(
                "tiny-model",
                ["tiny-model", "--corpus", str(data), "--out", str(base_dir)],
                base_dir,
                ("tiny_model",),
                [data],
            )
        )
        base_inputs = [base_dir]
    elif is_gguf(base):
        base_dir, source = run.base, resolve_gguf(base)
        stat = source.stat()  # the file's identity is part of the stage's key
        stages.append(
            Stage(
                "base-model",
                ["base-model", "--gguf", base, "--out", str(base_dir)],
                base_dir,
                ("model",),
                code=f"{stat.st_size}:{stat.st_mtime_ns}",
            )
        )
        base_inputs = [base_dir]
    else:  # a directory, or a Hub id's cached snapshot (its commit is in the path: the key)
        try:
            base_dir = Path(hub.model_path(base, recipe.model.revision))
        except MissingInput:  # not downloaded yet: the SFT stages say so when they start
            base_dir = Path(base)
        base_inputs = []
    for role in ROLES:
        stages.append(
            Stage(
                f"sft-{role}",
                [
                    "sft",
                    "--role",
                    role,
                    "--data",
                    str(data),
                    "--model",
                    str(base_dir),
                    "--out",
                    str(run.model("sft", role)),
                ],
                run.model("sft", role),
                ("sft", "model"),
                [data, *base_inputs],
                distributed=True,
            )
        )
    for role in ROLES:
        mined = run.mined(role)
        stages.append(
            Stage(
                f"mine-{role}",
                [
                    "mine",
                    "--role",
                    role,
                    "--data",
                    str(data),
                    "--model",
                    str(run.model("sft", role)),
                    "--out",
                    str(mined),
                ],
                mined,
                ("mine", "model"),
                [data, run.model("sft", role)],
                distributed=True,
            )
        )
    for role in ROLES:
        mined, kept = run.mined(role), run.pairs(role)
        args = ["judge", "--role", role, "--pairs", str(mined / "pairs.jsonl"), "--out", str(kept)]
        if role != "planner":
            stage = Stage(
                f"judge-{role}", args, kept, ("judge",), [mined], code=judge_version(recipe.judge)
            )
        elif recipe.ipm.planner_pairs == "mismatch":  # no judge: its settings do not matter
            stage = Stage(f"judge-{role}", args, kept, ("ipm",), [mined])
        else:
            stage = Stage(
                f"judge-{role}",
                args,
                kept,
                ("judge", "ipm"),
                [mined],
                code=judge_version(recipe.judge),
            )
        stages.append(stage)
    for role in ROLES:
        args = [
            "dpo",
            "--role",
            role,
            "--pairs",
            str(run.pairs(role)),
            "--model",
            str(run.model("sft", role)),
            "--out",
            str(run.model("dpo", role)),
        ]
        inputs = [run.pairs(role), run.model("sft", role)]
        if role == "planner" and recipe.for_role(role).dpo.validation_every > 0:  # guard data
            args, inputs = args + ["--data", str(data)], inputs + [data]
        stages.append(
            Stage(
                f"dpo-{role}",
                args,
                run.model("dpo", role),
                ("dpo", "model"),
                inputs,
                distributed=True,
            )
        )
    systems = evaluated_systems(recipe)
    for system, (mode, stage) in systems.items():
        pred = run.predictions(system)
        if stage == "base":  # zero-shot: the base model in both roles
            inputs = list(base_inputs)
            model_args = ["--planner", str(base_dir), "--generator", str(base_dir)]
        elif mode == "vanilla":
            inputs = [run.model(stage, "vanilla")]
            model_args = ["--model", str(inputs[0])]
        elif mode == "generator-gold":
            inputs = [run.model(stage, "generator")]
            model_args = ["--generator", str(inputs[0])]
        else:
            inputs = [run.model(stage, "planner"), run.model(stage, "generator")]
            model_args = ["--planner", str(inputs[0]), "--generator", str(inputs[1])]
        # the protocol decides the decoding (infer reads eval.protocol)
        stages.append(
            Stage(
                f"infer-{system}",
                [
                    "infer",
                    "--mode",
                    mode,
                    *model_args,
                    "--data",
                    str(data),
                    "--split",
                    recipe.infer.split,
                    "--out",
                    str(pred),
                ],
                pred,
                ("infer", "model"),
                [data, *inputs],
                distributed=True,
                code=f"protocol={recipe.eval.protocol}",
            )
        )
    # LLM-judge scores and errors depend on the judge endpoint; everything else does not. The
    # data gives the histories (error rates) and the gold training replies (adherence).
    eval_keys = ("eval", "judge") if recipe.eval.llm_judge else ("eval",)
    for system in systems:
        pred, report = run.predictions(system), run.report(system)
        stages.append(
            Stage(
                f"eval-{system}",
                [
                    "eval",
                    str(pred / "predictions.jsonl"),
                    "--out",
                    str(report),
                    "--name",
                    system,
                    "--data",
                    str(data),
                ],
                report,
                eval_keys,
                [pred, data],
            )
        )
    reports = [run.report(s) for s in systems]
    comparison = run.comparison
    stages.append(
        Stage(
            "compare",
            [
                "compare",
                *map(str, reports),
                "--names",
                ",".join(SYSTEM_TITLES[s] for s in systems),
                "--out",
                str(comparison),
            ],
            comparison,
            ("eval",),
            reports,
        )
    )
    return stages


def done_marker(out: Path) -> Path:
    """Where a stage's completion shows: eval and compare write reports, not markers."""
    for name in (COMPLETED, "report.json", "comparison.json"):
        if (out / name).is_file():
            return out / name
    return out / COMPLETED


# facts of how a stage ran, not of what it produced: a rerun that gives the same output (a
# deterministic stage run again, a resumed one) leaves the stages after it current
RUN_FACTS = frozenset(
    {
        "seconds",
        "generation_seconds",
        "load_seconds",
        "train_runtime_s",
        "items_per_s",
        "tokens_per_s",
        "per_rank",
        "git_commit",
        "resumed_from",
        "chunks_reused",
        "chunks_computed",
        "items_computed",
    }
)


def content_of(manifest):
    """A manifest without its run facts (recursively), for the keys of the stages it feeds."""
    if isinstance(manifest, dict):
        return {k: content_of(v) for k, v in manifest.items() if k not in RUN_FACTS}
    if isinstance(manifest, list):
        return [content_of(v) for v in manifest]
    return manifest


def stage_key(stage: Stage, recipe: Recipe) -> str:
    if stage.args[0] in (*TRAINING, "judge"):  # the settings that apply to the role only
        recipe = recipe.for_role(stage.args[stage.args.index("--role") + 1])
    cfg = key_view(recipe)
    inputs = []
    for path in stage.inputs:
        marker = path / "manifest.json"
        if not marker.is_file():
            marker = done_marker(path)
        inputs.append(
            [
                str(path),
                sha256_json(content_of(read_json(marker)))
                if marker.suffix == ".json" and marker.is_file()
                else str(marker.is_file()),
            ]
        )
    key = {
        "args": stage.args,
        "config": {s: cfg[s] for s in stage.sections},
        "run_seed": recipe.run.seed,
        "inputs": inputs,
    }
    if stage.code is not None:
        key["code"] = stage.code
    version = code_version(stage.args[0])
    if version is not None:
        key["code_version"] = version
    return sha256_json(key)


def clear_stale(stage: Stage, key: str, run: RunLayout) -> None:
    """Remove the outputs (and training work directory) that a stage left for other inputs or
    settings, so that it starts clean; an interrupted attempt with the same key is kept, so that
    the stage resumes from its checkpoints or chunks. Only esc-dist's own outputs are removed
    (:func:`esc_dist.outputs.remove_output`); anything else stops the run with an error."""
    attempt = run.attempt(stage.name)
    keys = [read_json(p).get("key") for p in (attempt, stage.out / "pipeline.json") if p.is_file()]
    if any(k != key for k in keys):
        for path in (stage.out, training_work(stage.out)):
            if path.exists():
                log.info("%s: inputs or settings changed, removing %s", stage.name, path)
                remove_output(path)
    atomic_write_json(attempt, {"key": key, "stage": stage.name})


def is_current(stage: Stage, key: str) -> bool:
    """Whether ``stage`` finished for ``key`` and its output files still match its manifest (a
    file changed or cut since makes it run again, which one log line says)."""
    state = stage.out / "pipeline.json"
    if not (
        done_marker(stage.out).is_file() and state.is_file() and read_json(state).get("key") == key
    ):
        return False
    problem = verify_outputs(stage.out)
    if problem is not None:
        log.warning("%s: %s; it runs again", stage.name, problem)
    return problem is None


def mark_current(stage: Stage, key: str, seconds: float | None) -> None:
    """Record a finished stage as done for ``key`` (what ``is_current`` checks)."""
    atomic_write_json(
        stage.out / "pipeline.json",
        {
            "key": key,
            "stage": stage.name,
            "seconds": round(seconds, 1) if seconds is not None else None,
        },
    )


def launcher_cmd(launcher: str, nproc: int, port: int, cpu: bool = False) -> list[str]:
    """The command that starts ``python -m esc_dist`` on ``nproc`` ranks with ``launcher``
    (deepspeed, torchrun, accelerate; "python" is one plain process); arguments follow it.
    ``cpu`` asks accelerate for CPU ranks even where a GPU is visible."""
    bin_dir = Path(sys.executable).parent
    if launcher == "python":
        return [sys.executable, "-m", "esc_dist"]
    if launcher == "torchrun":
        return [
            str(bin_dir / "torchrun"),
            f"--nproc_per_node={nproc}",
            f"--master_port={port}",
            "-m",
            "esc_dist",
        ]
    if launcher == "deepspeed":
        return [
            str(bin_dir / "deepspeed"),
            f"--num_gpus={nproc}",
            f"--master_port={port}",
            "--module",
            "esc_dist",
        ]
    if launcher == "accelerate":
        return [
            str(bin_dir / "accelerate"),
            "launch",
            *(["--cpu"] if cpu else []),
            f"--num_processes={nproc}",
            f"--main_process_port={port}",
            "-m",
            "esc_dist",
        ]
    raise ConfigError(f"unknown launcher {launcher!r} (deepspeed, torchrun, accelerate, python)")


def stage_cmd(recipe: Recipe, stage: Stage, index: int) -> list[str]:
    """The whole command of a stage, exactly as the pipeline runs it (``index``: its number,
    which picks its port when ``pipeline.master_port`` is set)."""
    p = recipe.pipeline
    port = p.master_port + index if p.master_port else free_port()
    launcher = p.launcher if stage.distributed else "python"
    return (
        launcher_cmd(launcher, p.nproc, port) + stage.args + ["--config", str(recipe_file(recipe))]
    )


def canonical_output_dir(path: str) -> str:
    """One spelling per directory, so that a stage's key (which holds its paths) does not change
    with how the run directory was written: relative to the working directory when inside it
    (``runs/x``, ``./runs/x`` and ``$PWD/runs/x`` are the same run), else absolute."""
    full, cwd = os.path.abspath(path), os.getcwd()
    return os.path.relpath(full, cwd) if full.startswith(cwd.rstrip(os.sep) + os.sep) else full


def resolve(recipe: Recipe) -> Recipe:
    """The recipe as every stage and its key see it (one spelling of the run directory)."""
    return dataclasses.replace(
        recipe,
        run=dataclasses.replace(recipe.run, output_dir=canonical_output_dir(recipe.run.output_dir)),
    )


def recipe_file(recipe: Recipe) -> Path:
    return RunLayout.of(recipe).recipe


def write_recipe(recipe: Recipe) -> Path:
    """The resolved recipe that every stage command reads (``RUN/recipe.yaml``)."""
    path = recipe_file(recipe)
    atomic_write_text(path, dump_recipe(recipe))
    return path


def find_stage(recipe: Recipe, name: str) -> tuple[int, Stage]:
    """(number from 1, stage) of the stage called ``name``."""
    stages = plan(recipe)
    for i, s in enumerate(stages, 1):
        if s.name == name:
            return i, s
    raise ConfigError(
        f"unknown stage {name!r}; the stages of this recipe are {', '.join(s.name for s in stages)}"
    )


def run_stage(
    recipe: Recipe, stage: Stage, index: int, key: str, log_path: Path | None = None
) -> float:
    """Run one stage as the pipeline does: clear what it left for other inputs, run its command
    (output to ``log_path``, else to this terminal), check that its output is complete and record
    it as current under ``key`` (its :func:`stage_key`, which the caller computed to see that it
    was stale). Returns the seconds it took; raises :class:`StageError` when it fails."""
    clear_stale(stage, key, RunLayout.of(recipe))
    cmd = stage_cmd(recipe, stage, index)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.time()
    if log_path is None:
        rc = subprocess.run(cmd, env=env).returncode
    else:
        with open(log_path, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.time() - t0
    if rc != 0 or not done_marker(stage.out).is_file():
        why = f"exit {rc}" if rc != 0 else f"exit 0 but no {done_marker(stage.out).name}"
        raise StageError(
            f"stage {stage.name} failed after {seconds:.0f}s ({why})"
            + (f"; full log: {log_path}" if log_path else "")
        )
    mark_current(stage, key, seconds)
    return seconds


def run_pipeline(
    recipe: Recipe,
    only: list[str] | None = None,
    force: bool = False,
    reuse: str | Path | None = None,
) -> Path:
    """Run (or resume) every stage; returns the comparison directory. ``reuse``: a finished
    run this one is a variant of, whose stages it does not need to run again it reads
    (:func:`plan_reusing`)."""
    recipe = resolve(recipe)
    run = RunLayout.of(recipe)
    run.root.mkdir(parents=True, exist_ok=True)
    write_recipe(recipe)
    stages, reused = plan_reusing(recipe, reuse) if reuse else (plan(recipe), set())
    if only:
        unknown = set(only) - {s.name for s in stages}
        if unknown:
            raise ConfigError(
                f"unknown stage(s) {sorted(unknown)}; stages are {[s.name for s in stages]}"
            )
    run.logs.mkdir(exist_ok=True)
    t_all = time.time()
    for i, stage in enumerate(stages, 1):
        if only and stage.name not in only:
            continue
        head = f"[{i:2d}/{len(stages)}] {stage.name:<20}"
        if stage.name in reused:
            print(f"{head} reused from {reuse}", flush=True)
            continue
        key = stage_key(stage, recipe)
        if not force and is_current(stage, key):
            print(f"{head} up to date, skipped", flush=True)
            continue
        log_path = run.log(stage.name)
        where = f"{recipe.pipeline.nproc} ranks" if stage.distributed else "1 process"
        print(f"{head} running on {where} ...", end="", flush=True)
        t0 = time.time()
        try:
            seconds = run_stage(recipe, stage, i, key, log_path)
        except StageError:
            print(f" FAILED after {time.time() - t0:.0f}s", flush=True)
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            print("\n".join("    " + line for line in tail), file=sys.stderr)
            raise
        print(f" done in {seconds:.0f}s", flush=True)
    comparison = next(s.out for s in stages if s.name == "compare")  # another run's if reused
    made = (
        f"comparison: {comparison / 'comparison.md'}"
        if not only or "compare" in only
        else f"only {', '.join(only)}"
    )
    print(f"pipeline finished in {time.time() - t_all:.0f}s; {made}", flush=True)
    return comparison


# ---------------------------------------------------------------------------------------------
# Variants of a run (`esc-dist pipeline --reuse RUN`): stages that would compute exactly what
# another run already holds read it from there


def _moved(stage: Stage, moved: dict[Path, Path]) -> Stage:
    """``stage`` with its inputs (and the paths in its arguments) that are reused outputs of
    another run pointing there."""

    def path(p: Path) -> Path:
        for ours, theirs in moved.items():
            if p == ours or ours in p.parents:
                return theirs / p.relative_to(ours)
        return p

    def arg(a: str) -> str:
        return str(path(Path(a))) if a and not a.startswith("-") and "=" not in a else a

    return dataclasses.replace(
        stage, args=[arg(a) for a in stage.args], inputs=[path(p) for p in stage.inputs]
    )


# the prepared tasks each mode of inference reads (besides the turns every stage may read)
INFER_TASKS = {
    "vanilla": ("vanilla",),
    "decoupled": ("planner", "generator"),
    "generator-gold": ("generator",),
    "planner": ("planner",),
}


def data_tasks(stage: Stage) -> tuple[str, ...] | None:
    """The tasks of the prepared data ``stage`` reads (a role's training, mining and DPO data;
    the roles an inference mode prompts), or None: all of it (the tiny model's tokenizer, the
    evaluation, anything not listed)."""
    command, args = stage.args[0], stage.args
    if command in ("sft", "mine", "dpo"):
        return (args[args.index("--role") + 1],)
    if command == "infer":
        return INFER_TASKS.get(args[args.index("--mode") + 1])
    return None


def _base_data_settings(theirs_recipe: Recipe, prepare: Stage):
    """The data settings the base run's finished ``prepare`` stage was made with, or None
    when it is not current for them (unfinished, changed since, or made by other code)."""
    manifest = prepare.out / "manifest.json"
    try:
        settings = type(theirs_recipe.data)(**read_json(manifest)["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    as_made = dataclasses.replace(theirs_recipe, data=settings)
    return settings if is_current(prepare, stage_key(prepare, as_made)) else None


def plan_reusing(recipe: Recipe, base: str | Path) -> tuple[list[Stage], set[str]]:
    """The plan of ``recipe`` over the run in ``base``: a stage whose inputs are all reused
    (or outside both runs) and whose key, computed with the base run's paths, is the key the
    base run finished it with is not run again: later stages read its output in ``base``.
    A stage that reads only some tasks of the prepared data (:func:`data_tasks`) reads the
    base run's data when the settings those tasks depend on are the same in both runs
    (``data.tasks.PROMPT_SETTINGS``), even if the two runs prepare other tasks differently.
    Returns the stages (reused ones pointing into ``base``) and the names of those reused."""
    theirs_recipe = dataclasses.replace(
        recipe, run=dataclasses.replace(recipe.run, output_dir=canonical_output_dir(str(base)))
    )
    ours, theirs = plan(recipe), {s.name: s for s in plan(theirs_recipe)}
    ours_root = RunLayout.of(recipe).root
    our_data, their_data = RunLayout.of(recipe).data, theirs["prepare"].out
    base_data = _base_data_settings(theirs_recipe, theirs["prepare"])
    moved: dict[Path, Path] = {}
    stages, reused = [], set()
    for stage in ours:
        stage = _moved(stage, moved)
        tasks = data_tasks(stage)
        if (
            our_data in stage.inputs
            and tasks is not None
            and base_data is not None
            and settings_view(recipe.data, tasks) == settings_view(base_data, tasks)
        ):
            stage = _moved(stage, {our_data: their_data})
        other = theirs.get(stage.name)
        inside = [p for p in stage.inputs if p == ours_root or ours_root in p.parents]
        if (
            other is not None
            and not inside  # every input it reads is the base run's (or outside both)
            and other.out != stage.out
            and is_current(other, stage_key(other, theirs_recipe))
        ):
            moved[stage.out] = other.out
            stages.append(other)
            reused.add(stage.name)
        else:
            stages.append(stage)
    return stages, reused


def needed_stages(stages: list[Stage], reused: set[str], targets: Sequence[str]) -> tuple[str, ...]:
    """The names, in plan order, of the stages a variant (``plan_reusing``'s answer) must run
    itself for ``targets``: the targets and every stage whose output they read, directly or
    not, that is not reused."""
    by_name = {s.name: s for s in stages}
    made_by = {s.out: s.name for s in stages}
    todo, needed = list(targets), set()
    while todo:
        name = todo.pop()
        if name in reused or name in needed:
            continue
        needed.add(name)
        todo += [made_by[p] for p in by_name[name].inputs if p in made_by]
    return tuple(s.name for s in stages if s.name in needed)


# ---------------------------------------------------------------------------------------------
# The pipeline as Slurm jobs (`esc-dist stage jobs`, read by slurm/submit_pipeline.sh)

TRAINING = ("sft", "dpo")  # stages that checkpoint on SIGUSR1 and resume from the checkpoint


@dataclass
class Job:
    name: str
    template: str  # slurm/<template>.sbatch
    env: dict[str, str]
    stages: list[str] = field(default_factory=list)
    deps: set[str] = field(default_factory=set)


def job_of(stage: Stage) -> tuple[str, str, dict[str, str]]:
    """(job name, template, environment) of the Slurm job that runs ``stage``."""
    name = stage.name
    kind, _, rest = name.partition("-")
    if name in ("prepare", "tiny-model", "base-model"):
        return "prepare", "single", {}
    if kind in TRAINING and stage.distributed:
        return name, "train", {"STAGE": kind, "ROLE": rest}
    if kind == "mine" and stage.distributed:
        return name, "mine", {"ROLE": rest}
    if kind in ("infer", "eval") and rest in {**SYSTEMS, **GOLD_SYSTEMS, **ZERO_SHOT_SYSTEMS}:
        return f"infer-{rest}", "infer_eval", {"SYSTEM": rest}
    # anything else (judge, compare, stages added later): one job per stage
    return name, ("stage" if stage.distributed else "single"), {}


def slurm_jobs(recipe: Recipe) -> list[Job]:
    """The jobs of a whole pipeline in dependency order, each with the jobs it waits for."""
    jobs: dict[str, Job] = {}
    producer: dict[Path, str] = {}
    for s in plan(recipe):
        name, template, env = job_of(s)
        job = jobs.setdefault(name, Job(name, template, env))
        job.stages.append(s.name)
        job.deps |= {producer[p] for p in s.inputs if p in producer} - {name}
        producer[s.out] = name
    for job in jobs.values():
        if job.template in ("single", "stage"):
            job.env = {"STAGE": ",".join(job.stages)}
    return list(jobs.values())
