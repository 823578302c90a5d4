"""The code versions in the stage keys (esc_dist/versions.py)."""

import sys

import pytest

from esc_dist import versions
from esc_dist.config import load_recipe
from esc_dist.pipeline import find_stage, stage_key


@pytest.mark.skipif(
    sys.version_info[:2] != versions.RECORDED_PYTHON,
    reason="the hashes were recorded under Python %d.%d" % versions.RECORDED_PYTHON,
)
@pytest.mark.parametrize("kind", sorted(versions.SOURCES))
def test_the_code_behind_each_stage_is_as_recorded(kind):
    got = versions.source_hash(kind)
    assert got == versions.RECORDED[kind], (
        f"the code behind the {kind} stage changed ({', '.join(versions.SOURCES[kind])}): if "
        f"its outputs change, bump CODE_VERSIONS[{kind!r}] in esc_dist/versions.py (outputs "
        f"made before then run again); either way record its new hash {got!r} in RECORDED"
    )


def test_every_stage_kind_has_a_version_and_sources():
    kinds = {"prepare", "tiny-model", "base-model", "sft", "mine", "judge", "dpo", "infer"}
    kinds |= {"eval", "compare"}
    assert set(versions.CODE_VERSIONS) == set(versions.SOURCES) == set(versions.RECORDED) == kinds
    for kind in kinds:
        assert versions._files(kind) and all(f.is_file() for f in versions._files(kind))


def test_the_hash_ignores_docstrings_comments_and_layout(tmp_path, monkeypatch):
    code = 'def f(a, b):\n    """Doc."""\n    return a + b  # sum\n'
    same = "def f(a,\n      b):\n    return a+b\n"
    other = "def f(a, b):\n    return a - b\n"
    hashes = []
    for src in (code, same, other):
        (tmp_path / "m.py").write_text(src)
        monkeypatch.setattr(versions, "PACKAGE", tmp_path)
        monkeypatch.setitem(versions.SOURCES, "x", ("m.py",))
        hashes.append(versions.source_hash("x"))
    assert hashes[0] == hashes[1] != hashes[2]


def test_a_bumped_version_makes_the_stage_stale_and_1_keeps_older_keys(tmp_path, monkeypatch):
    recipe = load_recipe(None, [f"run.output_dir={tmp_path}/run"])
    _, stage = find_stage(recipe, "dpo-planner")
    before = stage_key(stage, recipe)
    monkeypatch.setattr("esc_dist.pipeline.code_version", lambda kind: None)
    assert stage_key(stage, recipe) == before  # all at 1: the keys as before versions existed
    monkeypatch.undo()
    monkeypatch.setitem(versions.CODE_VERSIONS, "sft", 2)  # another kind's: no change
    assert stage_key(stage, recipe) == before
    monkeypatch.setitem(versions.CODE_VERSIONS, "dpo", 2)
    assert stage_key(stage, recipe) != before
