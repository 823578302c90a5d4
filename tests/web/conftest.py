"""A real headless browser (Debian's chromium and chromium-driver, driven by selenium) for the
web pages' tests. Without them the tests are skipped, unless ESC_DIST_REQUIRE_BROWSER=1 (CI),
which makes a missing browser a failure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _missing() -> str | None:
    for mod in ("gradio", "selenium"):
        try:
            __import__(mod)
        except ImportError:
            return f"{mod} is not installed (pip install 'esc-dist[app]')"
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        return "no chromium/chromedriver (Debian: apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="session")
def browser():
    why = _missing()
    if why:
        if os.environ.get("ESC_DIST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required: {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> Path:
    """Save the page as test-artifacts/NAME.png (kept after the run)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


@pytest.fixture(scope="session")
def chat_models(tmp_path_factory, esconv_dir):
    """A tiny planner and generator trained in one process on 4 training dialogues, long enough
    that greedy decoding names a strategy (the majority one) and writes a non-empty reply."""
    import torch

    from esc_dist.config import DataConfig, TinyModelConfig, load_recipe
    from esc_dist.data.tasks import prepare
    from esc_dist.models.tiny import build_tiny_model
    from esc_dist.train.sft import train_sft

    root = tmp_path_factory.mktemp("chat")
    saved = {k: os.environ.pop(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")
             if k in os.environ}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prepare(DataConfig(esconv=str(esconv_dir / "esconv.json"),
                           split=str(esconv_dir / "splits" / "decoupledesc_split.json"),
                           max_dialogues={"train": 4, "validation": 1, "test": 1},
                           max_history_messages=4), root / "data")
        build_tiny_model(TinyModelConfig(vocab_size=2048, hidden_size=64, num_layers=2,
                                         intermediate_size=176), esconv_dir / "esconv.json",
                         root / "tiny")
        recipe = load_recipe(None, ["sft.deepspeed=null", f"run.output_dir={root / 'run'}",
                                    "wandb.mode=disabled", "sft.max_steps=120",
                                    "sft.learning_rate=5e-3", "sft.warmup_ratio=0.0"])
        for role in ("planner", "generator"):
            train_sft(recipe, role, str(root / "data"), str(root / "tiny"),
                      str(root / f"sft-{role}"))
    finally:
        torch.set_num_threads(threads)
        os.environ.update(saved)
    return {"planner": root / "sft-planner", "generator": root / "sft-generator"}
