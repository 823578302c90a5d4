"""A judge (or LLM scorer) that could not judge does not pass: requests that failed for good fail
the stage unless ``judge.max_failed_share`` allows their share. Against a real local HTTP server
that answers 500 and a port where nothing listens."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from esc_dist.cli import main
from esc_dist.config import JudgeConfig, load_recipe
from esc_dist.errors import ConfigError
from esc_dist.eval.llm_scores import score_predictions
from esc_dist.io import COMPLETED, read_json
from esc_dist.llm_client import LLMError
from tests.helpers import Reply, fake_model
from tests.unit.test_prefdial import GENERATOR, snapshot, write_pairs

N_REQUESTS = 4  # GENERATOR: 5 pairs, one with identical sides (settled without a request)


def dead_url() -> str:
    """An endpoint on a local port where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def judge(tmp_path, url, *extra):
    pairs = tmp_path / "pairs.jsonl"
    if not pairs.exists():
        write_pairs(pairs, GENERATOR)
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
            "judge.model=fake-judge",
            "judge.api_key_env=ESC_DIST_NO_KEY",
            "judge.max_retries=1",
            "wandb.mode=disabled",
            *extra,
        ]
    )


def always_500(body):
    return Reply(status=500, raw=b"{}")


def test_max_failed_share_is_checked():
    assert load_recipe(None, ["judge.max_failed_share=0.25"]).judge.max_failed_share == 0.25
    for bad in ("1.5", "-0.1"):
        with pytest.raises(ConfigError, match=r"'judge.max_failed_share' must be in \[0, 1\]"):
            load_recipe(None, [f"judge.max_failed_share={bad}"])


def test_endpoint_answering_500_fails_the_judge(tmp_path, server, capsys):
    server.respond = always_500
    assert judge(tmp_path, server.url) == 2
    err = capsys.readouterr().err
    assert f"judge: {N_REQUESTS} of {N_REQUESTS} requests failed for good" in err
    assert "HTTP 500" in err and "judge.max_failed_share" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "prefdial").exists()


def test_unreachable_endpoint_fails_the_judge_and_keeps_the_previous_output(
    tmp_path, server, capsys
):
    assert judge(tmp_path, server.url) == 0  # a good output first
    assert judge(tmp_path, dead_url()) == 0  # every answer is in the cache: no request is made
    before = snapshot(tmp_path / "prefdial")
    shutil.rmtree(tmp_path / "judge_cache")
    assert judge(tmp_path, dead_url()) == 2
    err = capsys.readouterr().err
    assert "requests failed for good" in err and "connection error" in err
    assert snapshot(tmp_path / "prefdial") == before  # untouched, COMPLETED included
    assert (tmp_path / "prefdial" / COMPLETED).is_file()


def test_allowed_share_passes_and_is_recorded(tmp_path, server, capsys):
    def flaky(body):  # the pair "d1-t001#s0" (its rejected reply) always fails
        if "just move on" in body["messages"][-1]["content"]:
            return always_500(body)
        return fake_model(body)

    server.respond = flaky
    assert judge(tmp_path, server.url) == 2  # 1 of 4 failed; none allowed
    assert "1 of 4 requests failed" in capsys.readouterr().err
    assert judge(tmp_path, server.url, "judge.max_failed_share=0.25") == 0
    out = tmp_path / "prefdial"
    assert (out / COMPLETED).is_file()
    manifest = read_json(out / "manifest.json")
    assert manifest["request_failures"] == 1 and manifest["judge"]["max_failed_share"] == 0.25
    stats = read_json(out / "stats.json")
    assert stats["judge"]["request_errors"] == stats["judge"]["client"]["request_failures"] == 1
    verdicts = [json.loads(line) for line in (out / "judged.jsonl").read_text().splitlines()]
    assert [v["verdict"]["reason"] for v in verdicts if v["id"] == "d1-t001#s0"] == [
        "judge_request_error"
    ]


def test_llm_scores_fail_unless_the_share_is_allowed(server):
    records = [{"id": f"t{i}", "gold_reply": "g", "pred_reply": f"reply {i}"} for i in range(4)]
    server.respond = always_500
    cfg = JudgeConfig(
        backend="openai", model="fake-judge", base_url=server.url, api_key_env="", max_retries=0
    )
    with pytest.raises(LLMError, match="LLM scores: 16 of 16 requests failed for good"):
        score_predictions(records, cfg, None)
    cfg.max_failed_share = 1.0
    out = score_predictions(records, cfg, None)
    assert out["request_failures"] == 16 and out["scored"] == 0


def test_eval_with_unreachable_llm_judge_keeps_the_previous_report(
    tmp_path, small_setup, capsys, monkeypatch
):
    from datasets import load_from_disk

    # W&B off as the overrides below say (an exported WANDB_MODE would win over them, and an
    # offline run keeps writing its logs in the report directory after the command returned)
    monkeypatch.delenv("WANDB_MODE", raising=False)

    turns = load_from_disk(str(small_setup / "data" / "turns"))["test"]
    pred = tmp_path / "predictions.jsonl"
    pred.write_text(
        "".join(
            json.dumps(
                {
                    "id": t["id"],
                    "dialogue_id": t["dialogue_id"],
                    "turn_index": t["turn_index"],
                    "gold_strategy": t["strategy"],
                    "gold_reply": t["reply"],
                    "pred_strategy": t["strategy"],
                    "pred_strategy_raw": t["strategy"],
                    "pred_reply": t["reply"],
                    "mode": "decoupled",
                }
            )
            + "\n"
            for t in turns
        )
    )
    out = tmp_path / "report"
    assert main(["eval", str(pred), "--out", str(out), "wandb.mode=disabled"]) == 0
    before = snapshot(out)
    assert (
        main(
            [
                "eval",
                str(pred),
                "--out",
                str(out),
                "--data",
                str(small_setup / "data"),
                "eval.llm_judge=true",
                "judge.backend=openai",
                f"judge.base_url={dead_url()}",
                "judge.api_key_env=ESC_DIST_NO_KEY",
                "judge.max_retries=0",
                "wandb.mode=disabled",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    n = len(turns)  # the error labels (one request a reply) are asked first
    assert f"psychological error rates: {n} of {n} requests failed for good" in err
    assert snapshot(out) == before
