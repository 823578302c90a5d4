"""The OpenAI-compatible client, the LLM judge and the LLM reply scores end to end against a real
server: vLLM serving SmolLM2-135M-Instruct on the CPU, with an API key it checks (the
``llm_server`` fixture, tests/vllm_server.py).

A 135M model often answers something that is not the JSON asked for, so these tests check what
esc-dist guarantees whatever the model says: every item gets a verdict or scores, or is counted as
a malformed answer or a failed request, and the counts add up; answers are cached and a rerun
sends no request (shown by rerunning against a port where nothing listens); the API key is sent
(the server refuses a wrong one) but never reaches a cache file, an output or a log line.
The injected failures (429, 500, timeouts, bodies that are no JSON) are tested against the
hand-written server of tests/helpers.py (tests/unit/test_llm_client.py, test_judge_failures.py).
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import replace
from pathlib import Path

import pytest

from esc_dist.cli import main
from esc_dist.config import JudgeConfig
from esc_dist.eval.llm_scores import score_predictions
from esc_dist.io import COMPLETED, read_json
from esc_dist.ipm.judge import ERRORS, PROMPT_VERSION, judge_pairs
from esc_dist.llm_client import LLMClient, LLMError
from tests.helpers import LogCapture
from tests.unit.test_judge_failures import dead_url
from tests.unit.test_prefdial import GENERATOR, write_pairs

pytestmark = pytest.mark.llm_server

KEY_ENV = "ESC_DIST_TEST_LLAMA_KEY"
TIMEOUT = 300.0  # seconds per attempt: the server answers one request at a time, on 2 cores
# tokens an answer may take: the 135M model rambles on in prose to 512, a minute an answer
MAX_TOKENS = 48
ASKED = [p["id"] for p in GENERATOR if p["chosen"] != p["rejected"]]  # one pair is settled
SCORE_KEYS = ("n", "scored", "parse_failures", "request_failures")


@pytest.fixture
def key(monkeypatch, llm_server) -> str:
    monkeypatch.setenv(KEY_ENV, llm_server.api_key)
    return llm_server.api_key


@pytest.fixture
def logs():
    """Every log line at debug level: esc-dist's, and openai's and httpx's (through the root)."""
    cap = LogCapture()
    loggers = [logging.getLogger(n) for n in ("esc_dist", "", "openai", "httpx", "httpcore")]
    levels = [lg.level for lg in loggers]
    loggers[0].addHandler(cap)
    loggers[1].addHandler(cap)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    try:
        yield cap.lines
    finally:
        loggers[0].removeHandler(cap)
        loggers[1].removeHandler(cap)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def cfg_for(server, **kw) -> JudgeConfig:
    opts = dict(
        backend="openai",
        model=server.model,
        base_url=server.url,
        api_key_env=KEY_ENV,
        concurrency=2,
        max_retries=1,
        timeout=TIMEOUT,
        max_tokens=MAX_TOKENS,
    )
    opts.update(kw)
    return JudgeConfig(**opts)


def assert_no_secret(secret: str, root: Path, *texts) -> None:
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert secret.encode() not in p.read_bytes(), p
    for text in texts:
        assert secret not in str(text)


def ask(text: str) -> list[dict]:
    return [
        {"role": "system", "content": "Answer with one JSON object and nothing else."},
        {"role": "user", "content": text},
    ]


# ---------------------------------------------------------------------------------------------
# The client


def test_chat_call_is_answered_cached_and_reused(llm_server, key, tmp_path, logs):
    messages = ask('Is the sky blue? Answer exactly {"answer": "yes"} or {"answer": "no"}.')
    c = LLMClient(
        llm_server.url,
        llm_server.model,
        api_key_env=KEY_ENV,
        cache_dir=tmp_path / "cache",
        temperature=0.0,
        max_tokens=48,
        timeout=TIMEOUT,
        max_retries=1,
    )
    first = c.chat_json(messages)
    stats = c.stats()
    assert (stats["calls"], stats["requests"], stats["cache_hits"]) == (1, 1, 0)
    assert stats["request_failures"] == stats["retries"] == stats["timeouts"] == 0
    # An answer arrived: parsed, or counted as malformed; never a failed request.
    assert isinstance(first.text, str) and not first.cached
    assert first.ok != first.parse_failed and stats["parse_failures"] == int(first.parse_failed)
    assert first.ok == isinstance(first.data, dict)
    cached = list((tmp_path / "cache").rglob("*.json"))
    assert len(cached) == 1
    entry = read_json(cached[0])
    assert entry["answer"] == first.text and entry["model"] == llm_server.model

    again = LLMClient(
        llm_server.url,
        llm_server.model,
        api_key_env=KEY_ENV,
        cache_dir=tmp_path / "cache",
        temperature=0.0,
        max_tokens=48,
        timeout=TIMEOUT,
    )
    second = again.chat_json(messages)
    assert second.cached and (second.ok, second.data, second.text) == (
        first.ok,
        first.data,
        first.text,
    )
    assert again.stats()["requests"] == 0 and again.stats()["cache_hits"] == 1
    assert_no_secret(key, tmp_path, *logs, repr(c), first, second)


