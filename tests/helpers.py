"""Helpers shared by the tests: where things are, launching esc-dist under real launchers, the
small generation setup with "parrot" models, a fake OpenAI-compatible endpoint, and reading what
an offline W&B run wrote."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from esc_dist.dist import free_port
from esc_dist.pipeline import launcher_cmd

ROOT = Path(__file__).resolve().parents[1]
ESCONV_DIR = Path(os.environ.get("ESC_DIST_ESCONV_DIR", ROOT.parent / "shared" / "data" / "esconv"))
TEST_DATA = ROOT / "tests" / "data"
VENV_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------
# The command line as a user meets it


def run_cli(
    args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """``python -m esc_dist ARGS`` in ``cwd`` with a bare environment; ``{tmp}`` in an argument
    stands for ``cwd``."""
    args = [a.replace("{tmp}", str(cwd)) for a in args]
    return subprocess.run(
        [sys.executable, "-m", "esc_dist", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={
            "PATH": "/usr/bin:/bin",
            "WANDB_MODE": "disabled",
            "HOME": str(cwd),
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        },
    )


def assert_one_line_error(r: subprocess.CompletedProcess, command: str, needle: str) -> None:
    """A user's mistake: exit 2, exactly one ``esc-dist COMMAND: error:`` line holding
    ``needle``, no traceback."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    assert "Traceback" not in r.stderr, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith(f"esc-dist {command}: error: ")]
    assert len(errors) == 1, r.stderr
    assert needle in errors[0], r.stderr


# ---------------------------------------------------------------------------------------------
# Launching esc-dist under real multi-process launchers


