"""Helpers to launch esc-dist under real multi-process launchers in tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from esc_dist.dist import free_port
from esc_dist.pipeline import launcher_cmd
from tests.conftest import ROOT


def launch_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "WANDB_"))}
    env.update(WANDB_MODE="offline", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def launch(args: list[str], nproc: int = 2, launcher: str = "torchrun", cwd: Path = ROOT,
           timeout: int = 600, env: dict | None = None, log: Path | None = None,
           check: bool = True, background: bool = False):
    """Run ``esc-dist ARGS`` under ``launcher`` with ``nproc`` processes."""
    cmd = launcher_cmd(launcher, nproc, free_port(), cpu=True) + list(args)
    env = env or launch_env()
    out = open(log, "w") if log else subprocess.PIPE
    if background:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    if log:
        out.close()
    if check and r.returncode != 0:
        text = log.read_text() if log else r.stdout
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{text[-6000:]}")
    return r


def work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".work")


def log_history(out: Path, step: int) -> list[dict]:
    """The per-step log rows of a training stage, from its checkpoint at ``step``."""
    import json

    state = work_dir(out) / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    return [h for h in json.loads(state.read_text())["log_history"] if "loss" in h]


def export_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def assert_close_weights(a: dict, b: dict, tol: float) -> None:
    import torch

    a, b = dict(a), dict(b)
    # A ZeRO-3 export may also list the tied lm_head; it must equal the embedding then.
    for w in (a, b):
        if "lm_head.weight" in w:
            assert torch.equal(w.pop("lm_head.weight"), w["model.embed_tokens.weight"])
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= tol, f"max weight difference {worst}"


def rank_pid(launcher_pid: int, rank: str) -> int | None:
    import psutil

    for p in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if p.environ().get("RANK") == rank and "esc_dist" in " ".join(p.cmdline()):
                return p.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def kill_rank_when(args: list[str], marker: Path, log: Path, rank: str = "1",
                   timeout: float = 300) -> None:
    """Launch 2 ranks, SIGKILL ``rank`` as soon as ``marker`` exists, and wait for the launcher
    to give up (it must fail)."""
    import signal
    import time

    proc = launch(args, background=True, log=log)
    deadline = time.time() + timeout
    try:
        while not marker.exists():
            assert proc.poll() is None, f"finished before the kill:\n{log.read_text()[-4000:]}"
            assert time.time() < deadline, "timed out waiting for the marker"
            time.sleep(0.05)
        pid = rank_pid(proc.pid, rank)
        assert pid is not None, "rank process not found"
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
