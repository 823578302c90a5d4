"""Dialogue-level splits: from a split-index file or seeded with given fractions."""

from __future__ import annotations

import random
from pathlib import Path

from ..errors import ConfigError, DataError
from ..io import parse_json, read_text

SPLITS = ("train", "validation", "test")
_KEY_ALIASES = {
    "train": "train",
    "train_inferred": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}


def load_split_file(path: str | Path, n_dialogues: int) -> dict[str, list[int]]:
    """Read a split-index file: a JSON object of lists of 0-based dialogue indices.

    Keys train/train_inferred, validation/valid/val/dev and test are recognised; other keys
    (a "description", say) are ignored. Order within each list is kept. A dialogue in two splits,
    a repeated index or an index outside the corpus is an error.
    """
    path = Path(path)
    raw = parse_json(read_text(path, "split file"), path)
    if not isinstance(raw, dict):
        raise DataError(path, "a split file must be a JSON object of index lists")
    out: dict[str, list[int]] = {}
    for key, value in raw.items():
        name = _KEY_ALIASES.get(key)
        if name is None:
            continue
        if name in out:
            raise DataError(path, f"two keys name the {name} split")
        if not isinstance(value, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in value
        ):
            raise DataError(path, f"split {key!r} must be a list of integers")
        out[name] = list(value)
    if not out:
        raise DataError(path, f"no split found (expected keys among {sorted(_KEY_ALIASES)})")
    seen: dict[int, str] = {}
    for name, idx in out.items():
        for x in idx:
            if not 0 <= x < n_dialogues:
                raise DataError(
                    path,
                    f"split {name!r}: index {x} outside the corpus of {n_dialogues} dialogues",
                    dialogue=x,
                )
            if x in seen:
                where = "twice" if seen[x] == name else f"in both {seen[x]!r} and {name!r}"
                raise DataError(path, f"dialogue {x} is listed {where}", dialogue=x)
            seen[x] = name
    return {name: out.get(name, []) for name in SPLITS}


def seeded_split(n_dialogues: int, fractions: list[float], seed: int) -> dict[str, list[int]]:
    """Shuffle dialogue indices with ``seed``; cut them by (train, validation, test) fractions."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}",
            key="data.split_fractions",
        )
    order = list(range(n_dialogues))
    random.Random(seed).shuffle(order)
    n_val = round(fractions[1] * n_dialogues)
    n_test = round(fractions[2] * n_dialogues)
    n_train = n_dialogues - n_val - n_test
    parts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    return {name: sorted(p) for name, p in zip(SPLITS, parts)}