def launch_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "WANDB_"))
    }
    env.update(
        WANDB_MODE="offline",
        DS_ACCELERATOR="cpu",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def launch(
    args: list[str],
    nproc: int = 2,
    launcher: str = "torchrun",
    cwd: Path = ROOT,
    timeout: int = 600,
    env: dict | None = None,
    log: Path | None = None,
    check: bool = True,
    background: bool = False,
):
    """Run ``esc-dist ARGS`` under ``launcher`` with ``nproc`` processes."""
    cmd = launcher_cmd(launcher, nproc, free_port(), cpu=True) + list(args)
    env = env or launch_env()
    out = open(log, "w") if log else subprocess.PIPE
    if background:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    r = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
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

    # Only the launcher's own children: a process a rank forks (before its exec) has the same
    # command line and environment as the rank.
    for p in psutil.Process(launcher_pid).children():
        try:
            if p.environ().get("RANK") == rank and "esc_dist" in " ".join(p.cmdline()):
                return p.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def kill_rank_when(
    args: list[str],
    marker: Path,
    log: Path,
    rank: str = "1",
    timeout: float = 300,
    env: dict | None = None,
) -> None:
    """Launch 2 ranks, SIGKILL ``rank`` as soon as ``marker`` exists, and wait for the launcher
    to give up (it must fail)."""
    import signal
    import time

    proc = launch(args, background=True, log=log, env=env)
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


# ---------------------------------------------------------------------------------------------
# Generation, mining and inference: small data, the tiny model and "parrot" models


PLANNER_ANSWER = "Reflection of feelings"
VANILLA_ANSWER = "[Question] What happened?"
MAX_HISTORY = 6


def fresh_accelerate_state() -> None:
    """Forget accelerate's process-wide state (the process group stays): a trainer built
    earlier in this process fixed its mixed precision ("no" in fp32, bf16 where ``precision:
    auto`` finds a CPU with native bf16), which a later trainer may not change."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()


def single_rank(monkeypatch) -> None:
    """Make this test process a world of one (no launcher variables) and start its process
    group, for trainers built in-process, with accelerate's state forgotten first."""
    from esc_dist import dist

    fresh_accelerate_state()
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    dist.init(60)


def planner_pairs(data_dir: Path, out: Path, n: int) -> Path:
    """A completed preference-pairs directory of the first ``n`` training turns of the planner
    task: chosen = the gold strategy, rejected = its name reversed."""
    from datasets import load_from_disk

    from esc_dist.io import mark_completed
    from esc_dist.ipm.prefdial import save_dataset

    rows = load_from_disk(str(data_dir / "planner"))["train"].select(range(n))
    pairs = [
        {
            "id": r["id"] + "#s0",
            "turn_id": r["id"],
            "role": "planner",
            "prompt": r["prompt"],
            "chosen": r["strategy"],
            "rejected": r["strategy"][::-1].lower(),
            "gold_strategy": r["strategy"],
            "sampled_strategy": None,
        }
        for r in rows
    ]
    save_dataset(pairs, out / "dataset")
    mark_completed(out)
    return out


def build_parrot(base_dir: str | Path, out_dir: str | Path, text: str) -> Path:
    """A copy of the tiny model that answers ``text`` to any chat prompt.

    Attention and MLP outputs are zeroed, so the hidden state is the current token's embedding
    and the next token depends on the current one only: a programmed chain from the last token
    of the generation prompt through the tokens of ``text`` to eos (untied output layer with
    large logits on the chain, so sampling at temperature 0.7 follows it too).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from esc_dist.generation import prompt_ids

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), tie_word_embeddings=False)
    start = prompt_ids(tok, [{"role": "user", "content": "hi"}])[-1]
    chain = [start] + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(set(chain)) == len(chain) <= model.config.hidden_size, chain
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        head = torch.nn.Parameter(emb.detach().clone() * 0.01)
        model.lm_head.weight = head
        for i, (a, b) in enumerate(zip(chain, chain[1:])):
            emb[a] = 0.0
            emb[a, i] = 1.0
            head[b, i] = 20.0
    model.config.tie_word_embeddings = False
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return Path(out_dir)


def gen_setup(tmp_path_factory, esconv_dir) -> Path:
    """Data (4/2/3 dialogues, 6 history messages), the tiny model and two parrots, built once
    per test session (the directory is shared by the modules that use it)."""
    from esc_dist.config import DataConfig, TinyModelConfig
    from esc_dist.data.tasks import prepare
    from esc_dist.models.tiny import build_tiny_model

    root = tmp_path_factory.getbasetemp() / "gen-setup"
    if (root / "READY").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    prepare(
        DataConfig(
            esconv=str(esconv_dir / "esconv.json"),
            split=str(esconv_dir / "splits" / "decoupledesc_split.json"),
            max_dialogues={"train": 4, "validation": 2, "test": 3},
            max_history_messages=MAX_HISTORY,
        ),
        root / "data",
    )
    build_tiny_model(
        TinyModelConfig(vocab_size=2048, hidden_size=64, num_layers=2, intermediate_size=176),
        esconv_dir / "esconv.json",
        root / "tiny",
    )
    build_parrot(root / "tiny", root / "parrot-planner", PLANNER_ANSWER)
    build_parrot(root / "tiny", root / "parrot-vanilla", VANILLA_ANSWER)
    (root / "READY").write_text("")
    return root


def read_jsonl(path: str | Path) -> list[dict]:
    return [
        json.loads(line)
        for line in Path(path).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def chunk_records(chunk_dir: str | Path) -> list[dict]:
    return [r for p in sorted(Path(chunk_dir).glob("chunk-*.jsonl")) for r in read_jsonl(p)]


class AnyChunk:
    """A marker for ``tests.helpers.kill_rank_when``: "exists" once any chunk file is written."""

    def __init__(self, chunk_dir: Path):
        self.chunk_dir = Path(chunk_dir)

    def exists(self) -> bool:
        return any(self.chunk_dir.glob("chunk-*.jsonl"))


# ---------------------------------------------------------------------------------------------
# Offline W&B runs (their run-*.wandb record log)


_BLOCK = 32768


def _records(data: bytes):
    ident = data[:4]
    assert ident == b":W&B", f"not a W&B run file (header {ident!r})"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk


def read_offline_runs(wandb_dir: str | Path) -> list[dict]:
    """Every offline run under ``wandb_dir``: its run record, config, history rows, summary and
    logged artifacts (name, type, metadata, the references of a by-reference artifact).

    ``summary`` is the run summary as the record log leaves it (later updates win); nested keys
    are joined with "/" as in the history rows. ``exited`` says whether the run's exit record
    (written by ``run.finish()``) is there yet.
    """
    from wandb.proto import wandb_internal_pb2

    runs = []
    for f in sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb")):
        out = {
            "file": f,
            "run": None,
            "config": {},
            "history": [],
            "summary": {},
            "exited": False,
            "artifacts": [],
        }
        for raw in _records(f.read_bytes()):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(raw)
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                r = rec.run
                out["run"] = {
                    "id": r.run_id,
                    "group": r.run_group,
                    "job_type": r.job_type,
                    "name": r.display_name,
                    "project": r.project,
                }
                out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "config":
                out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
            elif kind == "history":
                out["history"].append(
                    {
                        (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                        for i in rec.history.item
                    }
                )
            elif kind == "summary":
                out["summary"].update(
                    {
                        (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                        for i in rec.summary.update
                    }
                )
                for i in rec.summary.remove:
                    out["summary"].pop(i.key or "/".join(i.nested_key), None)
            elif kind == "artifact":
                a = rec.artifact
                out["artifacts"].append(
                    {
                        "name": a.name,
                        "type": a.type,
                        "metadata": json.loads(a.metadata or "{}"),
                        "refs": [e.ref for e in a.manifest.contents],
                    }
                )
            elif kind == "exit":
                out["exited"] = True
        runs.append(out)
    return runs


def wait_for_offline_runs(
    wandb_dir: str | Path, count: int = 1, timeout: float = 60.0
) -> list[dict]:
    """``read_offline_runs`` once ``count`` runs have their exit record (or after ``timeout`` s).

    ``run.finish()`` can return before W&B's service has flushed the run file, so a read right
    after it may see only the file header; this polls until the file is complete.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            runs = read_offline_runs(wandb_dir)
            if len(runs) >= count and all(r["exited"] for r in runs):
                return runs
        except Exception:  # a half-written record: try again
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            return read_offline_runs(wandb_dir)
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# A fake OpenAI-compatible endpoint: a stdlib ``http.server`` on 127.0.0.1 (random port) that the
# tests script; each request is answered by ``server.respond(body)``, by default a fake judge.


class Reply:
    def __init__(self, status=200, content=None, raw=None, headers=None, delay=0.0):
        self.status, self.content, self.raw = status, content, raw
        self.headers, self.delay = headers or {}, delay


def completion(content: str) -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        }
    ).encode()