def test_wrong_key_is_refused_and_not_leaked(llm_server, monkeypatch, tmp_path, logs):
    wrong = "sk-wrong-0123456789-do-not-leak"
    monkeypatch.setenv(KEY_ENV, wrong)
    c = LLMClient(
        llm_server.url,
        llm_server.model,
        api_key_env=KEY_ENV,
        cache_dir=tmp_path / "cache",
        timeout=TIMEOUT,
    )
    with pytest.raises(LLMError) as exc:
        c.chat_json(ask("hello"))
    message = str(exc.value)
    assert "HTTP 401" in message and KEY_ENV in message
    assert c.stats()["requests"] == 1 and c.stats()["retries"] == 0  # not retried
    assert not (tmp_path / "cache").exists()  # failed requests are not cached
    text = "".join(traceback.format_exception(exc.value)) + repr(c)
    for secret in (wrong, llm_server.api_key):
        assert secret not in text and not any(secret in line for line in logs)


# ---------------------------------------------------------------------------------------------
# The judge


def check_verdicts(verdicts: list[dict], model: str) -> None:
    """What every verdict of the openai backend holds, whatever the model answered."""
    assert [v["id"] for v in verdicts] == [p["id"] for p in GENERATOR]
    for v in verdicts:
        assert v["judge"] == f"openai:{model}"
        assert set(v["chosen_errors"]) <= set(ERRORS) >= set(v["rejected_errors"])
        if v["id"] not in ASKED:
            assert v["reason"] == "identical" and not v["keep"]
        elif v["reason"] == "judge_parse_error":
            assert not v["keep"] and v["chosen_errors"] == v["rejected_errors"] == []
        else:  # a well-formed answer: the judge's rule decides
            assert v["keep"] == (not v["chosen_errors"] and bool(v["rejected_errors"]))
            assert v["reason"].startswith("kept: " if v["keep"] else "dropped: ")


def test_judge_pairs_openai(llm_server, key, tmp_path, logs):
    cfg = cfg_for(llm_server)
    client = LLMClient.from_config(cfg, tmp_path / "cache", PROMPT_VERSION)
    verdicts = judge_pairs(GENERATOR, cfg, tmp_path / "cache", client=client)
    check_verdicts(verdicts, llm_server.model)
    stats = client.stats()
    assert stats["calls"] == stats["requests"] == len(ASKED)  # no retry, nothing cached yet
    assert stats["request_failures"] == stats["retries"] == stats["cache_hits"] == 0
    malformed = sum(v["reason"] == "judge_parse_error" for v in verdicts)
    assert stats["parse_failures"] == malformed
    assert len(list((tmp_path / "cache").rglob("*.json"))) == len(ASKED)

    rerun = LLMClient.from_config(cfg, tmp_path / "cache", PROMPT_VERSION)
    assert judge_pairs(GENERATOR, cfg, tmp_path / "cache", client=rerun) == verdicts
    assert rerun.stats()["requests"] == 0 and rerun.stats()["cache_hits"] == len(ASKED)
    assert any("chat/completions" in line for line in logs)  # the requests were logged
    assert_no_secret(key, tmp_path, *logs, repr(client))


