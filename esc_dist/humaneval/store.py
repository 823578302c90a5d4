"""The judgments of a study in SQLite (``judgments.sqlite``, the standard library's sqlite3).

Two tables: ``annotators`` (name, token hash, how it was hashed, source, created) and
``judgments``, one row per annotator × item × criterion (primary key), with the choice and
when it was submitted. The database is in WAL mode with ``synchronous=FULL``: a transaction
that returned is on disk, whatever happens to the process afterwards, and readers never block
the writer. Every connection waits up to :data:`BUSY_TIMEOUT_MS` for another process's write
lock instead of failing at once. Connections are short-lived (one per operation), so that one
:class:`~esc_dist.humaneval.study.Study` can serve several threads.

Tokens are never stored: only their SHA-256, under a unique index, so that a sign-in is one
indexed lookup and a constant-time comparison. A token is 32 random bytes
(``secrets.token_urlsafe``): no dictionary or precomputed table reaches that space, so a salt or
a slow key derivation would guard nothing the token's entropy does not -- and a slow one would
let anyone who can reach the page keep the server busy with sign-in attempts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Mapping

from ..errors import ConfigError, DataError, MissingInput

SCHEMA_VERSION = "1"
BUSY_TIMEOUT_MS = 30_000
KDF = "sha256"  # recorded per annotator, so it can change without a migration
MAX_TOKEN_CHARS = 256  # longer strings are not tokens of ours: refused before any hashing

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE annotators (
    name TEXT PRIMARY KEY,
    token_hash BLOB,
    kdf TEXT,
    source TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE judgments (
    annotator TEXT NOT NULL REFERENCES annotators(name),
    item_id TEXT NOT NULL,
    criterion TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('A', 'tie', 'B')),
    submitted_at TEXT NOT NULL,
    PRIMARY KEY (annotator, item_id, criterion)
) WITHOUT ROWID;
CREATE UNIQUE INDEX annotator_token ON annotators (token_hash);
"""


COLUMNS = {
    "annotators": ("name", "token_hash", "kdf", "source", "created"),
    "judgments": ("annotator", "item_id", "criterion", "choice", "submitted_at"),
}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def create(path: str | Path, study_id: str) -> None:
    """A new, empty database at ``path`` (which must not exist) for the study ``study_id``."""
    path = Path(path)
    conn = _connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")  # persistent: every later connection uses it
        with transaction(conn):
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("schema_version", SCHEMA_VERSION), ("study_id", study_id)],
            )
    finally:
        conn.close()


@contextmanager
def connection(path: str | Path, study_id: str | None = None) -> Iterator[sqlite3.Connection]:
    """A connection to the study database ``path``, closed afterwards; a missing file, a file
    that is not such a database, or (``study_id`` given) one of another study raise
    :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(
            "judgments database not found (not a study built by `esc-dist human-eval build`)",
            path=path,
        )
    try:
        conn = _connect(path)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError:
            conn.close()
            raise
    except sqlite3.DatabaseError as e:
        raise DataError(path, f"not a judgments database of esc-dist ({e})") from None
    try:
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise DataError(
                path, f"schema version {meta.get('schema_version')!r}, expected {SCHEMA_VERSION!r}"
            )
        if study_id is not None and meta.get("study_id") != study_id:
            raise DataError(
                path, "belongs to another study (its study id differs from study.json's)"
            )
        for table, columns in COLUMNS.items():
            found = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
            if found != columns:
                raise DataError(
                    path,
                    f"the judgments database cannot be used: table {table} "
                    f"{'is missing' if not found else 'was changed'} "
                    "(changed outside esc-dist? restore it from a backup)",
                )
        try:
            yield conn
        except sqlite3.DatabaseError as e:
            # a table dropped, renamed or changed by hand, a page gone bad, a lock held longer
            # than the busy timeout: the database's problem, said in one line
            raise DataError(
                path,
                f"the judgments database cannot be used: {e} (damaged or "
                "changed outside esc-dist? restore it from a backup)",
            ) from None
    finally:
        conn.close()


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: the write lock is taken at the start (waiting up to the busy
    timeout for another process), everything in the block is committed together or not at
    all."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# ---------------------------------------------------------------------------------------------
# Annotators and tokens


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def annotator_names(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM annotators ORDER BY name")]


def put_annotator(conn: sqlite3.Connection, name: str, *, rotate: bool = False) -> str:
    """A new token for the annotator ``name`` (a new annotator, or with ``rotate`` a new token
    replacing the old one); returns the token, stores its hash. Call inside a
    transaction."""
    row = conn.execute("SELECT source FROM annotators WHERE name = ?", (name,)).fetchone()
    if row is not None and not rotate:
        raise ConfigError(
            f"annotator {name!r} exists already (--rotate gives them a new "
            "token, which replaces the old one)"
        )
    if row is None and rotate:
        raise ConfigError(f"no annotator {name!r} to rotate (leave out --rotate to add them)")
    if row is not None and row[0] != "token":
        raise ConfigError(f"annotator {name!r} was imported from {row[0]} and has no token")
    token = secrets.token_urlsafe(32)
    digest = _hash(token)
    if row is None:
        conn.execute(
            "INSERT INTO annotators VALUES (?, ?, ?, 'token', ?)", (name, digest, KDF, now())
        )
    else:
        conn.execute(
            "UPDATE annotators SET token_hash = ?, kdf = ? WHERE name = ?", (digest, KDF, name)
        )
    return token


def ensure_annotator(conn: sqlite3.Connection, name: str, source: str) -> None:
    """An annotator without a token (imported judgments), added if missing."""
    conn.execute(
        "INSERT OR IGNORE INTO annotators VALUES (?, NULL, NULL, ?, ?)", (name, source, now())
    )


def find_token(conn: sqlite3.Connection, token: str) -> str | None:
    """The annotator whose token this is, or None: one lookup of the token's hash in the
    unique index, confirmed by a constant-time comparison."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    digest = _hash(token)
    row = conn.execute(
        "SELECT name, token_hash FROM annotators WHERE token_hash = ? AND kdf = ?", (digest, KDF)
    ).fetchone()
    return row[0] if row is not None and hmac.compare_digest(row[1], digest) else None


# ---------------------------------------------------------------------------------------------
# Judgments


def judged_items(conn: sqlite3.Connection, annotator: str) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT item_id FROM judgments WHERE annotator = ?", (annotator,)
        )
    }


def item_choices(conn: sqlite3.Connection, annotator: str, item_id: str) -> dict[str, str]:
    return dict(
        conn.execute(
            "SELECT criterion, choice FROM judgments WHERE annotator = ? AND item_id = ?",
            (annotator, item_id),
        ).fetchall()
    )


def write_item(
    conn: sqlite3.Connection,
    annotator: str,
    item_id: str,
    choices: Mapping[str, str],
    *,
    replace: bool = False,
) -> None:
    """The rows of one judged item (call inside a transaction); ``replace`` drops the
    annotator's earlier rows of that item first."""
    if replace:
        conn.execute(
            "DELETE FROM judgments WHERE annotator = ? AND item_id = ?", (annotator, item_id)
        )
    when = now()
    conn.executemany(
        "INSERT INTO judgments VALUES (?, ?, ?, ?, ?)",
        [(annotator, item_id, c, v, when) for c, v in choices.items()],
    )


def all_judgments(conn: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    """(annotator, item_id, criterion, choice) of every judgment, in a fixed order."""
    return conn.execute(
        "SELECT annotator, item_id, criterion, choice FROM judgments "
        "ORDER BY annotator, item_id, criterion"
    ).fetchall()
