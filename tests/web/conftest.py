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


def new_driver():
    """A headless Chromium under selenium (skips, or fails in CI, without one)."""
    why = _missing()
    if why:
        if os.environ.get("ESC_DIST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required: {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="session")
def browser():
    driver = new_driver()
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> Path:
    """Save the page as test-artifacts/NAME.png (kept after the run)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
