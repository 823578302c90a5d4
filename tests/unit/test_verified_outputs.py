""" "Complete" means verified: an output whose files no longer match their manifest (changed or
cut) is made again by its stage (one log line says so) and stops a stage that reads it with a
one-line DataError naming the file and the stage to rerun."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from esc_dist import io
from esc_dist.cli import main
from esc_dist.config import DataConfig, JudgeConfig
from esc_dist.errors import DataError
from esc_dist.io import (
    COMPLETED,
    atomic_write_json,
    mark_completed,
    output_record,
    read_json,
    require_verified,
    verify_outputs,
    write_manifest,
)
from esc_dist.ipm.prefdial import build_prefdial
from tests.helpers import TEST_DATA
from tests.unit.test_prefdial import GENERATOR, write_pairs


def cut(path: Path, keep: float = 1 / 3) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def mining_output(directory: Path, fingerprint: str = "fp") -> Path:
    """A hand-made mining output: pairs.jsonl, its manifest (with the file's sha256), COMPLETED."""
    directory.mkdir(parents=True, exist_ok=True)
    write_pairs(directory / "pairs.jsonl", GENERATOR)
    write_manifest(
        directory,
        {
            "stage": "mine",
            "fingerprint": fingerprint,
            "outputs": {"pairs": output_record(directory, "pairs.jsonl")},
        },
    )
    mark_completed(directory)
    return directory / "pairs.jsonl"


# ---------------------------------------------------------------------------------------------
# The one check


def test_verify_outputs_on_hand_made_manifests(tmp_path):
    assert verify_outputs(tmp_path) is None  # no manifest: nothing to check
    pairs = mining_output(tmp_path / "mine")
    assert verify_outputs(pairs.parent) is None
    cut(pairs)
    problem = verify_outputs(pairs.parent)
    assert problem == (f"{pairs} does not match its manifest (sha256): the file was changed or cut")
    pairs.unlink()
    assert verify_outputs(pairs.parent) == f"{pairs} is missing (its manifest lists it)"
    (pairs.parent / "manifest.json").write_text('{"stage": "mi')
    assert "manifest.json is not readable JSON" in verify_outputs(pairs.parent)


def test_one_changed_byte_is_found(tmp_path):
    pairs = mining_output(tmp_path / "mine")
    data = bytearray(pairs.read_bytes())
    data[len(data) // 2] ^= 1
    pairs.write_bytes(bytes(data))
    assert "does not match its manifest (sha256)" in verify_outputs(pairs.parent)


def test_big_files_are_checked_by_size_and_edges(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "BIG_FILE", 1000)
    weights = tmp_path / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(bytes(range(256)) * 20)
    (weights.parent / "config.json").write_text("{}")
    write_manifest(
        weights.parent, {"stage": "sft", "outputs": io.directory_outputs(weights.parent)}
    )
    rec = read_json(weights.parent / "manifest.json")["outputs"]["model.safetensors"]
    assert rec["size"] == 5120 and "edges_sha256" in rec and "sha256" not in rec
    assert verify_outputs(weights.parent) is None
    cut(weights, 0.5)
    assert "does not match its manifest (size and edges)" in verify_outputs(weights.parent)
    with pytest.raises(DataError, match=r"rerun `esc-dist sft`"):
        io.model_fingerprint(weights.parent)  # what every stage reading a model computes


# ---------------------------------------------------------------------------------------------
# Consumers: one line naming the file and the stage to rerun


def test_judge_reading_cut_mined_pairs(tmp_path, capsys):
    pairs = mining_output(tmp_path / "ipm" / "mine-generator")
    cut(pairs)
    assert (
        main(
            [
                "judge",
                "--role",
                "generator",
                "--pairs",
                str(pairs),
                "--out",
                str(tmp_path / "prefdial"),
                "wandb.mode=disabled",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err == (
        f"esc-dist judge: error: {pairs} does not match its manifest (sha256): the "
        "file was changed or cut; rerun `esc-dist mine`\n"
    )
    assert not (tmp_path / "prefdial").exists()


def test_dpo_reading_a_cut_prefdial(tmp_path):
    from esc_dist.train.dpo import load_pairs

    out = tmp_path / "prefdial"
    build_prefdial(write_pairs(tmp_path / "p.jsonl", GENERATOR), out, JudgeConfig())
    outputs = read_json(out / "manifest.json")["outputs"]
    assert {"judged.jsonl", "pairs.jsonl", "stats.json"} <= set(outputs)
    assert any(name.startswith("dataset/") for name in outputs)
    assert len(load_pairs(out)) == 2
    cut(out / "pairs.jsonl")
    with pytest.raises(
        DataError,
        match=r"pairs.jsonl does not match its manifest \(sha256\): "
        r"the file was changed or cut; rerun `esc-dist judge`",
    ):
        load_pairs(out)


def test_stages_reading_cut_prepared_data(tmp_path):
    from esc_dist.data.tasks import load_task, prepare

    out = tmp_path / "data"
    prepare(
        DataConfig(
            esconv=str(TEST_DATA / "tiny_esconv.json"),
            split="seeded",
            split_fractions=[0.34, 0.33, 0.33],
            split_seed=1,
        ),
        out,
    )
    assert load_task(out, "planner")["train"].num_rows > 0
    arrow = next((out / "planner" / "train").glob("*.arrow"))
    assert f"planner/train/{arrow.name}" in read_json(out / "manifest.json")["outputs"]
    cut(arrow)
    with pytest.raises(
        DataError,
        match=rf"{arrow.name} does not match its manifest .*rerun "
        r"`esc-dist prepare`",
    ):
        load_task(out, "turns")


def test_compare_reading_a_cut_report(tmp_path, capsys):
    from esc_dist.eval.compare import load_report
    from esc_dist.eval.report import evaluate
    from tests.unit.test_eval_report import GOLD, HYPS, PRED, REFS, _row, _write

    pred = _write(
        tmp_path / "p.jsonl",
        [_row(i, g, p, HYPS[i % 3], REFS[i % 3]) for i, (g, p) in enumerate(zip(GOLD, PRED))],
    )
    evaluate(pred, tmp_path / "report", name="x")
    assert set(read_json(tmp_path / "report" / "manifest.json")["outputs"]) == {
        "report.json",
        "report.md",
        "confusion.png",
        "preferences.png",
    }
    assert load_report(tmp_path / "report")["name"] == "x"
    cut(tmp_path / "report" / "report.json", 0.9)
    assert (
        main(
            [
                "compare",
                str(tmp_path / "report"),
                "--out",
                str(tmp_path / "cmp"),
                "wandb.mode=disabled",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "report.json does not match its manifest (sha256)" in err
    assert "rerun `esc-dist eval`" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The stage itself: made again


def test_generation_output_cut_is_made_again(tmp_path, caplog):
    from esc_dist.generation.output import claim_output

    pairs = mining_output(tmp_path / "mine", fingerprint="fp")
    job = {"stage": "mine", "fingerprint": "fp"}
    assert claim_output(pairs.parent, job, "mine planner")["fingerprint"] == "fp"
    cut(pairs)
    caplog.set_level(logging.INFO, logger="esc_dist")
    assert claim_output(pairs.parent, job, "mine planner") is None  # runs (resumes) again
    lines = [r.getMessage() for r in caplog.records if "making the output again" in r.getMessage()]
    assert lines == [
        f"mine planner: {pairs} does not match its manifest (sha256): the file was "
        "changed or cut; making the output again"
    ]
    assert read_json(pairs.parent / "job.json") == job


def test_pipeline_reruns_a_stage_whose_output_was_cut(tmp_path, caplog):
    from esc_dist import pipeline

    pairs = mining_output(tmp_path / "run" / "ipm" / "mine-planner")
    stage = pipeline.Stage("mine-planner", ["mine"], pairs.parent, ("mine",))
    pipeline.mark_current(stage, "k", 1.0)
    assert pipeline.is_current(stage, "k")
    cut(pairs)
    caplog.set_level(logging.INFO, logger="esc_dist")
    assert not pipeline.is_current(stage, "k")
    assert any(
        "mine-planner:" in r.getMessage() and "it runs again" in r.getMessage()
        for r in caplog.records
    )


def test_prepare_cut_is_stale_for_the_pipeline(tmp_path):
    from esc_dist import pipeline
    from esc_dist.data.tasks import prepare

    out = tmp_path / "data"
    prepare(DataConfig(esconv=str(TEST_DATA / "tiny_esconv.json"), split="seeded"), out)
    stage = pipeline.Stage("prepare", ["prepare"], out, ("data",))
    pipeline.mark_current(stage, "k", 1.0)
    assert pipeline.is_current(stage, "k")
    cut(next((out / "turns" / "train").glob("*.arrow")), 0.5)
    assert not pipeline.is_current(stage, "k")


def test_require_verified_without_a_stage_name(tmp_path):
    (tmp_path / "f.txt").write_text("abc")
    atomic_write_json(
        tmp_path / "manifest.json", {"outputs": {"f": {"path": "f.txt", "sha256": "0" * 64}}}
    )
    with pytest.raises(DataError, match="; rerun the stage that wrote it$"):
        require_verified(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["outputs"]
    assert not (tmp_path / COMPLETED).exists()