def fake_model(body: dict) -> Reply:
    """A stand-in judge: a candidate containing "BAD" makes a Template Response; the reply
    scorer (one rubric prompt per dimension) answers 4, or 1 for empathy when the reply contains
    "BAD"; the error labeller of generated replies finds a Template Response in a "BAD" reply."""
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    if "MALFORMED" in user:
        return Reply(content="Sure! Here is my verdict: A is fine")
    if "The supporter's reply to review:" in user:
        reply = user.split("The supporter's reply to review:")[-1]
        return Reply(
            content=json.dumps({"errors": ["Template Response"] if "BAD" in reply else []})
        )
    if "Candidate reply to rate:" in user:
        reply = user.split("Candidate reply to rate:")[-1].split("\n\nRate the")[0]
        empathy = system.split("\n\n")[1].startswith("Empathy")
        return Reply(content="1" if empathy and "BAD" in reply else "4")
    cands = dict(re.findall(r"^([AB]): (.*)$", user, re.M))
    verdict = {
        f"{k}_errors": (["Template Response"] if "BAD" in v else []) for k, v in cands.items()
    }
    return Reply(content="```json\n" + json.dumps(verdict) + "\n```")


class LogCapture(logging.Handler):
    """Every log record, formatted, at DEBUG and above (attach it to a logger)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


class FakeServer:
    def __init__(self):
        self.requests: list[dict] = []
        self.script: list[Reply] = []  # played first, one per request
        self.respond = fake_model
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                with server.lock:
                    # self.headers looks names up case-insensitively, as HTTP defines them
                    server.requests.append(
                        {"path": self.path, "headers": self.headers, "body": body}
                    )
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                    reply = server.script.pop(0) if server.script else None
                try:
                    reply = reply or server.respond(body)
                    time.sleep(reply.delay)
                    data = reply.raw if reply.raw is not None else completion(reply.content or "")
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left
                finally:
                    with server.lock:
                        server.inflight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
