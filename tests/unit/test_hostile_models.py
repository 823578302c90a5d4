"""Broken model directories: each stage that loads a model refuses it in one line naming the
directory and what is wrong, before any traceback of transformers or safetensors."""

import json
import shutil
import subprocess
import sys

import pytest

from esc_dist.errors import DataError, MissingInput
from esc_dist.generation import Replica, load_tokenizer
from esc_dist.io import check_model_dir, model_fingerprint
from tests.helpers import ROOT, gen_setup, launch_env

TRUNCATED = "model.safetensors is truncated or not a safetensors file"
NO_TOKENIZER = "no tokenizer (tokenizer.json or tokenizer_config.json)"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, esconv_dir):
    return gen_setup(tmp_path_factory, esconv_dir)


def _no_tokenizer(d):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()


def _truncated(d):
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _garbled_header(d):
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[8:72] = b"\x00not json at all\xff" * 4
    w.write_bytes(bytes(data))


def _huge_header_length(d):
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[:8] = (1 << 62).to_bytes(8, "little")
    w.write_bytes(bytes(data))


def _no_config(d):
    (d / "config.json").unlink()


def _config_not_json(d):
    (d / "config.json").write_text('{"model_type": "llama", ')


BREAKS = {
    "no_tokenizer": (_no_tokenizer, NO_TOKENIZER),
    "truncated": (_truncated, TRUNCATED),
    "garbled_header": (_garbled_header, TRUNCATED),
    "huge_header_length": (_huge_header_length, TRUNCATED),
    "no_config": (_no_config, "no config.json"),
    "config_not_json": (_config_not_json, "config.json is not a valid JSON object"),
}


def _broken(setup, tmp_path, how: str):
    d = tmp_path / f"broken-{how}"
    shutil.copytree(setup / "tiny", d)
    BREAKS[how][0](d)
    return d


def _run(args):
    return subprocess.run(
        [sys.executable, "-m", "esc_dist", *args, "wandb.mode=disabled"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env=launch_env(OMP_NUM_THREADS="1", WANDB_MODE="disabled"),
    )


def _assert_one_line(r, command: str, model, problem: str):
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if f"esc-dist {command}: error:" in line]
    assert len(lines) == 1, r.stderr[-3000:]
    assert str(model) in lines[0] and problem in lines[0], lines[0]


@pytest.mark.parametrize("how", ["no_tokenizer", "truncated", "garbled_header", "no_config"])
def test_infer_refuses_a_broken_model_in_one_line(setup, tmp_path, how):
    model = _broken(setup, tmp_path, how)
    r = _run(
        [
            "infer",
            "--mode",
            "vanilla",
            "--model",
            str(model),
            "--data",
            str(setup / "data"),
            "--split",
            "test",
            "--out",
            str(tmp_path / "out"),
            "infer.max_new_tokens=4",
        ]
    )
    _assert_one_line(r, "infer", model, BREAKS[how][1])


@pytest.mark.parametrize("how", ["truncated", "no_tokenizer"])
def test_mine_refuses_a_broken_model_in_one_line(setup, tmp_path, how):
    model = _broken(setup, tmp_path, how)
    r = _run(
        [
            "mine",
            "--role",
            "planner",
            "--model",
            str(model),
            "--data",
            str(setup / "data"),
            "--out",
            str(tmp_path / "out"),
            "mine.n_samples=1",
            "mine.max_new_tokens=4",
        ]
    )
    _assert_one_line(r, "mine", model, BREAKS[how][1])


def test_sft_refuses_a_model_without_config_in_one_line(setup, tmp_path):
    model = _broken(setup, tmp_path, "no_config")
    r = _run(
        [
            "sft",
            "--role",
            "planner",
            "--model",
            str(model),
            "--data",
            str(setup / "data"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    _assert_one_line(r, "sft", model, "no config.json")


@pytest.mark.parametrize("how", sorted(BREAKS))
def test_every_break_is_found_before_loading(setup, tmp_path, how):
    model = _broken(setup, tmp_path, how)
    kind = MissingInput if how in ("no_tokenizer", "no_config") else DataError
    with pytest.raises(kind) as e:
        model_fingerprint(model)
    assert e.value.path == str(model) and BREAKS[how][1] in e.value.problem
    check_model_dir(setup / "tiny")  # the intact model passes


def test_a_loading_error_of_the_library_is_one_data_error(setup, tmp_path):
    """A directory that passes the cheap checks but that transformers cannot load."""
    model = tmp_path / "unknown-type"
    shutil.copytree(setup / "tiny", model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "nonsense"}))
    check_model_dir(model)
    with pytest.raises(DataError) as e:
        Replica(model, load_tokenizer(model))
    assert e.value.path == str(model) and "cannot load the model" in e.value.problem
    assert "\n" not in str(e.value)
