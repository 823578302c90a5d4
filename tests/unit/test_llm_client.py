"""The OpenAI-compatible client, the LLM judge and the LLM reply scores, against a local server
(``tests.helpers.FakeServer``: each request is answered by ``server.respond(body)``, which by
default plays a fake judge model).
"""

from __future__ import annotations

import json
import logging
import time
import traceback

import pytest

from esc_dist.config import JudgeConfig
from esc_dist.eval.llm_scores import (
    DIMENSIONS,
    PROTOCOL,
    parse_score,
    score_messages,
    score_predictions,
)
from esc_dist.ipm.judge import judge_pairs
from esc_dist.llm_client import JSONAnswerError, LLMClient, LLMError, parse_json_answer
from tests.helpers import LogCapture, Reply, fake_model

KEY_ENV = "ESC_DIST_TEST_JUDGE_KEY"
SECRET = "sk-test-0123456789-do-not-leak"


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def client(server, tmp_path=None, **kw) -> LLMClient:
    opts = dict(
        api_key_env=KEY_ENV,
        concurrency=4,
        max_retries=3,
        timeout=5.0,
        cache_dir=(tmp_path / "cache") if tmp_path else None,
        base_delay=0.001,
        max_delay=0.01,
    )
    opts.update(kw)
    return LLMClient(server.url, "fake-judge", **opts)


def cfg_for(server, **kw) -> JudgeConfig:
    return JudgeConfig(
        backend="openai", model="fake-judge", base_url=server.url, api_key_env=KEY_ENV, **kw
    )


