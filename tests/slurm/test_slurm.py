"""The Slurm templates on a real Slurm 22.05 cluster: two nodes (n1, n2) on loopback, CPU only.

The cluster comes from ``../shared/tools/local-slurm`` (``up.sh`` installs the Debian packages
when they are missing and needs root). Jobs run the real templates in ``slurm/`` with the tiny
model: a two-node ZeRO-3 SFT (one torchrun per node, c10d rendezvous), a preemption by SIGUSR1
that requeues the job and resumes it, a failure that must fail the job, and the whole pipeline
submitted by ``slurm/submit_pipeline.sh``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import (
    ROOT,
    VENV_BIN,
    assert_close_weights,
    export_weights,
    launch,
    launch_env,
    log_history,
    wait_for_offline_runs,
)

LOCAL_SLURM = Path(
    os.environ.get("ESC_DIST_LOCAL_SLURM", ROOT.parent / "shared" / "tools" / "local-slurm")
)
SLURM_ROOT = Path(os.environ.get("LOCAL_SLURM_ROOT", "/tmp/local-slurm"))
RECIPE = "configs/tiny-cpu.yaml"
STEPS = 12  # long enough to signal the job between two checkpoints
LOSS_TOL = 1e-4
# GPU templates on CPUs; the templates' 600 s signal lead is sized for 7B checkpoints
CPU_JOB = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=00:10:00", "--signal=B:USR1@60"]


# ---------------------------------------------------------------------------------------------
# The cluster


@pytest.fixture(scope="session")
def slurm() -> dict[str, str]:
    """Bring the local cluster up (once per session; torn down at the end if we started it) and
    return the environment jobs are submitted with."""
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (up.sh starts munged, slurmctld, slurmd)")
    assert (LOCAL_SLURM / "up.sh").is_file(), f"local-slurm tools not found at {LOCAL_SLURM}"
    env = dict(os.environ, LOCAL_SLURM_MIN_JOB_AGE="4", LOCAL_SLURM_ROOT=str(SLURM_ROOT))
    r = subprocess.run(
        ["bash", str(LOCAL_SLURM / "up.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    if r.returncode != 0:
        if "installing:" in r.stdout and shutil.which("slurmctld") is None:
            pytest.skip(
                "cannot install the Slurm packages with apt (slurmctld slurmd "
                f"slurm-client munge):\n{r.stdout[-1500:]}{r.stderr[-1500:]}"
            )
        pytest.fail(f"local Slurm did not come up:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    started = "slurmctld up" in r.stdout
    yield job_env()
    if started:
        subprocess.run(
            ["bash", str(LOCAL_SLURM / "down.sh")], env=env, capture_output=True, timeout=300
        )


def job_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in launch_env().items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(
        SLURM_CONF=str(SLURM_ROOT / "cluster" / "etc" / "slurm.conf"),
        PATH=f"{SLURM_ROOT / 'bin'}:{VENV_BIN}:{env['PATH']}",
    )
    env.update(extra)
    return env


def sbatch(
    env: dict,
    template: str,
    opts: list[str],
    args: list[str],
    background: bool = False,
    timeout: int = 900,
    **variables: str,
):
    """``sbatch --wait --parsable OPTS slurm/TEMPLATE ARGS`` from the project root (a Popen
    whose first output line is the job id when ``background``)."""
    cmd = [
        str(SLURM_ROOT / "bin" / "sbatch"),
        "--parsable",
        "--wait",
        *opts,
        f"slurm/{template}",
        *args,
    ]
    run_env = dict(env, **variables)
    if background:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(
        cmd, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=timeout
    )


def job_field(env: dict, job_id: str, name: str) -> str | None:
    r = subprocess.run(
        [str(SLURM_ROOT / "bin" / "scontrol"), "show", "job", "-o", job_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    m = re.search(rf"\b{name}=(\S+)", r.stdout)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------
# Two-node SFT


@pytest.fixture(scope="module")
def small_run(small_setup, tmp_path_factory):
    """Make a run directory holding the small prepared data and tiny model (as `prepare` and
    `tiny-model` would have left them)."""

    def make(name: str, model: bool = True) -> Path:
        run = tmp_path_factory.mktemp(name)
        (run / "data").symlink_to(small_setup / "data")
        if model:
            (run / "models").mkdir()
            (run / "models" / "tiny").symlink_to(small_setup / "tiny")
        return run

    return make


def sft_overrides(run: Path) -> list[str]:
    return [
        RECIPE,
        f"run.output_dir={run}",
        f"sft.max_steps={STEPS}",
        "sft.save_steps=2",
        "sft.keep_checkpoints=true",
        "sft.logging_steps=1",
        "sft.per_device_train_batch_size=4",
        "sft.warmup_ratio=0",
        "run.dist_timeout_s=120",
    ]


def two_node_opts(run: Path) -> list[str]:
    return ["--nodes=2", "--ntasks-per-node=1", *CPU_JOB, f"--output={run}/%x-%j.out"]


def job_log(run: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(run.glob("esc-train-*.out")))


def losses(out: Path) -> list[float]:
    return [h["loss"] for h in log_history(out, STEPS)]


@pytest.fixture(scope="module")
def two_node_sft(slurm, small_run):
    run = small_run("slurm-2node")
    t0 = time.time()
    r = sbatch(
        slurm, "train.sbatch", two_node_opts(run), sft_overrides(run), STAGE="sft", ROLE="planner"
    )
    print(f"2-node SFT job: {time.time() - t0:.0f} s")
    assert r.returncode == 0, f"{r.stderr}\n{job_log(run)[-6000:]}"
    return run / "models" / "sft-planner"


@pytest.mark.slurm
def test_two_node_sft_equals_local_torchrun(two_node_sft, small_run):
    run = two_node_sft.parents[1]
    log = job_log(run)
    assert "2 node(s) x 1 rank(s) (no GPUs: CPU ranks, gloo)" in log
    assert "node 0 (n1)" in log and "node 1 (n2)" in log  # one torchrun on each node
    manifest = json.loads((two_node_sft / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["global_step"] == STEPS
    assert (two_node_sft / "COMPLETED").is_file() and (two_node_sft / "pipeline.json").is_file()

    # the same stage with 2 ranks of a local torchrun
    local = small_run("local-2rank")
    out = local / "models" / "sft-planner"
    launch(
        [
            "sft",
            "--role",
            "planner",
            "--data",
            str(local / "data"),
            "--model",
            str(local / "models" / "tiny"),
            "--out",
            str(out),
            *sft_overrides(local)[1:],
            "--config",
            RECIPE,
        ],
        nproc=2,
        launcher="torchrun",
        log=local / "torchrun.log",
    )
    ref, got = losses(out), losses(two_node_sft)
    assert len(ref) == len(got) == STEPS
    diff = max(abs(a - b) for a, b in zip(ref, got))
    print(f"2-node Slurm vs local torchrun: {STEPS} losses, max difference {diff:.2e}")
    assert diff <= LOSS_TOL, (ref, got)


@pytest.mark.slurm
def test_usr1_requeues_and_resumes_like_an_uninterrupted_run(slurm, small_run, two_node_sft):
    run = small_run("slurm-requeue")
    out = run / "models" / "sft-planner"
    ckpts = out.with_name("sft-planner.work") / "checkpoints"
    proc = sbatch(
        slurm,
        "train.sbatch",
        two_node_opts(run),
        sft_overrides(run),
        background=True,
        STAGE="sft",
        ROLE="planner",
    )
    job_id = proc.stdout.readline().strip().split(";")[0]
    assert job_id.isdigit(), proc.stderr.read()
    deadline = time.time() + 600
    while not (ckpts / "checkpoint-2" / "COMPLETED").is_file():
        assert proc.poll() is None, f"job ended early:\n{job_log(run)[-4000:]}"
        assert time.time() < deadline, "no checkpoint-2 after 10 minutes"
        time.sleep(0.2)
    signalled_at = time.time()
    subprocess.run(
        [str(SLURM_ROOT / "bin" / "scancel"), "--signal=USR1", "--batch", job_id],
        env=slurm,
        check=True,
        timeout=30,
    )
    restarts = set()
    while proc.poll() is None:
        value = job_field(slurm, job_id, "Restarts")
        if value is not None:
            restarts.add(int(value))
        assert time.time() < deadline, "job did not finish"
        time.sleep(0.5)
    log = job_log(run)
    print(
        f"requeue: finished {time.time() - signalled_at:.0f} s after the signal; restarts "
        f"seen by scontrol: {sorted(restarts)}"
    )
    assert proc.returncode == 0, f"{proc.stderr.read()}\n{log[-6000:]}"

    # stopped at a checkpoint, requeued by the batch script, resumed once
    assert "SIGUSR1 (time limit or preemption)" in log and "requeueing job" in log
    assert "sft-planner: stopped for preemption" in log and "(exit 75)" in log
    assert "attempt 1 SLURM_RESTART_COUNT=unset" in log
    assert "attempt 2 SLURM_RESTART_COUNT=1 " in log and "attempt 3" not in log
    assert max(restarts) == 1
    stopped = [int(s) for s in re.findall(r"saving a checkpoint at step (\d+) and stopping", log)]
    assert stopped and 2 <= stopped[0] < STEPS, log[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed_from"].endswith(f"checkpoint-{stopped[0]}")
    assert manifest["global_step"] == STEPS and manifest["world_size"] == 2

    # same final weights as the uninterrupted two-node run
    a, b = export_weights(two_node_sft), export_weights(out)
    assert_close_weights(a, b, tol=1e-6)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"requeue: resumed from checkpoint-{stopped[0]}, max weight difference {worst:.2e}")

    # both attempts logged to one W&B run (offline: one run directory per attempt, one id)
    runs = wait_for_offline_runs(out.with_name("sft-planner.work") / "wandb", count=2)
    assert len(runs) == 2
    assert runs[0]["run"]["id"] == runs[1]["run"]["id"]
    assert {r["run"]["job_type"] for r in runs} == {"sft-planner"}
    steps = sorted(h["train/global_step"] for r in runs for h in r["history"] if "train/loss" in h)
    assert steps[-1] == STEPS


@pytest.mark.slurm
def test_a_failing_stage_fails_the_job_without_requeue(slurm, small_run):
    run = small_run("slurm-fail", model=False)  # no base model: the SFT stage cannot start
    r = sbatch(
        slurm,
        "train.sbatch",
        two_node_opts(run),
        sft_overrides(run),
        STAGE="sft",
        ROLE="planner",
        timeout=600,
    )
    log = job_log(run)
    assert r.returncode != 0, log[-4000:]
    assert "sft-planner: FAILED" in log and "requeue" not in log
    assert "attempt 2" not in log


# ---------------------------------------------------------------------------------------------
# The whole pipeline

# Small enough to run in minutes on 2 CPU cores, large enough that the judge keeps pairs of every
# role (DPO needs at least one).
PIPELINE = [
    "data.max_dialogues.train=4",
    "data.max_dialogues.validation=2",
    "data.max_dialogues.test=2",
    "data.max_history_messages=4",
    "tiny_model.vocab_size=1024",
    "tiny_model.hidden_size=64",
    "tiny_model.num_layers=2",
    "tiny_model.intermediate_size=176",
    "sft.max_steps=30",
    "sft.learning_rate=1e-2",
    "sft.max_length=256",
    "sft.save_steps=100",
    "mine.max_turns=64",
    "mine.n_samples=4",
    "mine.max_new_tokens=16",
    "mine.planner_max_new_tokens=8",
    "dpo.max_steps=2",
    "dpo.max_length=256",
    "dpo.save_steps=100",
    # at least one global batch of pairs per role (the planner keeps only a few)
    "dpo.per_device_train_batch_size=1",
    "infer.max_new_tokens=16",
    "run.dist_timeout_s=300",
    "pipeline.signal_lead_s=60",  # CPU jobs of 15 minutes
    "eval.zero_shot=true",  # the untrained base model as a system of its own (a job too)
]


def test_submit_pipeline_dry_run_follows_the_plan(tmp_path):
    """Without a cluster: one job per stage (prepare with tiny-model, infer with its eval),
    each depending on exactly the jobs that produce its inputs."""
    from esc_dist.config import load_recipe
    from esc_dist.pipeline import plan

    args = [RECIPE, f"run.output_dir={tmp_path / 'run'}"]
    r = subprocess.run(
        ["bash", "slurm/submit_pipeline.sh", "--dry-run", *args],
        cwd=ROOT,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    jobs = {re.search(r"--job-name=tiny-cpu-(\S+)", line).group(1): line for line in lines}
    stages = [s.name for s in plan(load_recipe(ROOT / RECIPE, args[1:]))]
    assert list(jobs) == [s for s in stages if s != "tiny-model" and not s.startswith("eval-")]
    assert "STAGE=prepare\\,tiny-model" in jobs["prepare"] and "single.sbatch" in jobs["prepare"]
    assert "STAGE=dpo ROLE=vanilla" in jobs["dpo-vanilla"] and "train.sbatch" in jobs["dpo-vanilla"]
    assert "afterok:\\<judge-vanilla\\>:\\<sft-vanilla\\>" in jobs["dpo-vanilla"]
    assert "SYSTEM=decoupled-dpo" in jobs["infer-decoupled-dpo"]
    assert (
        "afterok:\\<dpo-generator\\>:\\<dpo-planner\\>:\\<prepare\\>" in jobs["infer-decoupled-dpo"]
    )
    assert "--dependency" not in jobs["prepare"]
    assert all("--kill-on-invalid-dep=yes" in line for line in lines)
    # the recipe's signal lead time (pipeline.signal_lead_s) on every job
    assert all("--signal=B:USR1@600" in line for line in lines)
    r = subprocess.run(
        ["bash", "slurm/submit_pipeline.sh", "--dry-run", *args, "pipeline.signal_lead_s=900"],
        cwd=ROOT,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and all(
        "--signal=B:USR1@900" in line for line in r.stdout.strip().splitlines()
    ), r.stderr


@pytest.mark.slurm
def test_submit_pipeline_runs_every_stage_on_slurm(slurm, tmp_path):
    run = tmp_path / "run"
    args = [RECIPE, f"run.output_dir={run}", *PIPELINE]
    env = dict(
        slurm,
        NPROC_PER_NODE="2",
        ESC_SBATCH_ARGS="--gpus-per-node=0 --cpus-per-task=2 --time=00:15:00",
    )
    t0 = time.time()
    r = subprocess.run(
        ["bash", "slurm/submit_pipeline.sh", "--wait", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    elapsed = time.time() - t0
    logs = "\n".join(
        f"== {p.name}\n{p.read_text(errors='replace')[-2500:]}"
        for p in sorted((run / "logs" / "slurm").glob("*.out"))
    )
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{logs[-12000:]}"
    print(f"pipeline on Slurm: {len(r.stdout.splitlines())} lines, {elapsed:.0f} s\n{r.stdout}")

    table = (run / "reports" / "comparison" / "comparison.md").read_text()
    for system in (
        "Vanilla-SFT",
        "Vanilla-DPO",
        "Decoupled-SFT",
        "Decoupled-DPO",
        "Generator-SFT-on-gold",
        "Generator-DPO-on-gold",
        "Zero-shot",
    ):
        assert system in table
    assert "**Paper protocol** (`paper`)" in table and "mean ± sample std over 3 decodes" in table
    assert "| Generator-DPO-on-gold | (gold) | (gold) | (gold) | (gold) |" in table
    report = json.loads((run / "reports" / "decoupled-dpo" / "report.json").read_text())
    assert report["protocol"] == "paper" and report["decodes"] == 3 and not report["warnings"]
    assert [len(d["paper"]) for d in report["per_decode"]] == [len(report["headline"])] * 3
    assert report["psych_errors"]["offline"]["n"] == report["counts"]["turns"]
    assert 0 <= report["adherence"]["adherence"] <= 1
    gold = json.loads((run / "reports" / "generator-gold-dpo" / "report.json").read_text())
    assert gold["headline"]["Q_as_others"] == 1.0  # the strategies are the gold ones
    zero = json.loads((run / "reports" / "zero-shot" / "report.json").read_text())
    assert zero["decodes"] == 3 and zero["counts"]["turns"] == report["counts"]["turns"]
    used = json.loads((run / "predictions" / "zero-shot" / "manifest.json").read_text())["inputs"]
    assert Path(used["planner"]["path"]) == Path(used["generator"]["path"]) == run / "models/tiny"
    assert len(list((run / "logs" / "slurm").glob("tiny-cpu-*.out"))) == 21  # one per job
    assert "every stage is finished" in r.stdout

    # the jobs recorded their stages the way `esc-dist pipeline` does: nothing left to run
    again = subprocess.run(
        ["bash", "slurm/submit_pipeline.sh", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and "every stage is up to date" in again.stdout, again.stderr
    local = subprocess.run(
        [str(VENV_BIN / "esc-dist"), "pipeline", "--config", *args],
        cwd=ROOT,
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    assert local.stdout.count("up to date, skipped") == 29, local.stdout