def test_judge_stage_openai(llm_server, key, tmp_path, logs, capsys):
    """`esc-dist judge --backend openai`: the stage's outputs add up; a rerun against an endpoint
    that is gone gets every answer from the cache."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", GENERATOR)

    def judge(url):
        return main(
            [
                "judge",
                "--role",
                "generator",
                "--pairs",
                str(pairs),
                "--out",
                str(tmp_path / "prefdial"),
                "--backend",
                "openai",
                f"judge.base_url={url}",
                f"judge.model={llm_server.model}",
                f"judge.api_key_env={KEY_ENV}",
                f"judge.timeout={TIMEOUT}",
                "judge.concurrency=2",
                "judge.max_retries=1",
                f"judge.max_tokens={MAX_TOKENS}",
                "wandb.mode=disabled",
            ]
        )

    assert judge(llm_server.url) == 0
    out = tmp_path / "prefdial"
    assert (out / COMPLETED).is_file()
    judged = [json.loads(line) for line in (out / "judged.jsonl").read_text().splitlines()]
    verdicts = [j["verdict"] for j in judged]
    check_verdicts(verdicts, llm_server.model)
    stats, manifest = read_json(out / "stats.json"), read_json(out / "manifest.json")
    assert stats["pairs_in"] == len(GENERATOR) == stats["kept"] + stats["dropped"]
    assert sum(stats["drop_reasons"].values()) == stats["dropped"]
    assert stats["kept"] == sum(v["keep"] for v in verdicts)
    assert len((out / "pairs.jsonl").read_text().splitlines()) == stats["kept"]
    client = stats["judge"]["client"]
    assert client["requests"] == len(ASKED) and client["request_failures"] == 0
    assert stats["judge"]["request_errors"] == manifest["request_failures"] == 0
    assert (
        stats["judge"]["parse_errors"]
        == client["parse_failures"]
        == sum(v["reason"] == "judge_parse_error" for v in verdicts)
    )
    assert manifest["judge_name"] == f"openai:{llm_server.model}"

    assert judge(dead_url()) == 0  # nothing listens there: every answer comes from the cache
    rerun = read_json(out / "stats.json")["judge"]["client"]
    assert rerun["requests"] == 0 and rerun["cache_hits"] == len(ASKED)
    assert [
        json.loads(line)["verdict"] for line in (out / "judged.jsonl").read_text().splitlines()
    ] == verdicts
    std = capsys.readouterr()
    assert_no_secret(key, tmp_path, *logs, std.out, std.err)


# ---------------------------------------------------------------------------------------------
# LLM reply scores


def test_score_predictions(llm_server, key, tmp_path, logs):
    records = [
        {
            "id": "t1",
            "gold_strategy": "Question",
            "gold_reply": "What happened at work?",
            "pred_strategy": "Question",
            "pred_reply": "How did that make you feel?",
        },
        {
            "id": "t2",
            "gold_strategy": "Reflection of feelings",
            "gold_reply": "You sound really hurt.",
            "pred_strategy": "Others",
            "pred_reply": "Just get over it.",
        },
        {
            "id": "t3",
            "gold_strategy": "Affirmation and Reassurance",
            "gold_reply": "It is brave of you to talk about it.",
            "pred_strategy": "Affirmation and Reassurance",
            "pred_reply": "I am sorry you lost your job; that sounds really hard.",
        },
    ]
    lost = [{"role": "seeker", "text": "I lost my job today.", "strategy": None}]
    histories = {"t1": lost, "t3": lost}
    cfg = cfg_for(llm_server)
    out = score_predictions(records, cfg, tmp_path / "cache", histories)
    assert out["n"] == len(records) and out["request_failures"] == 0
    # every (reply, rubric) judgement is a score or a counted malformed answer
    assert out["requests"] == 4 * len(records)
    assert out["scored_requests"] + out["parse_failures"] == out["requests"]
    assert 0 <= out["scored"] <= out["n"]
    assert list((tmp_path / "cache").rglob("*.json"))
    # The rerun needs no request: nothing listens at its endpoint, and a failed request would
    # fail the scoring (judge.max_failed_share is 0).
    again = score_predictions(
        records, replace(cfg, base_url=dead_url()), tmp_path / "cache", histories
    )
    assert {k: again[k] for k in SCORE_KEYS} == {k: out[k] for k in SCORE_KEYS}
    assert_no_secret(key, tmp_path, *logs)


def test_error_rates(llm_server, key, tmp_path, logs):
    """The LLM labeller of psychological errors against the real server: each reply labelled or
    its malformed answer counted, the rates over the labelled ones, a rerun from the cache."""
    from esc_dist.eval.psych_errors import ERROR_TYPES, error_rates

    lost = [{"role": "seeker", "text": "I lost my job today and I feel awful.", "strategy": None}]
    records = [
        {"id": f"t{i}", "pred_strategy": "Question", "pred_reply": reply}
        for i, reply in enumerate(
            [
                "How are you feeling about it?",
                "Just get over it.",
                "You should apply for new jobs right now.",
            ]
        )
    ]
    histories = {r["id"]: lost for r in records}
    cfg = cfg_for(llm_server)
    out = error_rates(records, histories, cfg, tmp_path / "cache", backend="openai")
    assert out["n"] == 3 and out["request_failures"] == 0
    assert out["labelled"] + out["parse_failures"] == 3
    if out["labelled"]:
        assert set(out["rates"]) == set(ERROR_TYPES)
        assert all(0 <= v <= 1 for v in out["rates"].values())
    again = error_rates(
        records, histories, replace(cfg, base_url=dead_url()), tmp_path / "cache", backend="openai"
    )
    assert {k: again[k] for k in ("labelled", "parse_failures", "rates", "none")} == {
        k: out[k] for k in ("labelled", "parse_failures", "rates", "none")
    }
    assert_no_secret(key, tmp_path, *logs)
