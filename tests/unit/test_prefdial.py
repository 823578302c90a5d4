"""Building IPM-PrefDial from hand-written pairs files (no ESConv data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esc_dist.config import JudgeConfig
from esc_dist.errors import PairsError
from esc_dist.io import COMPLETED, read_json, sha256_file
from esc_dist.ipm import prefdial
from esc_dist.ipm.judge import EARLY_SHIFT, LACK_EMPATHY, TEMPLATE
from esc_dist.ipm.prefdial import build_prefdial, read_pairs
from esc_dist.llm_client import ChatResult
from esc_dist.strategies import STRATEGIES


def history(*texts):
    roles = ["seeker", "supporter"]
    return [
        {"role": roles[i % 2], "text": t, "strategy": None if i % 2 == 0 else "Question"}
        for i, t in enumerate(texts)
    ]


EXAM = history(
    "Hello there",
    "Hi, what would you like to talk about today?",
    "I failed my driving exam again and I feel so sad about it.",
)
EXAMS = history(
    "Hello there",
    "Hi, what would you like to talk about today?",
    "I have been stressed about my exams.",
)


def record(pid, role, hist, chosen, rejected, gold, sampled, sampled_reply, parse_error=None):
    return {
        "id": pid,
        "turn_id": pid.split("#")[0],
        "role": role,
        "prompt": [
            {"role": "system", "content": f"{role} system prompt"},
            *(
                {"role": "user" if m["role"] == "seeker" else "assistant", "content": m["text"]}
                for m in hist
            ),
        ],
        "history": hist,
        "gold_strategy": gold,
        "gold_reply": chosen if role == "generator" else "gold reply",
        "chosen": chosen,
        "rejected": rejected,
        "sampled_strategy": sampled,
        "sampled_reply": sampled_reply,
        "parse_error": parse_error,
    }


def gen(pid, chosen, rejected, gold="Reflection of feelings"):
    return record(pid, "generator", EXAM, chosen, rejected, gold, gold, rejected)


KIND = "I'm sorry, failing the driving exam twice must be hard."
GENERATOR = [
    gen("d1-t001#s0", KIND, "Come on, it's not that bad, just move on."),  # kept: LE1
    gen("d1-t001#s1", KIND, "Oh no, failing the exam again sounds upsetting."),  # no error
    gen("d1-t002#s0", "Everything will be fine, stay positive!", "Ok."),  # chosen LE2+TR2
    gen("d2-t000#s0", KIND, "Everything happens for a reason."),  # kept: LE2 + TR2
    gen("d2-t001#s0", KIND, KIND),  # identical
]

PLANNER = [
    record(
        "d3-t001#s0",
        "planner",
        EXAMS,
        "Reflection of feelings",
        "Providing Suggestions",
        "Reflection of feelings",
        "Providing Suggestions",
        None,
    ),  # kept: P-ES
    record(
        "d3-t001#s1",
        "planner",
        EXAMS,
        "Question",
        "Affirmation and Reassurance",
        "Question",
        "Affirmation and Reassurance",
        None,
    ),  # no error
    record(
        "d3-t002#s0",
        "planner",
        EXAMS,
        "Reflection of feelings",
        "Maybe a question???",
        "Reflection of feelings",
        None,
        None,
        "not a strategy name",
    ),  # unparseable
    record(
        "d3-t003#s0", "planner", EXAMS, "Information", "Others", "Information", "Others", None
    ),  # chosen P-ES
]


def write_pairs(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------
# Building


def test_generator_build(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", GENERATOR)
    out = tmp_path / "prefdial" / "generator"
    manifest = build_prefdial(pairs, out, JudgeConfig(), role="generator")

    assert (out / COMPLETED).is_file()
    assert manifest["counts"] == {"pairs_in": 5, "kept": 2, "dropped": 3, "kept_ratio": 0.4}
    assert manifest["inputs"]["pairs"]["sha256"] == sha256_file(pairs)
    assert manifest["judge"]["backend"] == "offline" and manifest["role"] == "generator"
    assert read_json(out / "manifest.json") == manifest

    judged = [json.loads(x) for x in (out / "judged.jsonl").read_text().splitlines()]
    assert [j["id"] for j in judged] == [r["id"] for r in GENERATOR]
    assert [j["verdict"]["keep"] for j in judged] == [True, False, False, True, False]
    assert judged[0]["verdict"]["rejected_errors"] == [LACK_EMPATHY]
    assert judged[3]["verdict"]["rejected_errors"] == [LACK_EMPATHY, TEMPLATE]
    kept = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert [k["id"] for k in kept] == ["d1-t001#s0", "d2-t000#s0"]
    assert kept[0] == GENERATOR[0]  # the kept pair as it came in

    stats = read_json(out / "stats.json")
    assert stats["pairs_in"] == 5 and stats["kept"] == 2 and stats["kept_ratio"] == 0.4
    # The stock chosen reply of d1-t002 also passes over the seeker's sadness (LE2).
    assert stats["errors"]["chosen"] == {LACK_EMPATHY: 1, EARLY_SHIFT: 0, TEMPLATE: 1}
    assert stats["errors"]["rejected"] == {LACK_EMPATHY: 3, EARLY_SHIFT: 0, TEMPLATE: 2}
    assert stats["errors"]["rejected_kept"] == {LACK_EMPATHY: 2, EARLY_SHIFT: 0, TEMPLATE: 1}
    assert stats["drop_reasons"] == {
        "chosen_has_error": 1,
        "identical": 1,
        "rejected_has_no_error": 1,
    }
    assert stats["confusion"]["Reflection of feelings"]["Reflection of feelings"] == 5


def test_dataset_is_trl_conversational_dpo(tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "out"
    build_prefdial(write_pairs(tmp_path / "p.jsonl", GENERATOR), out, JudgeConfig())
    ds = load_from_disk(str(out / "dataset"))
    assert len(ds) == 2
    assert set(ds.column_names) == {
        "prompt",
        "chosen",
        "rejected",
        "id",
        "turn_id",
        "role",
        "gold_strategy",
        "sampled_strategy",
    }
    row = ds[0]
    assert row["id"] == "d1-t001#s0" and row["turn_id"] == "d1-t001" and row["role"] == "generator"
    assert row["prompt"] == GENERATOR[0]["prompt"]
    assert row["chosen"] == [{"role": "assistant", "content": KIND}]
    assert row["rejected"] == [
        {"role": "assistant", "content": "Come on, it's not that bad, just move on."}
    ]
    assert row["gold_strategy"] == row["sampled_strategy"] == "Reflection of feelings"


def test_planner_stats_and_confusion(tmp_path):
    out = tmp_path / "planner"
    build_prefdial(write_pairs(tmp_path / "p.jsonl", PLANNER), out, JudgeConfig(), role="planner")
    stats = read_json(out / "stats.json")
    # kept: one judged pair and the unparseable sample (a format error, kept without judging)
    assert (stats["pairs_in"], stats["kept"], stats["kept_ratio"]) == (4, 2, 0.5)
    assert stats["errors"]["rejected"][EARLY_SHIFT] == 1
    assert stats["errors"]["chosen"][EARLY_SHIFT] == 1
    assert stats["drop_reasons"] == {"chosen_has_error": 1, "rejected_has_no_error": 1}
    assert stats["mining"] == {
        "parse_errors": 1,
        "parse_error_reasons": {"not a strategy name": 1},
        "unparseable_strategy": 1,
    }
    conf = stats["confusion"]
    assert list(conf) == list(STRATEGIES)
    assert all(list(row) == list(STRATEGIES) + ["unparseable"] for row in conf.values())
    assert conf["Reflection of feelings"]["Providing Suggestions"] == 1
    assert conf["Reflection of feelings"]["unparseable"] == 1
    assert conf["Question"]["Affirmation and Reassurance"] == 1
    assert conf["Information"]["Others"] == 1
    assert sum(sum(r.values()) for r in conf.values()) == 4
    assert sum(sum(r.values()) for r in stats["confusion_kept"].values()) == 2
    from datasets import load_from_disk

    ds = load_from_disk(str(out / "dataset"))
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Reflection of feelings"}]
    assert ds[0]["rejected"] == [{"role": "assistant", "content": "Providing Suggestions"}]


def test_empty_result_still_writes_a_dataset(tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "out"
    build_prefdial(write_pairs(tmp_path / "p.jsonl", GENERATOR[1:2]), out, JudgeConfig())
    ds = load_from_disk(str(out / "dataset"))
    assert len(ds) == 0 and "chosen" in ds.column_names
    assert read_json(out / "stats.json")["kept_ratio"] == 0.0


def test_crash_mid_build_keeps_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    build_prefdial(write_pairs(tmp_path / "a.jsonl", GENERATOR), out, JudgeConfig())
    before = snapshot(out)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prefdial, "save_dataset", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_prefdial(write_pairs(tmp_path / "b.jsonl", GENERATOR[:2]), out, JudgeConfig())
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "out"]


def test_rebuild_replaces_output(tmp_path):
    out = tmp_path / "out"
    build_prefdial(write_pairs(tmp_path / "a.jsonl", GENERATOR), out, JudgeConfig())
    build_prefdial(write_pairs(tmp_path / "b.jsonl", GENERATOR[:1]), out, JudgeConfig())
    assert read_json(out / "stats.json")["pairs_in"] == 1 and (out / COMPLETED).is_file()


# ---------------------------------------------------------------------------------------------
# Bad input


def _lines(*objs):
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs)


GOOD = GENERATOR[0]


@pytest.mark.parametrize(
    "text, role, where, problem",
    [
        (_lines(GOOD, '{"id": "broken",'), None, "line 2", "invalid JSON"),
        (_lines(GOOD, "", "[1, 2]"), None, "line 3", "must be a JSON object"),
        (
            _lines({k: v for k, v in GOOD.items() if k != "rejected"}),
            None,
            "line 1",
            "missing key(s) rejected",
        ),
        (_lines({**GOOD, "score": 1}), None, "line 1", "unexpected key(s) score"),
        (_lines({**GOOD, "role": "critic"}), None, "line 1", "unknown role 'critic'"),
        (_lines(GOOD), "planner", "line 1", "role 'generator' in a planner pairs file"),
        (
            _lines(GOOD, GENERATOR[1], GOOD),
            None,
            "line 3",
            "duplicate id 'd1-t001#s0' (first on line 1)",
        ),
        (_lines({**GOOD, "gold_strategy": "Advice"}), None, "line 1", "'gold_strategy' 'Advice'"),
        (_lines({**GOOD, "sampled_strategy": "Advice"}), None, "line 1", "'sampled_strategy'"),
        (
            _lines({**GOOD, "prompt": [{"role": "robot", "content": "x"}]}),
            None,
            "line 1",
            "prompt[0]",
        ),
        (_lines({**GOOD, "history": [{"role": "seeker"}]}), None, "line 1", "history[0]"),
        (_lines({**GOOD, "chosen": 3}), None, "line 1", "'chosen' must be a string"),
        (_lines(GOOD) + json.dumps(GENERATOR[1])[:40], None, "line 2", "truncated JSON"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, text, role, where, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PairsError) as exc:
        build_prefdial(path, tmp_path / "out", JudgeConfig(), role=role)
    msg = str(exc.value)
    assert msg.startswith(f"{path}, {where}: "), msg
    assert problem in msg, msg
    assert not (tmp_path / "out").exists()


def test_missing_file(tmp_path):
    with pytest.raises(PairsError, match="file not found"):
        read_pairs(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------------------------
# LLM backend through a stub client, W&B logging, CLI


class StubClient:
    """Answers with a fixed list of results, in order, like LLMClient.map_json."""

    def __init__(self, results):
        self.results, self.calls = results, 0

    def map_json(self, prompts):
        self.calls += len(prompts)
        return self.results[: len(prompts)]

    def stats(self):
        return {
            "requests": self.calls,
            "retries": 0,
            "cache_hits": 0,
            "parse_failures": 1,
            "request_failures": 0,
        }

    def count(self, name, n=1):
        pass


def test_openai_backend_parse_errors_are_dropped_and_counted(tmp_path):
    from esc_dist.ipm.llm_judge import _a_is_chosen

    pid = GENERATOR[0]["id"]
    rej = "A_errors" if not _a_is_chosen(pid) else "B_errors"
    other = "B_errors" if rej == "A_errors" else "A_errors"
    stub = StubClient(
        [
            ChatResult(True, data={rej: ["Lack Empathy"], other: []}),
            ChatResult(False, text="garbage", error="parse: not valid JSON"),
        ]
    )
    cfg = JudgeConfig(backend="openai", model="stub")
    out = tmp_path / "out"
    manifest = build_prefdial(
        write_pairs(tmp_path / "p.jsonl", GENERATOR[:2]), out, cfg, client=stub
    )
    stats = read_json(out / "stats.json")
    assert manifest["judge_name"] == "openai:stub" and stats["kept"] == 1
    assert stats["judge"]["parse_errors"] == 1 and stats["drop_reasons"] == {"judge_parse_error": 1}
    assert stats["judge"]["client"]["requests"] == 2


class FakeRun:
    def __init__(self):
        self.logged, self.summary = [], {}

    def log(self, data):
        self.logged.append(data)


def test_wandb_logging(tmp_path):
    import wandb

    run = FakeRun()
    build_prefdial(
        write_pairs(tmp_path / "p.jsonl", PLANNER), tmp_path / "out", JudgeConfig(), run=run
    )
    (row,) = run.logged
    assert row["judge/pairs_in"] == 4 and row["judge/kept"] == 2
    assert row["judge/errors/rejected/Early Emotion Shift"] == 1
    assert run.summary["judge/kept_ratio"] == 0.5
    table = row["judge/confusion"]
    assert isinstance(table, wandb.Table)
    assert table.columns == ["gold_strategy", *STRATEGIES, "unparseable"]
    refl = next(r for r in table.data if r[0] == "Reflection of feelings")
    assert refl[1 + STRATEGIES.index("Providing Suggestions")] == 1 and refl[-1] == 1


def _parse(argv):
    from esc_dist.cli import build_parser, split_overrides

    words, overrides = split_overrides(argv)
    args = build_parser().parse_args(words)
    args.overrides = overrides
    return args


def test_cli(tmp_path, monkeypatch, capsys):
    from tests.helpers import wait_for_offline_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    pairs = write_pairs(tmp_path / "p.jsonl", GENERATOR)
    out = tmp_path / "prefdial" / "generator"
    args = _parse(
        [
            "judge",
            "--role",
            "generator",
            "--pairs",
            str(pairs),
            "--out",
            str(out),
            "--backend",
            "offline",
        ]
    )
    assert args.func(args) == 0
    assert "kept 2" in capsys.readouterr().out
    assert read_json(out / "manifest.json")["recipe"]["judge"]["backend"] == "offline"
    (run,) = wait_for_offline_runs(out.with_name("generator.wandb") / "wandb")  # its own dir
    assert not (tmp_path / "prefdial" / "wandb").exists()
    assert run["run"]["job_type"] == "judge-generator"
    assert run["history"][0]["judge/kept"] == 2 and run["config"]["role"] == "generator"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # A planner run on a generator file: a clear error naming the file and line.
    from esc_dist.cli import main

    assert (
        main(["judge", "--role", "planner", "--pairs", str(pairs), "--out", str(tmp_path / "o2")])
        == 2
    )
    assert f"{pairs}, line 1: role 'generator'" in capsys.readouterr().err
    # The openai backend without a key for a remote endpoint.
    monkeypatch.delenv("ESC_DIST_NO_SUCH_KEY", raising=False)
    assert (
        main(
            [
                "judge",
                "--role",
                "generator",
                "--pairs",
                str(pairs),
                "--out",
                str(tmp_path / "o3"),
                "--backend",
                "openai",
                "judge.api_key_env=ESC_DIST_NO_SUCH_KEY",
            ]
        )
        == 2
    )
    assert "ESC_DIST_NO_SUCH_KEY" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# judge.balance: kept planner and vanilla pairs capped per chosen and per rejected strategy


def skewed_planner_pairs():
    """Kept-looking planner pairs whose rejected side is one-sided: 12 x Others, 7 x Providing
    Suggestions, 3 x Information, 1 x Question, 2 unparseable, over varied gold strategies."""
    rejected = (
        ["Others"] * 12
        + ["Providing Suggestions"] * 7
        + ["Information"] * 3
        + ["Question"]
        + [None] * 2
    )
    golds = [s for s in STRATEGIES if s not in ("Others",)]
    pairs = []
    for i, r in enumerate(rejected):
        gold = golds[i % 3] if i < 19 else golds[3 + i % 4]
        if gold == r:
            gold = "Reflection of feelings"
        pairs.append(
            record(
                f"d{i}-t001#s0",
                "planner",
                EXAMS,
                gold,
                r or "???",
                gold,
                r,
                None,
                None if r else "not a strategy name",
            )
        )
    return pairs


def kept_verdicts(pairs):
    return [
        {
            "id": p["id"],
            "chosen_errors": [],
            "rejected_errors": [EARLY_SHIFT],
            "keep": True,
            "reason": "kept",
            "judge": "offline",
        }
        for p in pairs
    ]


def median_cap(values):
    values = sorted(values)
    n = len(values)
    mid = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return int(-(-mid // 1))


def test_balance_caps_each_side_at_its_median():
    from collections import Counter

    from esc_dist.ipm.balance import balance

    pairs = skewed_planner_pairs()
    out, report = balance(pairs, kept_verdicts(pairs), seed=0)

    def side(p):
        return (p["gold_strategy"], p["sampled_strategy"] or "unparseable")

    chosen0 = Counter(side(p)[0] for p in pairs)
    rejected0 = Counter(side(p)[1] for p in pairs)
    caps = {"chosen": median_cap(chosen0.values()), "rejected": median_cap(rejected0.values())}
    assert report["caps"] == caps
    assert caps["rejected"] == 3  # groups 12, 7, 3, 2, 1 -> median 3
    kept = [p for p, v in zip(pairs, out) if v["keep"]]
    chosen1, rejected1 = Counter(side(p)[0] for p in kept), Counter(side(p)[1] for p in kept)
    assert max(chosen1.values()) <= caps["chosen"]
    assert max(rejected1.values()) <= caps["rejected"]
    assert rejected1["Others"] < 12 and rejected1["Providing Suggestions"] < 7
    assert report["kept_before"] == len(pairs) and report["kept_after"] == len(kept)
    # nothing dropped that fitted: every dropped pair has a side that ended at its cap
    for p, v in zip(pairs, out):
        if not v["keep"]:
            c, r = side(p)
            assert chosen1[c] == caps["chosen"] or rejected1[r] == caps["rejected"]
            assert v["reason"].startswith("balance: ")


def test_balance_is_independent_of_file_order_and_follows_the_seed():
    import random

    from esc_dist.ipm.balance import balance

    pairs = skewed_planner_pairs()

    def kept(ps, seed):
        return {p["id"] for p, v in zip(ps, balance(ps, kept_verdicts(ps), seed)[0]) if v["keep"]}

    shuffled = pairs[:]
    random.Random(1).shuffle(shuffled)
    assert kept(pairs, 0) == kept(shuffled, 0)
    assert any(kept(pairs, s) != kept(pairs, 0) for s in range(1, 6))


def test_balance_leaves_generator_pairs_and_drops_alone(tmp_path):
    from esc_dist.ipm.balance import balance

    pairs = skewed_planner_pairs() + [gen(f"g{i}-t001#s0", KIND, "Ok.") for i in range(5)]
    verdicts = kept_verdicts(pairs)
    verdicts[0] = {**verdicts[0], "keep": False, "reason": "dropped: rejected shows no error"}
    out, report = balance(pairs, verdicts, seed=0)
    assert out[0] == verdicts[0]
    assert all(v["keep"] for v in out[-5:])
    assert report["kept_before"] == len(pairs) - 1 - 5


def test_balanced_build(tmp_path):
    from datasets import load_from_disk

    pairs = skewed_planner_pairs()
    out = tmp_path / "planner"
    plain = tmp_path / "plain"
    pairs_file = write_pairs(tmp_path / "p.jsonl", pairs)
    build_prefdial(pairs_file, plain, JudgeConfig(), role="planner")
    build_prefdial(pairs_file, out, JudgeConfig(balance=True), role="planner")
    before, after = read_json(plain / "stats.json"), read_json(out / "stats.json")
    assert "balance" not in before
    bal = after["balance"]
    assert bal["kept_before"] == before["kept"] > after["kept"] == bal["kept_after"]
    assert after["drop_reasons"]["balance"] == before["kept"] - after["kept"]
    assert len(load_from_disk(str(out / "dataset"))) == after["kept"]
    judged = [json.loads(line) for line in (out / "judged.jsonl").open()]
    assert (
        sum(j["verdict"]["reason"].startswith("balance: ") for j in judged)
        == after["drop_reasons"]["balance"]
    )
    assert max(bal["rejected_after"].values()) <= bal["caps"]["rejected"]


def test_generator_pairs_are_judged_the_same_with_or_without_balance(tmp_path):
    """judge.balance does not touch a generator pairs file: same kept pairs and statistics (no
    balancing report), which is why the generator's judge stage key leaves it out."""
    pairs = [gen(f"g{i}-t001#s0", KIND, "Ok.") for i in range(5)]
    pairs_file = write_pairs(tmp_path / "g.jsonl", pairs)
    plain, bal = tmp_path / "plain", tmp_path / "balanced"
    build_prefdial(pairs_file, plain, JudgeConfig(), role="generator")
    build_prefdial(pairs_file, bal, JudgeConfig(balance=True), role="generator")
    assert read_json(bal / "stats.json") == read_json(plain / "stats.json")
    assert (bal / "pairs.jsonl").read_text() == (plain / "pairs.jsonl").read_text()
    assert JudgeConfig(balance=True, keep_unparseable=False).for_role("generator") == JudgeConfig()
