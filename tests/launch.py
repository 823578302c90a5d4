"""Helpers to launch esc-dist under real multi-process launchers in tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, VENV_BIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "WANDB_"))}
    env.update(WANDB_MODE="offline", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def launcher_cmd(launcher: str, nproc: int, port: int) -> list[str]:
    if launcher == "torchrun":
        return [str(VENV_BIN / "torchrun"), f"--nproc_per_node={nproc}", f"--master_port={port}",
                "-m", "esc_dist"]
    if launcher == "deepspeed":
        return [str(VENV_BIN / "deepspeed"), f"--num_gpus={nproc}", f"--master_port={port}",
                "--module", "esc_dist"]
    if launcher == "accelerate":
        return [str(VENV_BIN / "accelerate"), "launch", "--cpu", f"--num_processes={nproc}",
                f"--main_process_port={port}", "-m", "esc_dist"]
    if launcher == "python":
        assert nproc == 1
        return [sys.executable, "-m", "esc_dist"]
    raise ValueError(launcher)


def launch(args: list[str], nproc: int = 2, launcher: str = "torchrun", cwd: Path = ROOT,
           timeout: int = 600, env: dict | None = None, log: Path | None = None,
           check: bool = True, background: bool = False):
    """Run ``esc-dist ARGS`` under ``launcher`` with ``nproc`` processes."""
    cmd = launcher_cmd(launcher, nproc, free_port()) + list(args)
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
