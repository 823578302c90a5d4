"""Choosing the checkpoint to resume from (no training needed)."""

import json

import pytest

from esc_dist.train.checkpoints import find_resume_checkpoint


def _ckpt(root, step, key, complete=True):
    d = root / "checkpoints" / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "esc_dist.json").write_text(json.dumps({"world_size": 2, "global_step": step, "key": key}))
    if complete:
        (d / "COMPLETED").write_text("")
    return d


def test_newest_complete_checkpoint_of_the_same_run(tmp_path):
    _ckpt(tmp_path, 2, "k")
    newest = _ckpt(tmp_path, 10, "k")
    _ckpt(tmp_path, 12, "k", complete=False)  # killed while saving
    assert find_resume_checkpoint(tmp_path / "checkpoints", "auto", "k") == newest


def test_fresh_start_without_checkpoints(tmp_path):
    assert find_resume_checkpoint(tmp_path / "checkpoints", "auto", "k") is None


@pytest.mark.parametrize("resume", ["auto", "never"])
def test_checkpoints_of_other_settings_are_moved_aside(tmp_path, resume):
    _ckpt(tmp_path, 4, "old-settings")
    if resume == "never":
        _ckpt(tmp_path, 6, "k")
    assert find_resume_checkpoint(tmp_path / "checkpoints", resume, "k") is None
    assert not (tmp_path / "checkpoints").exists()
    assert (tmp_path / "checkpoints-stale-1" / "checkpoint-4" / "COMPLETED").is_file()
    _ckpt(tmp_path, 2, "x")
    find_resume_checkpoint(tmp_path / "checkpoints", "auto", "k")
    assert (tmp_path / "checkpoints-stale-2" / "checkpoint-2").is_dir()


def test_explicit_checkpoint_must_be_complete(tmp_path):
    d = _ckpt(tmp_path, 3, "k", complete=False)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        find_resume_checkpoint(tmp_path / "checkpoints", str(d), "k")
    (d / "COMPLETED").write_text("")
    assert find_resume_checkpoint(tmp_path / "checkpoints", str(d), "other") == d
