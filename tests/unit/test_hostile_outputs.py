"""The output rule: nothing of the user's is ever deleted, renamed or overwritten.

esc-dist writes only into a new path, an empty directory or an output it created itself (marked
with ``.esc-dist-output``), never over or around its own input, and swaps staged outputs in whole
(even when killed or racing another process)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esc_dist.errors import ConfigError
from esc_dist.outputs import MARKER, check_output, staged_dir
from tests.helpers import ROOT, TEST_DATA
from tests.unit.test_prefdial import GENERATOR, write_pairs

SPLIT = ["data.split=seeded", "data.split_fractions=[0.34,0.33,0.33]"]
CORPUS = TEST_DATA / "tiny_esconv.json"


def esc(*args, env: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m esc_dist ARGS`` (or ``python -c CODE ARGS``) in a fresh process."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = (
        [sys.executable, "-c", code, *map(str, args)]
        if code
        else [sys.executable, "-m", "esc_dist", *map(str, args)]
    )
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT)


def prepare_args(out, corpus=CORPUS, *extra):
    return ["prepare", "--esconv", corpus, *SPLIT, "--out", out, *extra]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (or ``root`` itself) by relative path and sha256."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {
        str(p.relative_to(root) if p != root else p.name): hashlib.sha256(
            p.read_bytes()
        ).hexdigest()
        for p in files
    }


def refused(r: subprocess.CompletedProcess, path: Path, how: str = "choose another --out"):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esc-dist "), r.stderr
    assert str(path) in lines[0] and how in lines[0], lines[0]


def no_temp_dirs(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.endswith((".partial", ".old"))]


@pytest.fixture
def user_dir(tmp_path) -> Path:
    """A directory of the user's own files, one of them the corpus."""
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("my notes\n")
    (d / "sub").mkdir()
    (d / "sub" / "thesis.tex").write_text("\\chapter{1}\n")
    (d / "corpus.json").write_bytes(CORPUS.read_bytes())
    return d


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "data"
    r = esc(*prepare_args(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def preds(tmp_path) -> Path:
    from tests.unit.test_eval_metrics import GOLD, HYPS, PRED, REFS
    from tests.unit.test_eval_report import _row, _write

    rows = [_row(i, g, p, HYPS[i % 3], REFS[i % 3]) for i, (g, p) in enumerate(zip(GOLD, PRED))]
    (tmp_path / "pred").mkdir()
    return _write(tmp_path / "pred" / "sys.jsonl", rows)


# ---------------------------------------------------------------------------------------------
# Each stage's --out on the user's directory


def test_prepare_refuses_a_user_directory(user_dir):
    before = snapshot(user_dir)
    r = esc(*prepare_args(user_dir, CORPUS))
    refused(r, user_dir, "remove it yourself")
    assert snapshot(user_dir) == before
    assert not list(user_dir.parent.glob(".mine.*"))


def test_prepare_refuses_the_directory_holding_its_input(user_dir):
    before = snapshot(user_dir)
    r = esc(*prepare_args(user_dir, user_dir / "corpus.json"))
    refused(r, user_dir)
    assert "own input" in r.stderr
    assert snapshot(user_dir) == before


def test_prepare_refuses_an_existing_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me\n")
    refused(esc(*prepare_args(f)), f, "remove it yourself")
    assert f.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_prepare_refuses_its_input_file_as_output(tmp_path):
    corpus = tmp_path / "c.json"
    corpus.write_bytes(CORPUS.read_bytes())
    refused(esc(*prepare_args(corpus, corpus)), corpus)
    assert corpus.read_bytes() == CORPUS.read_bytes()


def test_prepare_writes_into_an_empty_directory_and_reruns_over_its_output(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert esc(*prepare_args(out)).returncode == 0
    assert (out / MARKER).read_text() == "prepare\n" and (out / "COMPLETED").is_file()
    first = json.loads((out / "manifest.json").read_text())
    r = esc(*prepare_args(out, CORPUS, "data.split_seed=7"))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "manifest.json").read_text())["config"]["split_seed"] == 7
    assert first["config"]["split_seed"] != 7
    no_temp_dirs(tmp_path)


def test_tiny_model_refuses_user_dir_and_its_input(user_dir, prepared):
    before = snapshot(user_dir)
    refused(esc("tiny-model", "--corpus", CORPUS, "--out", user_dir), user_dir)
    assert snapshot(user_dir) == before
    data_before = snapshot(prepared)
    for out in (prepared, prepared / "model"):  # equal to, inside its input
        refused(esc("tiny-model", "--corpus", prepared, "--out", out), out)
    assert snapshot(prepared) == data_before


def test_an_output_of_another_stage_is_refused(prepared, tmp_path, preds):
    before = snapshot(prepared)
    r = esc("eval", preds, "--out", prepared)
    refused(r, prepared)
    assert "esc-dist prepare" in r.stderr
    assert snapshot(prepared) == before


def test_judge_refuses_its_own_input_directory(user_dir, tmp_path):
    pairs = write_pairs(user_dir / "pairs.jsonl", GENERATOR)
    before = snapshot(user_dir)
    r = esc(
        "judge",
        "--role",
        "generator",
        "--pairs",
        pairs,
        "--out",
        user_dir,
        env={"WANDB_MODE": "offline"},
    )
    refused(r, user_dir)
    assert snapshot(user_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no wandb/ left anywhere


def test_judge_validates_its_input_before_writing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    r = esc(
        "judge",
        "--role",
        "generator",
        "--pairs",
        bad,
        "--out",
        tmp_path / "out",
        env={"WANDB_MODE": "offline"},
    )
    assert r.returncode == 2 and "bad.jsonl, line 1" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_judge_keeps_wandb_beside_its_output_and_reruns(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", GENERATOR)
    out = tmp_path / "prefdial" / "generator"
    home = {
        v: str(tmp_path / "wandb-home")
        for v in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
    }
    for _ in range(2):  # the second run replaces its own output
        r = esc(
            "judge",
            "--role",
            "generator",
            "--pairs",
            pairs,
            "--out",
            out,
            env={"WANDB_MODE": "offline", **home},
        )
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["generator", "generator.wandb"]
    assert (out.parent / "generator.wandb" / MARKER).read_text() == "judge\n"
    assert (out.parent / "generator.wandb" / "wandb").is_dir()
    assert (out / MARKER).read_text() == "judge\n"


def test_eval_refuses_user_dir_file_and_its_predictions_dir(user_dir, preds, tmp_path):
    before = snapshot(user_dir)
    refused(esc("eval", preds, "--out", user_dir), user_dir, "remove it yourself")
    assert snapshot(user_dir) == before
    notes = user_dir / "notes.txt"
    refused(esc("eval", preds, "--out", notes), notes)
    assert notes.read_text() == "my notes\n"
    pred_before = snapshot(preds.parent)
    refused(esc("eval", preds, "--out", preds.parent), preds.parent)  # contains its input
    assert snapshot(preds.parent) == pred_before


def test_compare_refuses_user_dir_and_its_input_report(user_dir, preds, tmp_path):
    report = tmp_path / "rep"
    assert esc("eval", preds, "--out", report).returncode == 0
    before, rep_before = snapshot(user_dir), snapshot(report)
    refused(esc("compare", report, "--out", user_dir), user_dir)
    refused(esc("compare", report, "--out", report), report)
    assert snapshot(user_dir) == before and snapshot(report) == rep_before
    cmp = tmp_path / "cmp"
    for _ in range(2):  # rerun over its own output
        r = esc("compare", report, "--out", cmp)
        assert r.returncode == 0, r.stderr
    assert (cmp / MARKER).read_text() == "compare\n" and (cmp / "comparison.json").is_file()


def test_generation_output_refuses_user_dir_and_file(user_dir, tmp_path):
    from esc_dist.generation import claim_output

    job = {"fingerprint": "f", "stage": "mine", "inputs": {"data": {"path": str(tmp_path / "d")}}}
    before = snapshot(user_dir)
    with pytest.raises(ConfigError, match="did not create"):
        claim_output(user_dir, job, "mine")
    with pytest.raises(ConfigError, match="not a directory"):
        claim_output(user_dir / "notes.txt", job, "mine")
    with pytest.raises(ConfigError, match="own input"):
        claim_output(tmp_path / "d" / "mined", job, "mine")
    assert snapshot(user_dir) == before
    assert claim_output(tmp_path / "new", job, "infer") is None
    assert (tmp_path / "new" / MARKER).read_text() == "mine\n"


def test_training_refuses_user_dirs_for_export_and_work(user_dir, tmp_path):
    from esc_dist.train.common import StagePaths
    from esc_dist.train.runner import claim_outputs

    before = snapshot(user_dir)
    with pytest.raises(ConfigError, match="did not create"):
        claim_outputs("sft", StagePaths(user_dir, tmp_path / "w.work"), [])
    assert not (tmp_path / "w.work").exists()  # refused before the work dir was made
    work = tmp_path / "x.work"
    work.mkdir()
    (work / "mine.txt").write_text("x")
    with pytest.raises(ConfigError, match="did not create"):
        claim_outputs("sft", StagePaths(tmp_path / "x", work), [])
    with pytest.raises(ConfigError, match="own input"):
        claim_outputs(
            "dpo",
            StagePaths(tmp_path / "m" / "dpo", tmp_path / "m" / "dpo.work"),
            [str(tmp_path / "m")],
        )
    assert snapshot(user_dir) == before and (work / "mine.txt").read_text() == "x"
    claim_outputs("sft", StagePaths(tmp_path / "ok", tmp_path / "ok.work"), [])
    assert (tmp_path / "ok.work" / MARKER).read_text() == "sft\n"


# ---------------------------------------------------------------------------------------------
# The one place: staged_dir, the pipeline's clean-up, outputs of earlier versions


def test_staged_dir_refuses_a_foreign_directory(user_dir):
    before = snapshot(user_dir)
    with pytest.raises(ConfigError, match="did not create"):
        with staged_dir(user_dir, "prepare"):
            pytest.fail("the block must not run")
    assert snapshot(user_dir) == before
    assert not [p for p in user_dir.parent.iterdir() if p.name.startswith(".")]


def test_staged_dir_refuses_a_directory_filled_during_the_build(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="did not create"):
        with staged_dir(out, "prepare") as tmp:
            (tmp / "a").write_text("new")
            out.mkdir()
            (out / "user.txt").write_text("arrived meanwhile")
    assert sorted(p.name for p in out.iterdir()) == ["user.txt"]
    no_temp_dirs(tmp_path)


def test_pipeline_clear_stale_removes_only_its_own_outputs(tmp_path):
    from esc_dist.io import atomic_write_json
    from esc_dist.layout import RunLayout
    from esc_dist.pipeline import Stage, clear_stale

    run = tmp_path / "run"
    layout = RunLayout(run)
    user = run / "data"
    user.mkdir(parents=True)
    (user / "precious.txt").write_text("mine")
    atomic_write_json(run / ".pipeline" / "prepare.json", {"key": "old"})
    with pytest.raises(ConfigError, match="did not create"):
        clear_stale(Stage("prepare", [], user, ("data",)), "new", layout)
    assert (user / "precious.txt").read_text() == "mine"
    ours = run / "models" / "sft-planner"
    for d in (ours, ours.with_name("sft-planner.work")):
        d.mkdir(parents=True)
        (d / MARKER).write_text("sft\n")
    atomic_write_json(run / ".pipeline" / "sft-planner.json", {"key": "old"})
    clear_stale(Stage("sft-planner", [], ours, ("sft",)), "new", layout)
    assert not ours.exists() and not ours.with_name("sft-planner.work").exists()


def test_outputs_of_earlier_versions_count_as_ours(tmp_path):
    legacy = tmp_path / "data"
    legacy.mkdir()
    (legacy / "COMPLETED").write_text("")
    (legacy / "manifest.json").write_text(json.dumps({"stage": "prepare"}))
    assert check_output(legacy, "prepare") == legacy
    r = esc(*prepare_args(legacy))
    assert r.returncode == 0, r.stderr
    assert (legacy / MARKER).read_text() == "prepare\n"
    work = tmp_path / "sft-planner.work"
    (work / "checkpoints").mkdir(parents=True)
    check_output(work, "sft")
    user = tmp_path / "u"
    user.mkdir()
    (user / "manifest.json").write_text("[my own manifest]")
    with pytest.raises(ConfigError):
        check_output(user, "prepare")


# ---------------------------------------------------------------------------------------------
# eval's report files are one set


def test_interrupted_eval_keeps_the_old_report_set(preds, tmp_path, monkeypatch):
    from esc_dist.eval import report as report_mod

    out = tmp_path / "rep"
    report_mod.evaluate(preds, out, name="first")
    before = snapshot(out)

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(report_mod, "plot_preferences", boom)  # after confusion.png is drawn
    with pytest.raises(RuntimeError, match="interrupted"):
        report_mod.evaluate(preds, out, name="second")
    assert snapshot(out) == before
    no_temp_dirs(tmp_path)
    monkeypatch.undo()
    report_mod.evaluate(preds, out, name="third")
    assert json.loads((out / "report.json").read_text())["name"] == "third"
    assert snapshot(out)["confusion.png"] != before["confusion.png"]  # title holds the name


def test_eval_rerun_keeps_its_caches(preds, tmp_path):
    from esc_dist.eval.report import evaluate

    out = tmp_path / "rep"
    evaluate(preds, out)
    (out / "llm_cache").mkdir()
    (out / "llm_cache" / "a.json").write_text("{}")
    (out / "stray.txt").write_text("from an older run")
    evaluate(preds, out)
    assert (out / "llm_cache" / "a.json").read_text() == "{}"
    assert not (out / "stray.txt").exists()  # the set is replaced whole


# ---------------------------------------------------------------------------------------------
# umask, kill -9, two writers


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_created_files_and_directories_follow_the_umask(tmp_path, mask):
    out = tmp_path / "out"
    code = (
        "import os, sys; os.umask(int(sys.argv[1], 8)); sys.argv = sys.argv[1:]; "
        "from esc_dist.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    r = esc(oct(mask), *prepare_args(out), code=code)
    assert r.returncode == 0, r.stderr
    for p in (out, out / "vanilla"):
        assert p.stat().st_mode & 0o777 == 0o777 & ~mask, p
    for p in (out / MARKER, out / "manifest.json", out / "COMPLETED"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p


KILL_AT = """
import os, signal, sys
from esc_dist import outputs
from esc_dist.data import tasks
point = sys.argv[1]
sys.argv = sys.argv[1:]
def dies(fn):
    def wrapper(*a, **k):
        if point.endswith("-after"):
            fn(*a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
    return wrapper
if point == "build":
    tasks.write_manifest = dies(tasks.write_manifest)
elif point == "swap":
    outputs._swap_in = dies(outputs._swap_in)
elif point == "exchange-after":
    outputs._exchange = dies(outputs._exchange)
from esc_dist.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("point", ["build", "swap", "exchange-after"])
def test_prepare_killed_leaves_a_whole_output_and_reruns(tmp_path, point):
    out = tmp_path / "data"
    assert esc(*prepare_args(out)).returncode == 0
    before = snapshot(out)
    r = esc(point, *prepare_args(out, CORPUS, "data.split_seed=3"), code=KILL_AT)
    assert r.returncode == -9, (r.returncode, r.stderr)
    after = snapshot(out)
    if point == "exchange-after":  # the new output is in place, whole
        assert json.loads((out / "manifest.json").read_text())["config"]["split_seed"] == 3
        assert set(after) == set(before)
    else:
        assert after == before
    r = esc(*prepare_args(out, CORPUS, "data.split_seed=5"))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "manifest.json").read_text())["config"]["split_seed"] == 5
    no_temp_dirs(tmp_path)  # the killed run's partial build is cleared


def test_two_writers_of_one_output_leave_a_consistent_output(tmp_path):
    out = tmp_path / "data"
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "esc_dist",
                *map(str, prepare_args(out, CORPUS, f"data.split_seed={seed}")),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (11, 12)
    ]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], results  # both succeed; the last swap wins
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["split_seed"] in (11, 12)
    from datasets import load_from_disk

    turns = load_from_disk(str(out / "turns"))  # the datasets are those of the manifest
    assert {
        k: sorted({int(d.split("-")[1]) for d in v["dialogue_id"]}) for k, v in turns.items()
    } == {k: sorted(v) for k, v in manifest["dialogues"].items()}
    assert (out / MARKER).read_text() == "prepare\n"
    no_temp_dirs(tmp_path)
