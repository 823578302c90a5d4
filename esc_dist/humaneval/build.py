"""``esc-dist human-eval build``: a blinded pairwise study from two systems' predictions.

Both files must predict the same turns (the same ids). Optionally a seeded sample of the turns
is kept; their order is shuffled and each gets an opaque id (``item-0001``, ...) in that order.
Which system's reply is shown as "A" is drawn per item with the same seed, balanced (the two
systems are "A" equally often, within one); order and sides are independent, so neither the
item ids nor the position in items.jsonl says anything about the sides. Items whose two replies
are the same text are kept like any other, and nothing public marks them (key.json does).
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..errors import ConfigError, DataError
from ..io import atomic_write_json, iter_jsonl, sha256_file, write_jsonl
from ..names import check_name
from . import (
    CHOICES,
    CRITERIA,
    DB_FILE,
    ITEMS_FILE,
    KEY_FILE,
    KEY_FORMAT,
    STUDY_FILE,
    STUDY_FORMAT,
    SYSTEMS,
    store,
)
from .study import check_context

STAGE = "human-eval"


def parse_names(names: str | Sequence[str]) -> tuple[str, str]:
    """Two different, non-empty system names ("NAME_A,NAME_B" or a pair)."""
    parts = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--names needs two system names separated by a comma, got {names!r}")
    for part in parts:
        check_name(part, "--names: system name")
    if parts[0] == parts[1]:
        raise ConfigError(f"--names: the two systems need different names, got {names!r}")
    return parts[0], parts[1]


def _histories_in_records(path: Path) -> dict[str, list[dict]]:
    """The ``history`` of the prediction records that hold one, checked, by id."""
    out = {}
    for n, rec in iter_jsonl(path):
        if isinstance(rec, dict) and "history" in rec:
            out[rec.get("id")] = check_context(
                rec["history"],
                lambda problem, n=n: DataError(
                    path, problem.replace("'context'", "'history'"), line=n
                ),
            )
    return out


def _check_same_turns(paths: tuple[Path, Path], preds_a, by_b) -> None:
    """Records paired by id must be the same turn: the same dialogue, turn index and gold
    reply, and the same history when both records hold one; else a :class:`DataError` saying
    how many pairs differ, and which and how for the first ones."""
    histories = [_histories_in_records(p) for p in paths]
    differ = []
    for pa in preds_a:
        pb = by_b[pa.id]
        fields = [
            f
            for f in ("dialogue_id", "turn_index", "gold_reply")
            if getattr(pa, f) != getattr(pb, f)
        ]
        if (
            pa.id in histories[0]
            and pa.id in histories[1]
            and histories[0][pa.id] != histories[1][pa.id]
        ):
            fields.append("history")
        if fields:
            differ.append(f"{pa.id} ({', '.join(fields)})")
    if differ:
        raise DataError(
            paths[0],
            f"{len(differ)} id(s) name another turn in {paths[1]}: "
            f"{'; '.join(differ[:3])}{' ...' if len(differ) > 3 else ''} "
            "differ; a study must pair replies to the same turn",
        )


def _contexts(paths: tuple[Path, Path], preds, data_dir, split: str) -> dict[str, list[dict]]:
    """The dialogue context of every predicted turn: from the prepared data when ``data_dir``
    is given, else from the records' own ``history``. Blank messages (the placeholders ESConv's
    conversion puts between two supporter utterances) are left out."""
    if data_dir is not None:
        from ..eval.with_data import histories_of

        raw = histories_of(data_dir, split, preds, paths[0])
        found = {i: [{"role": m["role"], "text": m["text"]} for m in h] for i, h in raw.items()}
    else:
        found = _histories_in_records(paths[1])
        found.update(_histories_in_records(paths[0]))
        missing = [p.id for p in preds if p.id not in found]
        if missing:
            raise ConfigError(
                f"{paths[0]}: {len(missing)} prediction(s) hold no 'history' "
                f"(first: {missing[0]}); give --data DIR, the prepared data "
                "(esc-dist prepare) the predictions were made from"
            )
    return {p.id: [m for m in found[p.id] if m["text"].strip()] for p in preds}


def build_study(
    pred_a: str | Path,
    pred_b: str | Path,
    names: str | Sequence[str],
    out: str | Path,
    *,
    items: int | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    split: str = "test",
) -> dict:
    """Write a new study to ``out`` (a new path or an empty directory) and return its
    study.json. ``names`` name the systems of ``pred_a`` and ``pred_b`` (system 1 and 2)."""
    from ..eval.predictions import load_predictions
    from ..outputs import check_output, staged_dir

    name1, name2 = parse_names(names)
    paths = (Path(pred_a), Path(pred_b))
    out = Path(out)
    inputs = [*paths, data_dir]
    check_output(out, STAGE, inputs)
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            "is not empty: a study is built once (its judgments refer to its "
            "items); choose another --out",
            path=out,
        )
    preds_a, preds_b = load_predictions(paths[0]), load_predictions(paths[1])
    by_b = {p.id: p for p in preds_b}
    only_a = [p.id for p in preds_a if p.id not in by_b]
    only_b = [i for i in by_b if i not in {p.id for p in preds_a}]
    if only_a or only_b:
        raise DataError(
            paths[0],
            f"not predictions of the same turns as {paths[1]}: "
            f"{len(only_a)} id(s) only here"
            + (f" (first: {only_a[0]})" if only_a else "")
            + f", {len(only_b)} only in {paths[1]}"
            + (f" (first: {only_b[0]})" if only_b else ""),
        )
    _check_same_turns(paths, preds_a, by_b)
    if items is not None and not 1 <= items <= len(preds_a):
        raise ConfigError(
            f"--items {items}: choose 1 to {len(preds_a)} (the turns both files predict)"
        )
    contexts = _contexts(paths, preds_a, data_dir, split)

    rng = random.Random(f"esc-dist human-eval build\x1f{seed}")
    chosen = rng.sample(preds_a, items or len(preds_a))  # sampled and shuffled
    n = len(chosen)
    first_is_a = [True] * (n // 2) + [False] * (n // 2) + ([rng.random() < 0.5] if n % 2 else [])
    rng.shuffle(first_is_a)
    width = max(4, len(str(n)))
    public, key_items, identical = [], {}, 0
    for k, (pa, a_first) in enumerate(zip(chosen, first_is_a), start=1):
        item_id = f"item-{k:0{width}d}"
        reply1, reply2 = pa.pred_reply, by_b[pa.id].pred_reply
        same = reply1.strip() == reply2.strip()
        identical += same
        public.append(
            {
                "item_id": item_id,
                "context": contexts[pa.id],
                "A": reply1 if a_first else reply2,
                "B": reply2 if a_first else reply1,
            }
        )
        key_items[item_id] = {
            "A": name1 if a_first else name2,
            "B": name2 if a_first else name1,
            "turn_id": pa.id,
            "identical": same,
        }

    study_id = uuid.uuid4().hex
    with staged_dir(out, STAGE, inputs) as tmp:
        write_jsonl(tmp / ITEMS_FILE, public)
        items_sha = sha256_file(tmp / ITEMS_FILE)
        atomic_write_json(
            tmp / KEY_FILE,
            {
                "format": KEY_FORMAT,
                "study_id": study_id,
                "items_sha256": items_sha,
                "systems": dict(zip(SYSTEMS, (name1, name2))),
                "sources": {
                    s: {"path": str(p), "sha256": sha256_file(p)} for s, p in zip(SYSTEMS, paths)
                },
                "data": None if data_dir is None else str(data_dir),
                "identical_items": identical,
                "items": key_items,
            },
        )
        meta = {
            "format": STUDY_FORMAT,
            "study_id": study_id,
            "criteria": list(CRITERIA),
            "choices": list(CHOICES),
            "seed": seed,
            "items_sha256": items_sha,
            "counts": {"items": n, "turns_in_common": len(preds_a)},
            "created": store.now(),
            "esc_dist_version": __version__,
        }
        atomic_write_json(tmp / STUDY_FILE, meta)
        store.create(tmp / DB_FILE, study_id)
    return meta
