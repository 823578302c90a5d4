"""The API of a study for an annotation page: open it, check a token, serve the next item,
store a judgment, tell the progress.

The page sees only the public side of the study (items.jsonl: contexts and the replies "A" and
"B"); key.json, which says which system wrote which reply, is never read here, so it may be
kept away from the machine that serves the page. One :class:`Study` may be shared by several
threads and processes: every call opens its own short-lived database connection.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any, Mapping

from ..errors import AlreadyJudged, ConfigError, DataError, JudgmentError, MissingInput
from ..io import iter_jsonl, load_json, sha256_file
from ..names import check_name
from . import (
    CHOICES,
    CRITERIA,
    DB_FILE,
    ITEMS_FILE,
    LABELSTUDIO_PREFIX,
    STUDY_FILE,
    STUDY_FORMAT,
    store,
)

ROLES = ("seeker", "supporter")


def check_annotator_name(name: str) -> str:
    """``name`` if it can name an annotator (1-64 letters, digits and ``._@:-``, starting with a
    letter or digit; not the Label Studio prefix), else :class:`ConfigError`."""
    check_name(name, "annotator name")
    if name.startswith(LABELSTUDIO_PREFIX):
        raise ConfigError(
            f"annotator name {name!r}: names starting with {LABELSTUDIO_PREFIX!r} "
            "are kept for judgments imported from Label Studio"
        )
    return name


def check_context(context: Any, fail) -> list[dict]:
    """A dialogue context: a list of {"role": seeker|supporter, "text": str}; ``fail(problem)``
    makes the error."""
    if not isinstance(context, list):
        raise fail(f"'context' must be a list of messages, got {type(context).__name__}")
    for i, m in enumerate(context):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("text"), str)):
            raise fail(
                f"context message {i} must be an object with 'role' (seeker or "
                f"supporter) and 'text' (a string), got {m!r:.80}"
            )
    return [{"role": m["role"], "text": m["text"]} for m in context]


def read_items(path: Path) -> list[dict]:
    """The public items of a study, validated (each error names the file and the line)."""
    items, seen = [], {}
    for n, rec in iter_jsonl(path):

        def fail(problem: str, n: int = n) -> DataError:
            return DataError(path, problem, line=n)

        if not isinstance(rec, dict):
            raise fail(f"expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in ("item_id", "context", "A", "B") if k not in rec]
        if missing:
            raise fail(f"missing key(s) {', '.join(map(repr, missing))}")
        if not isinstance(rec["item_id"], str) or not rec["item_id"]:
            raise fail(f"'item_id' must be a non-empty string, got {rec['item_id']!r}")
        if rec["item_id"] in seen:
            raise fail(
                f"duplicate item_id {rec['item_id']!r} (first on line {seen[rec['item_id']]})"
            )
        seen[rec["item_id"]] = n
        for side in ("A", "B"):
            if not isinstance(rec[side], str):
                raise fail(f"reply {side!r} must be a string, got {rec[side]!r:.80}")
        items.append(
            {
                "item_id": rec["item_id"],
                "context": check_context(rec["context"], fail),
                "A": rec["A"],
                "B": rec["B"],
            }
        )
    return items


def read_study_file(directory: Path) -> dict:
    path = directory / STUDY_FILE
    meta = load_json(path, "study file")

    def fail(problem: str, key: str | None = None) -> DataError:
        return DataError(path, problem, key=key)

    if not isinstance(meta, dict):
        raise fail("expected a JSON object")
    if meta.get("format") != STUDY_FORMAT:
        raise fail(f"not a study of this esc-dist version (expected {STUDY_FORMAT!r})", "format")
    if meta.get("criteria") != list(CRITERIA):
        raise fail(f"criteria must be {list(CRITERIA)}", "criteria")
    for key, kind in (("study_id", str), ("seed", int), ("items_sha256", str)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise fail(f"missing or not a{'n integer' if kind is int else ' string'}", key)
    if not isinstance(meta.get("counts"), dict) or not isinstance(meta["counts"].get("items"), int):
        raise fail("missing or not an integer", "counts.items")
    return meta


class Study:
    """A study directory opened for annotation."""

    CRITERIA: tuple[str, ...] = CRITERIA
    CHOICES: tuple[str, ...] = CHOICES

    def __init__(self, directory: Path, meta: dict, items: list[dict]):
        self.directory = directory
        self.meta = meta
        self.seed: int = meta["seed"]
        self.items = items
        self._by_id = {it["item_id"]: it for it in items}
        self._orders: dict[str, list[str]] = {}
        self.db = directory / DB_FILE

    @classmethod
    def open(cls, directory: str | Path) -> "Study":
        """Open and check a study: study.json, items.jsonl (unchanged since the build: its
        sha256 is in study.json) and judgments.sqlite (of this study). Every problem is a
        one-line :class:`~esc_dist.errors.EscError` naming the file and the place."""
        directory = Path(directory)
        if not directory.is_dir():
            raise MissingInput("study directory not found", path=directory)
        meta = read_study_file(directory)
        items_path = directory / ITEMS_FILE
        items = read_items(items_path)
        if sha256_file(items_path) != meta["items_sha256"]:
            raise DataError(
                items_path,
                f"changed since the study was built (its sha256 differs "
                f"from {STUDY_FILE}'s): judgments would no longer match",
            )
        if len(items) != meta["counts"]["items"]:
            raise DataError(
                items_path, f"{len(items)} items, {STUDY_FILE} says {meta['counts']['items']}"
            )
        study = cls(directory, meta, items)
        with study.connection():
            pass
        return study

    def connection(self):
        """A connection to the judgments database, closed when the block ends."""
        return store.connection(self.db, self.meta["study_id"])

    # ---- annotators -------------------------------------------------------------------------

    def add_annotator(self, name: str, rotate: bool = False) -> str:
        """A new access token for ``name`` (new annotator, or ``rotate``: a new token for an
        existing one, the old token stops working); returned once, only its hash is
        stored."""
        check_annotator_name(name)
        with self.connection() as conn, store.transaction(conn):
            return store.put_annotator(conn, name, rotate=rotate)

    def annotators(self) -> list[str]:
        with self.connection() as conn:
            return store.annotator_names(conn)

    def authenticate(self, token: str) -> str | None:
        """The name of the annotator whose token this is; None for any other string (wrong,
        empty, not a string, a rotated-out token)."""
        with self.connection() as conn:
            return store.find_token(conn, token)

    # ---- items and judgments ----------------------------------------------------------------

    def order(self, annotator: str) -> list[str]:
        """The item ids in ``annotator``'s own order, seeded by (study seed, annotator name)."""
        if annotator not in self._orders:
            ids = [it["item_id"] for it in self.items]
            random.Random(f"esc-dist human-eval order\x1f{self.seed}\x1f{annotator}").shuffle(ids)
            self._orders[annotator] = ids
        return self._orders[annotator]

    def _known(self, conn, annotator: str) -> None:
        if not isinstance(annotator, str) or annotator not in store.annotator_names(conn):
            raise JudgmentError(f"unknown annotator {annotator!r}")

    def next_item(self, annotator: str) -> dict | None:
        """The first item in ``annotator``'s order that they have not judged (so a page opened
        again resumes where they stopped), as the public view ``{"item_id", "context", "A",
        "B", "position", "total"}`` (``position``: 1-based, the items judged so far plus one);
        None when they have judged every item."""
        with self.connection() as conn:
            self._known(conn, annotator)
            judged = store.judged_items(conn, annotator) & self._by_id.keys()
        for item_id in self.order(annotator):
            if item_id not in judged:
                view = copy.deepcopy(self._by_id[item_id])
                view.update(position=len(judged) + 1, total=len(self.items))
                return view
        return None

    def item(self, item_id: str) -> dict | None:
        """The public item ``{"item_id", "context", "A", "B"}`` of ``item_id``, or None."""
        it = self._by_id.get(item_id)
        return None if it is None else copy.deepcopy(it)

    def check_choices(self, item_id: str, choices: Mapping[str, str]) -> dict[str, str]:
        """``choices`` as a plain dict in criterion order, if it is a complete judgment of a
        known item; else :class:`JudgmentError` saying what is wrong."""
        if item_id not in self._by_id:
            raise JudgmentError(f"unknown item {item_id!r}")
        if not isinstance(choices, Mapping):
            raise JudgmentError(
                f"item {item_id}: choices must be a mapping of criterion to "
                f"A, tie or B, got {type(choices).__name__}"
            )
        missing = [c for c in CRITERIA if c not in choices]
        extra = [c for c in choices if c not in CRITERIA]
        if missing or extra:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(map(repr, extra))}"] if extra else []
            )
            raise JudgmentError(
                f"item {item_id}: every criterion needs a choice "
                f"({', '.join(CRITERIA)}): {'; '.join(parts)}"
            )
        for c in CRITERIA:
            if not isinstance(choices[c], str) or choices[c] not in CHOICES:
                raise JudgmentError(
                    f"item {item_id}: {c} must be one of {', '.join(CHOICES)}, got {choices[c]!r}"
                )
        return {c: choices[c] for c in CRITERIA}

    def submit(self, annotator: str, item_id: str, choices: Mapping[str, str]) -> None:
        """Store ``annotator``'s judgment of ``item_id``: all five criteria, each A, tie or B,
        written in one transaction (all rows or none). A submission is final: an item the
        annotator has judged already raises :class:`~esc_dist.errors.AlreadyJudged` and
        changes nothing (a double click stores one judgment). Other problems raise
        :class:`~esc_dist.errors.JudgmentError`; both are ValueErrors."""
        row = self.check_choices(item_id, choices)
        with self.connection() as conn:
            self._known(conn, annotator)
            with store.transaction(conn):
                if store.item_choices(conn, annotator, item_id):
                    raise AlreadyJudged(
                        f"item {item_id}: {annotator} has judged it already (a submission is final)"
                    )
                store.write_item(conn, annotator, item_id, row)

    def progress(self, annotator: str) -> tuple[int, int]:
        """(items ``annotator`` has judged, items in the study)."""
        with self.connection() as conn:
            self._known(conn, annotator)
            judged = store.judged_items(conn, annotator) & self._by_id.keys()
        return len(judged), len(self.items)

    def judgments(self) -> list[tuple[str, str, str, str]]:
        """Every stored judgment as (annotator, item_id, criterion, choice)."""
        with self.connection() as conn:
            return store.all_judgments(conn)