def ask(text="hello"):
    return [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": text}]


SAD = [
    {"role": "seeker", "text": "Hi", "strategy": None},
    {"role": "supporter", "text": "Hello, how are you?", "strategy": "Question"},
    {"role": "seeker", "text": "I feel sad since my friend moved away.", "strategy": None},
]


def pair(pid, chosen, rejected, role="generator"):
    return {
        "id": pid,
        "turn_id": pid.split("#")[0],
        "role": role,
        "prompt": [{"role": "system", "content": "s"}],
        "history": SAD,
        "gold_strategy": "Reflection of feelings",
        "gold_reply": chosen,
        "chosen": chosen,
        "rejected": rejected,
        "sampled_strategy": "Reflection of feelings",
        "sampled_reply": rejected,
        "parse_error": None,
    }


# ---------------------------------------------------------------------------------------------
# Parsing


def test_parse_json_answer():
    assert parse_json_answer('{"a": 1}') == {"a": 1}
    assert parse_json_answer('```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    assert parse_json_answer('```\n{"a": 1}\n```') == {"a": 1}
    for bad in ('Here you go: {"a": 1}', "[1, 2]", '{"a": 1', "", "```json\n{]\n```"):
        with pytest.raises(JSONAnswerError):
            parse_json_answer(bad)


# ---------------------------------------------------------------------------------------------
# Requests


def test_well_formed_answers_and_request_shape(server, key):
    c = client(server)
    res = c.chat_json(ask("A: fine\nB: BAD"))
    assert res.ok and res.data == {"A_errors": [], "B_errors": ["Template Response"]}
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "fake-judge"
    assert req["body"]["messages"] == ask("A: fine\nB: BAD")
    assert c.stats()["requests"] == 1 and c.stats()["retries"] == 0


def test_judge_pairs_openai(server, key, tmp_path):
    pairs = [
        pair("a#s0", "Losing a friend nearby is hard.", "BAD reply"),
        pair("b#s0", "That sounds lonely.", "I hear you, that is sad."),
        pair("c#s0", "BAD chosen", "BAD rejected"),
        pair("d#s0", "Moving apart hurts.", "MALFORMED please"),
    ]
    verdicts = judge_pairs(
        pairs, cfg_for(server), tmp_path / "cache", client=client(server, tmp_path)
    )
    by = {v["id"]: v for v in verdicts}
    assert [v["id"] for v in verdicts] == ["a#s0", "b#s0", "c#s0", "d#s0"]
    assert by["a#s0"]["keep"] and by["a#s0"]["rejected_errors"] == ["Template Response"]
    assert by["a#s0"]["chosen_errors"] == [] and by["a#s0"]["judge"] == "openai:fake-judge"
    assert not by["b#s0"]["keep"] and by["b#s0"]["rejected_errors"] == []
    assert not by["c#s0"]["keep"] and by["c#s0"]["chosen_errors"] == ["Template Response"]
    assert not by["d#s0"]["keep"] and by["d#s0"]["reason"] == "judge_parse_error"


def test_malformed_answers_are_counted_not_raised(server, key):
    server.script = [
        Reply(content="not json at all"),
        Reply(content='{"A_errors": ["Rudeness"], "B_errors": []}'),
        Reply(raw=b"<html>oops</html>"),
    ]
    pairs = [
        pair("x#s0", "fine", "fine too"),
        pair("y#s0", "ok", "also ok"),
        pair("z#s0", "one", "two"),
    ]
    c = client(server, concurrency=1)
    # one request in three fails for good: allowed here (by default it fails the judge)
    verdicts = judge_pairs(pairs, cfg_for(server, max_failed_share=0.5), None, client=c)
    # Not JSON, and JSON naming an unknown error: parse errors; a body that is no chat
    # completion at all: a failed request.
    assert [v["reason"] for v in verdicts] == [
        "judge_parse_error",
        "judge_parse_error",
        "judge_request_error",
    ]
    assert not any(v["keep"] for v in verdicts)
    assert c.stats()["parse_failures"] == 2 and c.stats()["request_failures"] == 1


def test_plain_text_answers_share_cache_and_retries(server, key, tmp_path):
    c = client(server, tmp_path, concurrency=1)
    server.script = [
        Reply(status=500, raw=b"{}"),
        Reply(content=" 4.\n"),
        Reply(content="not json, fine here"),
    ]
    results = c.map_text([ask("one"), ask("two"), ask("one")])
    assert [r.ok for r in results] == [True, True, True]
    assert [r.text for r in results] == [" 4.\n", "not json, fine here", " 4.\n"]
    assert all(r.data is None for r in results)
    assert c.stats()["retries"] == 1 and c.stats()["requests"] == 3  # "one" asked once
    assert all(r["body"]["temperature"] == 0 for r in server.requests)
    c2 = client(server, tmp_path)
    again = c2.map_text([ask("one"), ask("two")])
    assert [r.text for r in again] == [" 4.\n", "not json, fine here"]
    assert all(r.cached for r in again) and c2.stats()["requests"] == 0


def test_parse_failure_counter(server, key):
    c = client(server, concurrency=1)
    server.script = [Reply(content="nope"), Reply(content="[1]")]
    results = c.map_json([ask("one"), ask("two"), ask("A: x\nB: y")])
    assert [r.ok for r in results] == [False, False, True]
    assert results[0].parse_failed and results[1].parse_failed
    assert c.stats()["parse_failures"] == 2


def test_429_and_500_are_retried(server, key):
    c = client(server, max_retries=3)
    server.script = [
        Reply(status=429, raw=b"{}"),
        Reply(status=500, raw=b"{}"),
        Reply(status=503, raw=b"{}"),
    ]
    res = c.chat_json(ask("A: x\nB: y"))
    assert res.ok
    s = c.stats()
    assert s["retries"] == 3 and s["requests"] == 4 and s["request_failures"] == 0


def test_retries_are_bounded(server, key):
    c = client(server, max_retries=2)
    server.script = [Reply(status=500, raw=b"{}") for _ in range(5)]
    res = c.chat_json(ask())
    assert not res.ok and "gave up after 3 attempts" in res.error
    assert c.stats()["requests"] == 3 and c.stats()["retries"] == 2
    assert c.stats()["request_failures"] == 1


def test_retry_after_is_honoured(server, key):
    c = client(server, max_retries=2, base_delay=0.0, max_delay=5.0)
    server.script = [Reply(status=429, raw=b"{}", headers={"Retry-After": "0.4"})]
    t0 = time.monotonic()
    assert c.chat_json(ask("A: x\nB: y")).ok
    assert time.monotonic() - t0 >= 0.4


def test_client_errors_are_not_retried(server, key):
    c = client(server)
    server.script = [Reply(status=400, raw=b'{"error": "bad"}')]
    res = c.chat_json(ask())
    assert not res.ok and res.error.startswith("request: HTTP 400")
    assert c.stats()["requests"] == 1 and c.stats()["retries"] == 0


def test_slow_response_times_out_then_retries(server, key):
    c = client(server, timeout=0.3, max_retries=2)
    server.script = [Reply(content="{}", delay=1.0)]
    res = c.chat_json(ask("A: x\nB: y"))
    assert res.ok and res.data == {"A_errors": [], "B_errors": []}
    s = c.stats()
    assert s["timeouts"] == 1 and s["retries"] == 1 and s["requests"] == 2


def test_always_slow_fails_after_retries(server, key):
    c = client(server, timeout=0.2, max_retries=1)
    server.respond = lambda body: Reply(content="{}", delay=0.6)
    t0 = time.monotonic()
    res = c.chat_json(ask())
    assert not res.ok and "timeout" in res.error and "2 attempts" in res.error
    assert c.stats()["timeouts"] == 2 and c.stats()["request_failures"] == 1
    assert time.monotonic() - t0 < 2.0


def test_concurrency_limit(server, key):
    c = client(server, concurrency=2)
    server.respond = lambda body: Reply(content="{}", delay=0.1)
    results = c.map_json([ask(f"q{i}") for i in range(6)])
    assert all(r.ok for r in results)
    assert server.max_inflight <= 2
    assert c.stats()["requests"] == 6


def test_identical_prompts_are_asked_once(server, key):
    c = client(server)
    results = c.map_json([ask("A: x\nB: y")] * 3)
    assert all(r.ok for r in results) and len(server.requests) == 1


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_makes_a_rerun_free(server, key, tmp_path):
    prompts = [ask(f"A: item {i}\nB: BAD {i}") for i in range(5)]
    first = client(server, tmp_path).map_json(prompts)
    assert len(server.requests) == 5
    c2 = client(server, tmp_path)
    second = c2.map_json(prompts)
    assert len(server.requests) == 5  # zero new requests
    assert c2.stats()["cache_hits"] == 5 and c2.stats()["requests"] == 0
    assert [r.data for r in first] == [r.data for r in second] and all(r.cached for r in second)
    # The key includes the model and the prompt version.
    c3 = client(server, tmp_path, prompt_version="v2")
    c3.map_json(prompts[:1])
    assert len(server.requests) == 6


def test_cache_survives_a_failed_batch(server, key, tmp_path):
    """Answers received before a failure are on disk; the rerun asks only for the rest."""
    prompts = [ask(f"A: item {i}\nB: y") for i in range(4)]

    def flaky(body):
        if "item 2" in body["messages"][-1]["content"]:
            return Reply(status=500, raw=b"{}")
        return fake_model(body)

    server.respond = flaky
    res = client(server, tmp_path, max_retries=1).map_json(prompts)
    assert [r.ok for r in res] == [True, True, False, True]
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 3
    server.respond = fake_model
    n = len(server.requests)
    c = client(server, tmp_path)
    assert all(r.ok for r in c.map_json(prompts))
    assert len(server.requests) == n + 1 and c.stats()["cache_hits"] == 3
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_judge_rerun_uses_cache(server, key, tmp_path):
    pairs = [pair(f"p{i}#s0", f"That is sad {i}.", f"BAD {i}") for i in range(3)]
    cfg = cfg_for(server)
    a = judge_pairs(pairs, cfg, tmp_path / "cache", client=client(server, tmp_path))
    n = len(server.requests)
    c = client(server, tmp_path)
    b = judge_pairs(pairs, cfg, tmp_path / "cache", client=c)
    assert a == b and len(server.requests) == n and c.stats()["cache_hits"] == 3


# ---------------------------------------------------------------------------------------------
# The API key


def test_api_key_is_sent_but_never_leaked(server, key, tmp_path):
    cap = LogCapture()
    logger = logging.getLogger("esc_dist")
    old_level = logger.level
    logger.addHandler(cap)
    logger.setLevel(logging.DEBUG)
    try:
        c = client(server, tmp_path, max_retries=1)
        server.script = [Reply(status=500, raw=b"{}")]
        assert c.chat_json(ask("A: x\nB: y")).ok  # one retry: logged at debug level
        server.script = [Reply(status=500, raw=b"{}"), Reply(status=500, raw=b"{}")]
        failed = c.chat_json(ask("other"))
        assert not failed.ok
        server.script = [Reply(status=401, raw=b'{"error": "invalid key"}')]
        with pytest.raises(LLMError) as exc:
            c.chat_json(ask("third"))
    finally:
        logger.removeHandler(cap)
        logger.setLevel(old_level)
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert cap.lines, "expected debug lines about the retry"
    assert not any(SECRET in line for line in cap.lines)
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(encoding="utf-8")
    text = "".join(traceback.format_exception(exc.value)) + repr(exc.value) + str(failed)
    assert SECRET not in text and KEY_ENV in str(exc.value)
    assert SECRET not in repr(c) and SECRET not in str(vars(c))


def test_missing_key(monkeypatch, server):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(LLMError, match=KEY_ENV):
        LLMClient("https://api.example.com/v1", "m", api_key_env=KEY_ENV)
    # A local server (e.g. vLLM) may run without a key; no Authorization header is sent then.
    c = client(server)
    assert c.chat_json(ask("A: x\nB: y")).ok
    assert "Authorization" not in server.requests[0]["headers"]


# ---------------------------------------------------------------------------------------------
# LLM reply scores


def dimension_of(body) -> str:
    """The dimension a scoring request asks about (the rubric's first word)."""
    return body["messages"][0]["content"].split("\n\n")[1].split(":")[0].lower()


def candidate_of(body) -> str:
    return body["messages"][-1]["content"].split("Candidate reply to rate:\n")[1].split("\n\n")[0]


LOST = [
    {"role": "seeker", "text": "Hi there", "strategy": None},
    {"role": "supporter", "text": "Hello, what is on your mind?", "strategy": "Question"},
    {"role": "seeker", "text": "I lost my keys and my job on the same day.", "strategy": None},
]


def scored_records(n=3):
    return [
        {
            "id": f"t{i}",
            "gold_strategy": "Question",
            "gold_reply": f"GOLD reference {i}",
            "pred_strategy": "Question",
            "pred_reply": f"candidate reply number {i}" + "!" * i,
        }
        for i in range(n)
    ]


def test_parse_score_is_strict():
    for text, v in (
        ("4", 4.0),
        (" 3 ", 3.0),
        ("4.", 4.0),
        ("0", 0.0),
        ("5", 5.0),
        ("3.5", 3.5),
        ("\n2.\n", 2.0),
    ):
        assert parse_score(text) == v
    for bad in ("", "Score: 4", "**4**", "4/5", "6", "5.5", "four", "4 out of 5", "-1", "4, 5"):
        with pytest.raises(ValueError):
            parse_score(bad)


def test_four_rubric_prompts_carry_reference_and_last_seeker_message(server, key):
    records = scored_records(1)
    out = score_predictions(
        records, cfg_for(server), None, {"t0": LOST}, client=client(server), keep_per_item=True
    )
    assert out["protocol"] == PROTOCOL == "four-rubric-with-reference"
    assert len(server.requests) == out["requests"] == 4
    assert sorted(dimension_of(r["body"]) for r in server.requests) == sorted(DIMENSIONS)
    for r in server.requests:
        body = r["body"]
        assert body["temperature"] == 0  # greedy judging
        user = body["messages"][-1]["content"]
        assert "Reference reply (by a human supporter):\nGOLD reference 0\n" in user
        assert "The seeker's last message:\nI lost my keys and my job on the same day.\n" in user
        assert "Supporter [Question]: Hello, what is on your mind?" in user  # the context
        assert candidate_of(body) == "candidate reply number 0"
        system = body["messages"][0]["content"]
        assert all(f"{level} - " in system for level in range(6))  # a level-by-level rubric
    assert out["items"] == {"t0": dict.fromkeys(DIMENSIONS, 4.0)}
    assert out["scored"] == 1 and out["scored_requests"] == 4
    assert out["missing"] == {"history": 0, "reference": 0}
    # without history or reference the prompt says so and the output counts it
    msgs = score_messages("empathy", None, None, "ok")
    assert msgs[-1]["content"].count("(not available)") == 3


def test_malformed_answer_for_one_dimension_keeps_the_other_three(server, key):
    def respond(body):
        if dimension_of(body) == "helpfulness":
            return Reply(content="Score: 4")
        return fake_model(body)

    server.respond = respond
    records = scored_records(3)
    c = client(server)
    out = score_predictions(
        records,
        cfg_for(server),
        None,
        {r["id"]: LOST for r in records},
        client=c,
        keep_per_item=True,
    )
    assert out["n"] == 3 and out["requests"] == 12
    assert out["parse_failures"] == 3 and out["request_failures"] == 0
    assert c.stats()["parse_failures"] == 3
    assert out["scored"] == 0 and out["scored_requests"] == 9  # no reply has all four
    assert out["counts"] == {"fluency": 3, "professionalism": 3, "empathy": 3, "helpfulness": 0}
    assert out["means"] == {
        "fluency": 4.0,
        "professionalism": 4.0,
        "empathy": 4.0,
        "helpfulness": None,
    }
    for scores in out["items"].values():
        assert scores == {
            "fluency": 4.0,
            "professionalism": 4.0,
            "empathy": 4.0,
            "helpfulness": None,
        }


def _varied(body) -> Reply:
    """A score that depends on the dimension and the candidate, so that means can be checked."""
    dim, cand = dimension_of(body), candidate_of(body)
    if "MALFORMED" in cand:
        return Reply(content="I would say four")
    return Reply(
        content=f"{(len(cand) + DIMENSIONS.index(dim)) % 6}" + ("." if "!" in cand else "")
    )


def test_means_match_an_independent_computation_and_rerun_is_free(server, key, tmp_path):
    records = scored_records(5) + [{"id": "bad", "gold_reply": "g", "pred_reply": "MALFORMED"}]
    server.respond = _varied
    histories = {r["id"]: LOST for r in records}
    first = score_predictions(
        records,
        cfg_for(server),
        tmp_path / "cache",
        histories,
        client=client(server, tmp_path),
        keep_per_item=True,
    )
    expected = {}
    for k, dim in enumerate(DIMENSIONS):
        vals = [(len(r["pred_reply"]) + k) % 6 for r in records[:5]]
        expected[dim] = pytest.approx(sum(vals) / len(vals), abs=1e-4)
    assert first["means"] == expected
    assert first["counts"] == dict.fromkeys(DIMENSIONS, 5)
    assert first["scored"] == 5 and first["parse_failures"] == 4
    assert first["items"]["bad"] == dict.fromkeys(DIMENSIONS)
    assert len(server.requests) == first["requests"] == 24
    # A second run on the same cache asks nothing and gives the same scores.
    c = client(server, tmp_path)
    second = score_predictions(
        records, cfg_for(server), tmp_path / "cache", histories, client=c, keep_per_item=True
    )
    assert len(server.requests) == 24 and c.stats()["requests"] == 0
    assert c.stats()["cache_hits"] == 24
    assert {k: v for k, v in second.items() if k != "client"} == {
        k: v for k, v in first.items() if k != "client"
    }


def test_score_predictions_out_of_range_and_cache(server, key, tmp_path):
    records = [
        {"id": "t1", "gold_reply": "g", "pred_reply": "How did that feel?"},
        {"id": "t2", "gold_reply": "g", "pred_reply": "BAD reply"},
        {"id": "t3", "gold_reply": "g", "pred_reply": "MALFORMED"},
    ]
    cfg = cfg_for(server)
    out = score_predictions(
        records,
        cfg,
        tmp_path / "cache",
        {"t1": LOST},
        client=client(server, tmp_path),
        keep_per_item=True,
    )
    assert out["n"] == 3 and out["scored"] == 2 and out["parse_failures"] == 4
    assert out["means"] == {
        "fluency": 4.0,
        "professionalism": 4.0,
        "empathy": 2.5,
        "helpfulness": 4.0,
    }
    assert out["counts"] == dict.fromkeys(DIMENSIONS, 2)
    assert out["items"]["t3"] == dict.fromkeys(DIMENSIONS)
    assert out["missing"] == {"history": 2, "reference": 0}
    # Out-of-range scores are malformed too; the rerun of the rest comes from the cache.
    server.script = [Reply(content="9") for _ in range(4)]
    c = client(server, tmp_path, concurrency=1)
    out2 = score_predictions(
        records + [{"id": "t4", "gold_reply": "g", "pred_reply": "new"}],
        cfg,
        None,
        {"t1": LOST},
        client=c,
    )
    assert out2["parse_failures"] == 8 and out2["scored"] == 2
    assert c.stats()["cache_hits"] == 12 and c.stats()["requests"] == 4


def test_eval_llm_judge_scores(server, key, small_setup, tmp_path, capsys):
    """`esc-dist eval` with eval.llm_judge=true: every reply scored with its dialogue history, the
    means in report.json, the key in no file written."""
    from datasets import load_from_disk

    from esc_dist.cli import main

    turns = load_from_disk(str(small_setup / "data" / "turns"))["test"]
    pred = tmp_path / "predictions.jsonl"
    rows = [
        {
            "id": t["id"],
            "dialogue_id": t["dialogue_id"],
            "turn_index": t["turn_index"],
            "gold_strategy": t["strategy"],
            "gold_reply": t["reply"],
            "pred_strategy": t["strategy"],
            "pred_strategy_raw": t["strategy"],
            "pred_reply": "BAD reply" if i == 0 else t["reply"],
            "mode": "decoupled",
        }
        for i, t in enumerate(turns)
    ]
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report"
    common = [
        str(pred),
        "--out",
        str(out),
        "eval.llm_judge=true",
        "judge.backend=openai",
        f"judge.base_url={server.url}",
        "judge.model=fake-judge",
        f"judge.api_key_env={KEY_ENV}",
        "wandb.mode=disabled",
    ]
    assert main(["eval", *common]) == 2
    assert "eval.llm_judge needs --data DIR" in capsys.readouterr().err
    assert main(["eval", *common, "--data", str(small_setup / "data")]) == 0
    report = json.loads((out / "report.json").read_text())
    scores = report["llm_scores"]
    n = len(rows)
    assert scores["n"] == scores["scored"] == n and scores["parse_failures"] == 0
    assert scores["means"]["empathy"] == pytest.approx(round((4 * (n - 1) + 1) / n, 4))
    assert scores["means"]["fluency"] == 4.0
    # each request carries the history of its own turn
    last = turns[n - 1]["history"][-1]["text"].strip()
    assert any(last in r["body"]["messages"][-1]["content"] for r in server.requests)
    # and one request a reply for its psychological errors (the "BAD" one: a Template Response)
    assert len(server.requests) == scores["requests"] + n == 5 * n
    errors = report["psych_errors"]["openai"]
    assert errors["labelled"] == n and errors["counts"]["Template Response"] == 1
    assert errors["rates"]["Emotion Misread"] == 0.0 and errors["any_error"] == round(1 / n, 4)
    assert report["psych_errors"]["offline"]["rates"]["Emotion Misread"] is None  # not seen
    assert scores["protocol"] == "four-rubric-with-reference"
    assert scores["missing"] == {"history": 0, "reference": 0}
    for f in out.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="ignore"), f
