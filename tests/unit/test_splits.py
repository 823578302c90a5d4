import json

import pytest

from esc_dist.data.splits import load_split_file, seeded_split
from esc_dist.errors import DataError


@pytest.mark.parametrize(
    "fname,sizes",
    [("decoupledesc_split.json", (1040, 130, 130)), ("zcj_seed13_split.json", (910, 195, 195))],
)
def test_published_split_files(esconv_dir, fname, sizes):
    split = load_split_file(esconv_dir / "splits" / fname, 1300)
    assert tuple(len(split[k]) for k in ("train", "validation", "test")) == sizes
    all_idx = split["train"] + split["validation"] + split["test"]
    assert len(set(all_idx)) == len(all_idx) == 1300  # no dialogue in two splits, none missing


def test_split_file_keeps_order(esconv_dir):
    raw = json.loads((esconv_dir / "splits" / "decoupledesc_split.json").read_text())
    split = load_split_file(esconv_dir / "splits" / "decoupledesc_split.json", 1300)
    assert split["test"] == raw["test"] and split["validation"] == raw["val"]


def test_seeded_split_is_deterministic_and_disjoint():
    a = seeded_split(1300, [0.8, 0.1, 0.1], seed=7)
    b = seeded_split(1300, [0.8, 0.1, 0.1], seed=7)
    c = seeded_split(1300, [0.8, 0.1, 0.1], seed=8)
    assert a == b and a != c
    assert [len(a[k]) for k in ("train", "validation", "test")] == [1040, 130, 130]
    sets = [set(a[k]) for k in ("train", "validation", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(range(1300))


def test_seeded_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="summing to 1"):
        seeded_split(10, [0.5, 0.2, 0.2], 0)


@pytest.mark.parametrize(
    "content,message",
    [
        ({"train": [0, 1], "test": [1, 2]}, "dialogue 1 is listed in both 'train' and 'test'"),
        ({"train": [0, 0]}, "dialogue 0 is listed twice"),
        ({"train": [0, 99]}, "index 99 outside the corpus of 10 dialogues"),
        ({"train": "0,1"}, "split 'train' must be a list of integers"),
        ({"description": "x"}, "no split found"),
        ([0, 1], "must be a JSON object"),
    ],
)
def test_bad_split_files(tmp_path, content, message):
    p = tmp_path / "split.json"
    p.write_text(json.dumps(content))
    with pytest.raises(DataError, match=message) as e:
        load_split_file(p, 10)
    assert str(p) in str(e.value)
