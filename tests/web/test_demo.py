"""The demo page in a real browser: a message sent from the page gets, in each column, the
strategy that was planned and a reply from the tiny models."""

from __future__ import annotations

import re

import pytest

from esc_dist.strategies import STRATEGIES

from .conftest import screenshot

TAG = re.compile(r"^\[(?P<tag>[^\]]+)\] (?P<reply>\S.*)$", re.S)


@pytest.fixture(scope="module")
def demo(chat_models):
    from esc_dist.app.demo import serve_demo
    from esc_dist.chat import load_systems
    from esc_dist.config import load_recipe
    from esc_dist.dist import free_port

    # greedy decoding: the tiny planner's majority strategy, the same on every machine
    recipe = load_recipe(None, ["eval.protocol=ours", "infer.do_sample=false"])
    systems = load_systems(
        recipe,
        planner=chat_models["planner"],
        generator=chat_models["generator"],
        vanilla=chat_models["generator"],
    )
    page, url = serve_demo(systems, port=free_port(), block=False)
    yield url
    page.close()


def bubbles(driver, column: str, who: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        e.text
        for e in driver.find_elements(By.CSS_SELECTOR, f"#chat-{column} [data-testid='{who}']")
    ]


def send(driver, text: str, turns: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = WebDriverWait(driver, 60).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#message textarea")
    )
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, 120).until(
        lambda d: all(len(bubbles(d, c, "bot")) >= turns for c in ("decoupled", "vanilla"))
    )


def test_a_message_gets_a_strategy_and_a_reply_per_system(browser, demo):
    browser.get(demo)
    send(browser, "I feel so lonely since I moved to a new city.", 1)
    send(browser, "My friends are far away and I have nobody to talk to <b>at all</b>.", 2)
    decoupled = bubbles(browser, "decoupled", "bot")
    assert len(decoupled) == 2
    for text in decoupled:
        m = TAG.match(text)
        assert m, text
        assert m["tag"] in STRATEGIES  # the planner named a strategy
        assert m["reply"].strip()
    for text in bubbles(browser, "vanilla", "bot"):
        assert TAG.match(text), text
    # the seeker's words come back as text, markup and all
    assert bubbles(browser, "decoupled", "user")[1].endswith("<b>at all</b>.")
    screenshot(browser, "demo")
