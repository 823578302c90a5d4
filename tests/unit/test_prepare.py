import json
import subprocess
import sys

import pytest
from datasets import load_from_disk

from esc_dist.config import DataConfig
from esc_dist.data.esconv import iter_turns, load_chat
from esc_dist.data.tasks import TASKS, prepare
from esc_dist.strategies import STRATEGIES, parse_tagged
from tests.helpers import TEST_DATA


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, esconv_dir):
    """`esc-dist prepare` through the CLI, as the issue's acceptance command runs it."""
    out = tmp_path_factory.mktemp("prep") / "data"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "esc_dist",
            "prepare",
            "--esconv",
            str(esconv_dir / "esconv.json"),
            "--split",
            str(esconv_dir / "splits" / "decoupledesc_split.json"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return out


def test_prepare_test_split_equals_paper_file(prepared, esconv_dir):
    paper = list(iter_turns(load_chat(esconv_dir / "decoupledesc" / "ESC_sft_test.json")))
    for task in TASKS:
        test = load_from_disk(str(prepared / task))["test"]
        assert len(test) == 1792
        assert test["strategy"] == [t.strategy for t in paper]
        assert [" ".join(r.split()) for r in test["reply"]] == [
            " ".join(t.reply.split()) for t in paper
        ]


def test_manifest(prepared, esconv_dir):
    m = json.loads((prepared / "manifest.json").read_text())
    assert (prepared / "COMPLETED").is_file()
    # the default recipe trains on the first 32 training dialogues and keeps validation and
    # test whole
    assert {k: (v["dialogues"], v["turns"]) for k, v in m["counts"].items()} == {
        "train": (32, m["counts"]["train"]["turns"]),
        "validation": (130, 1821),
        "test": (130, 1792),
    }
    assert 350 < m["counts"]["train"]["turns"] < 650
    # strategy counts of the data README for the DecoupledESC test split
    assert list(m["counts"]["test"]["strategies"].values()) == [
        365,
        125,
        154,
        157,
        283,
        276,
        98,
        334,
    ]
    import hashlib

    assert (
        m["inputs"]["esconv"]["sha256"]
        == hashlib.sha256((esconv_dir / "esconv.json").read_bytes()).hexdigest()
    )
    assert m["config"]["split"].endswith("decoupledesc_split.json")


def test_task_formats(prepared):
    v = load_from_disk(str(prepared / "vanilla"))["test"][3]
    p = load_from_disk(str(prepared / "planner"))["test"][3]
    g = load_from_disk(str(prepared / "generator"))["test"][3]
    assert v["id"] == p["id"] == g["id"]
    assert parse_tagged(v["completion"][0]["content"]) == (v["strategy"], v["reply"])
    assert p["completion"][0]["content"] == p["strategy"] in STRATEGIES
    assert g["completion"][0]["content"] == g["reply"]
    assert g["strategy"] in g["prompt"][0]["content"]
    for row in (v, p, g):
        assert row["prompt"][0]["role"] == "system"
        assert row["prompt"][-1]["role"] == "user"  # the seeker speaks last before every turn
        assert row["completion"][0]["role"] == "assistant"
    # vanilla and planner histories show earlier strategies, the generator's does not
    earlier = [m["content"] for m in v["prompt"] if m["role"] == "assistant"]
    assert earlier and all(parse_tagged(t)[0] for t in earlier)
    assert all(
        parse_tagged(m["content"])[0] is None for m in g["prompt"] if m["role"] == "assistant"
    )


def test_turns_dataset_keeps_raw_history(prepared, esconv_dir):
    from esc_dist.data.tasks import history_messages, vanilla_prompt

    turns = load_from_disk(str(prepared / "turns"))["test"]
    vanilla = load_from_disk(str(prepared / "vanilla"))["test"]
    assert turns["id"] == vanilla["id"]
    row = turns[40]
    keep = DataConfig().max_history_messages  # the default recipe's
    assert vanilla_prompt(history_messages(row["history"]), keep) == vanilla[40]["prompt"]
    assert len(row["history"]) > keep  # the raw history is kept whole
    assert {m["role"] for m in row["history"]} <= {"seeker", "supporter"}


def test_ids_are_unique_and_stable(prepared):
    ds = load_from_disk(str(prepared / "planner"))
    ids = [i for split in ds.values() for i in split["id"]]
    assert len(ids) == len(set(ids))
    row = ds["test"][0]
    assert row["id"] == f"{row['dialogue_id']}-t{row['turn_index']:03d}"


def test_max_history_and_max_dialogues(tmp_path, esconv_dir):
    cfg = DataConfig(
        esconv=str(esconv_dir / "esconv.json"),
        split=str(esconv_dir / "splits" / "decoupledesc_split.json"),
        max_dialogues={"train": 5, "validation": 2, "test": None},
        max_history_messages=3,
    )
    m = prepare(cfg, tmp_path / "d")
    assert [m["counts"][k]["dialogues"] for k in ("train", "validation", "test")] == [5, 2, 130]
    ds = load_from_disk(str(tmp_path / "d" / "generator"))
    assert max(len(r) for r in ds["train"]["prompt"]) == 1 + 3


def test_seeded_prepare(tmp_path):
    cfg = DataConfig(
        esconv=str(TEST_DATA / "tiny_esconv.json"),
        split="seeded",
        split_fractions=[0.34, 0.33, 0.33],
        split_seed=1,
    )
    m = prepare(cfg, tmp_path / "d")
    assert sum(v["dialogues"] for v in m["counts"].values()) == 3
    assert m["inputs"]["split"]["sha256"] is None


def test_failed_prepare_keeps_previous_output(tmp_path):
    cfg = DataConfig(
        esconv=str(TEST_DATA / "tiny_esconv.json"),
        split="seeded",
        split_fractions=[0.34, 0.33, 0.33],
    )
    prepare(cfg, tmp_path / "d")
    before = (tmp_path / "d" / "manifest.json").read_text()
    bad = DataConfig(esconv=str(TEST_DATA / "malformed" / "truncated.json"), split="seeded")
    with pytest.raises(Exception):
        prepare(bad, tmp_path / "d")
    assert (tmp_path / "d" / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no partial directory left


def test_cli_reports_bad_data_with_location(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "esc_dist",
            "prepare",
            "--esconv",
            str(TEST_DATA / "malformed" / "unknown_speaker.json"),
            "--split",
            "seeded",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "unknown_speaker.json, dialogue 1, utterance 2: unknown speaker 'helper'" in r.stderr
    assert not (tmp_path / "o").exists()


def test_full_split_counts(tmp_path, esconv_dir):
    cfg = DataConfig(
        esconv=str(esconv_dir / "esconv.json"),
        split=str(esconv_dir / "splits" / "decoupledesc_split.json"),
        max_dialogues={"train": None, "validation": None, "test": None},
    )
    m = prepare(cfg, tmp_path / "full")
    assert {k: (v["dialogues"], v["turns"]) for k, v in m["counts"].items()} == {
        "train": (1040, 14763),
        "validation": (130, 1821),
        "test": (130, 1792),
    }


def test_history_without_strategy_tags(tmp_path, esconv_dir):
    """data.history_strategy_tags=false: the planner's and vanilla model's prompts show the
    supporter's past turns as plain text (the paper's planner); the targets keep their form, and
    inference rebuilds the same prompts from the turns (it reads the flag from the manifest)."""
    from esc_dist.data.tasks import prompt_settings_of
    from esc_dist.infer import planner_items, vanilla_items

    cfg = DataConfig(
        esconv=str(esconv_dir / "esconv.json"),
        split=str(esconv_dir / "splits" / "decoupledesc_split.json"),
        max_dialogues={"train": 3, "validation": 1, "test": 2},
        history_strategy_tags=False,
    )
    prepare(cfg, tmp_path / "plain")
    prepare(DataConfig(**{**cfg.__dict__, "history_strategy_tags": True}), tmp_path / "tagged")
    assert prompt_settings_of(tmp_path / "plain").tagged is False
    assert prompt_settings_of(tmp_path / "tagged").tagged is True
    turns = load_from_disk(str(tmp_path / "plain" / "turns"))["test"]
    for task, items in (("planner", planner_items), ("vanilla", vanilla_items)):
        plain = load_from_disk(str(tmp_path / "plain" / task))["test"]
        tagged = load_from_disk(str(tmp_path / "tagged" / task))["test"]
        said = [m["content"] for row in plain for m in row["prompt"] if m["role"] == "assistant"]
        assert said and all(parse_tagged(t)[0] is None for t in said)
        tagged_said = [
            m["content"] for row in tagged for m in row["prompt"] if m["role"] == "assistant"
        ]
        assert len(tagged_said) == len(said) and all(parse_tagged(t)[0] for t in tagged_said)
        assert [parse_tagged(t)[1] for t in tagged_said] == said  # same words, tags dropped
        assert plain["completion"] == tagged["completion"]
        rebuilt = items(turns, None, cfg.max_history_messages, False)
        assert [it.messages for it in rebuilt] == plain["prompt"]


def test_each_task_depends_on_its_settings_only(tmp_path):
    """``PROMPT_SETTINGS`` is complete: a data setting outside a task's view leaves that task
    (and the raw turns) exactly as they were, so a run that changes it can read another run's
    copy of that task (``pipeline --reuse``). A setting the view misses would fail here."""
    from esc_dist.data.tasks import PROMPT_SETTINGS, settings_view

    base = DataConfig(
        esconv=str(TEST_DATA / "tiny_esconv.json"),
        split="seeded",
        split_fractions=[0.34, 0.33, 0.33],
        max_history_messages=4,
    )
    changes = {
        "history_strategy_tags": False,
        "planner_prompt": "transcript",
        "max_history_messages": 2,
    }
    assert set(changes) == {k for keys in PROMPT_SETTINGS.values() for k in keys}
    prepare(base, tmp_path / "base")

    def rows(out, task):
        ds = load_from_disk(str(out / task))
        return {split: ds[split].to_list() for split in ds}

    for key, value in changes.items():
        other = DataConfig(**{**base.__dict__, key: value})
        prepare(other, tmp_path / key)
        for task in (*TASKS, "turns"):
            same = rows(tmp_path / "base", task) == rows(tmp_path / key, task)
            in_view = settings_view(base, [task]) != settings_view(other, [task])
            # outside the view: the same rows; inside: the setting shows in this data
            assert same != in_view, (key, task)
