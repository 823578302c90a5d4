"""Small file helpers: atomic writes (with the user's umask), hashes, manifests, completion
markers. Output directories (staged or claimed) are :mod:`esc_dist.outputs`'."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from .errors import DataError, MissingInput
from .redaction import redact

MANIFEST = "manifest.json"
COMPLETED = "COMPLETED"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _edges(f: IO[bytes], size: int) -> bytes:
    """A big file's first and last MiB (what identifies it cheaply, with its size)."""
    head = f.read(1 << 20)
    f.seek(max(0, size - (1 << 20)))
    return head + f.read()


def model_fingerprint(model_dir: str | Path) -> str:
    """Identity of a model directory without reading whole weight files: the small files (config,
    tokenizer, manifest) in full, each weight file by name, size and its first and last MiB.
    A directory whose manifest lists its files must match it (:func:`require_verified`)."""
    model_dir = Path(model_dir)
    if model_dir.is_dir():  # a changed or cut export first: its message says what to rerun
        require_verified(model_dir)
    check_model_dir(model_dir)
    h = hashlib.sha256()
    for p in sorted(model_dir.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        size = p.stat().st_size
        h.update(f"{p.name}\x1f{size}\x1f".encode())
        with open(p, "rb") as f:
            h.update(f.read() if size <= 4 << 20 else _edges(f, size))
    return h.hexdigest()


def _read_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc), else set and
    put back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK: int | None = None


def umask() -> int:
    """The umask, read once per process."""
    global _UMASK
    if _UMASK is None:
        _UMASK = _read_umask()
    return _UMASK


def apply_umask(path: str | os.PathLike | int, directory: bool = False) -> None:
    """Give a temporary file or directory (``mkstemp`` makes 0600, ``mkdtemp`` 0700) the mode
    that an ordinary create under the user's umask would; ``path`` may be an open descriptor."""
    mode = (0o777 if directory else 0o666) & ~umask()
    if isinstance(path, int):
        os.fchmod(path, mode)
    else:
        os.chmod(path, mode)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_model_dir(model_dir: str | Path) -> None:
    """Refuse, naming the directory, a model directory that cannot load, before any heavy
    loading: no directory, no (or not JSON) config.json, no tokenizer, no weights, or a
    safetensors file that is truncated or not one (its header checked against its size)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MissingInput("model directory not found", path=model_dir)
    config = model_dir / "config.json"
    if not config.is_file():
        raise MissingInput("no config.json (not a model directory)", path=model_dir)
    try:
        if not isinstance(read_json(config), dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(model_dir, f"config.json is not a valid JSON object ({e})") from None
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise MissingInput(f"no tokenizer ({' or '.join(TOKENIZER_FILES)})", path=model_dir)
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights and not any(model_dir.glob("pytorch_model*.bin")):
        raise MissingInput("no weights (model.safetensors)", path=model_dir)
    for w in weights:
        if not _safetensors_complete(w):
            raise DataError(model_dir, f"{w.name} is truncated or not a safetensors file")


def _safetensors_complete(path: Path) -> bool:
    """Whether ``path`` starts with a safetensors header (8-byte little-endian length, then a
    JSON object) whose tensors all end within the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > size - 8:
            return False
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            return False
    if not isinstance(header, dict):
        return False
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(x, int) for x in offsets)
        ):
            return False
        end = max(end, offsets[1])
    return 8 + n + end <= size


@contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file opened for writing beside ``path`` that replaces ``path`` only when the block
    succeeds, so readers see the old file or the whole new one (``mode`` "w" or "wb")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        apply_umask(fd)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    with atomic_writer(path) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_text(
    path: str | os.PathLike,
    what: str = "file",
    error: Callable[[str | os.PathLike, str], Exception] | None = None,
) -> str:
    """The UTF-8 text of a file the user named; every way it can be unreadable (missing, a
    directory, a symlink loop, no permission, not UTF-8) raises ``error(path, problem)``, by
    default a :class:`DataError`, with ``what`` the kind of file ("recipe", "split file")."""
    error = error or DataError
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise error(path, f"{what} not found") from None
    except IsADirectoryError:
        raise error(path, f"is a directory, not a {what}") from None
    except PermissionError:
        raise error(path, f"no permission to read this {what}") from None
    except OSError as e:  # a symlink loop, a name too long, an I/O error
        raise error(path, f"cannot read this {what} ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        bom = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        hint = " (it looks like UTF-16: save it as UTF-8)" if bom else ""
        line = data.count(b"\n", 0, e.start) + 1
        raise error(path, f"not UTF-8 text at line {line}, byte {e.start}{hint}") from None


def parse_json(
    text: str,
    path: str | os.PathLike,
    error: Callable[[str | os.PathLike, str], Exception] | None = None,
) -> Any:
    """``json.loads`` whose failures (bad syntax, nesting too deep) raise ``error(path, problem)``
    (by default a :class:`DataError`) naming the line and column."""
    error = error or DataError
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(path, f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise error(path, "JSON nested too deeply") from None


def load_json(
    path: str | os.PathLike,
    what: str = "file",
    error: Callable[[str | os.PathLike, str], Exception] | None = None,
) -> Any:
    """The JSON value of a file that may be missing, unreadable or malformed: each way raises
    ``error(path, problem)`` (by default a :class:`DataError`)."""
    return parse_json(read_text(path, what, error), path, error)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def jsonl_line(rec: Any) -> str:
    """One JSON Lines record, without the newline."""
    return json.dumps(rec, ensure_ascii=False)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """Write ``rows`` as JSON Lines, atomically."""
    with atomic_writer(path) as f:
        for rec in rows:
            f.write(jsonl_line(rec) + "\n")


def iter_jsonl(
    path: str | os.PathLike, error: Callable[[int | None, str], Exception] | None = None
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, record)`` for every non-blank line of a JSON Lines file.

    A missing file, bytes that are not UTF-8, a line that is not JSON (``truncated JSON`` when
    the last line has no newline: a file cut short) or nested too deeply raise
    ``error(line, problem)``, by default a :class:`DataError` naming the file and the line.
    """
    path = Path(path)
    if error is None:

        def error(line: int | None, problem: str) -> Exception:
            return DataError(path, problem, line=line)

    try:
        f = open(path, "rb")  # decoded line by line: a bad byte is told at its own line
    except FileNotFoundError:
        raise error(None, "file not found") from None
    except IsADirectoryError:
        raise error(None, "is a directory, not a file") from None
    except OSError as e:
        raise error(None, f"cannot read ({e.strerror})") from None
    with f:
        lineno = 0
        while True:
            raw = f.readline()
            if not raw:
                return
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(
                    lineno, f"not UTF-8 text at column {e.start + 1} ({e.reason})"
                ) from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                problem = "invalid JSON" if line.endswith("\n") else "truncated JSON"
                raise error(lineno, f"{problem} ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise error(lineno, "JSON nested too deeply") from None
            yield lineno, rec


def write_manifest(directory: str | os.PathLike, manifest: dict) -> None:
    """Write ``manifest.json``; secret-looking values (keys, passwords in URLs) become "***"."""
    atomic_write_json(Path(directory) / MANIFEST, redact(manifest, by_name=False))


def read_manifest(directory: str | os.PathLike) -> dict | None:
    p = Path(directory) / MANIFEST
    return read_json(p) if p.is_file() else None


def mark_completed(directory: str | os.PathLike) -> None:
    atomic_write_text(Path(directory) / COMPLETED, "")


def is_completed(directory: str | os.PathLike) -> bool:
    return (Path(directory) / COMPLETED).is_file()


# ---------------------------------------------------------------------------------------------
# Outputs recorded in a manifest and checked before an output counts as complete

BIG_FILE = 64 << 20  # bigger files (model weights) are recorded by size and their edges


def output_record(directory: str | os.PathLike, name: str) -> dict:
    """A manifest's record of the output file ``directory/name``: its sha256, or for a big file
    (over 64 MiB: model weights) its size and the sha256 of its first and last MiB."""
    path = Path(directory) / name
    size = path.stat().st_size
    if size <= BIG_FILE:
        return {"path": name, "sha256": sha256_file(path)}
    with open(path, "rb") as f:
        edges = hashlib.sha256(_edges(f, size)).hexdigest()
    return {"path": name, "size": size, "edges_sha256": edges}


def directory_outputs(directory: str | os.PathLike) -> dict:
    """Records (:func:`output_record`) of every file under ``directory`` except the manifest, the
    completion marker and hidden files, keyed by their relative path."""
    directory = Path(directory)
    names = sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file()
        and p.name not in (MANIFEST, COMPLETED)
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )
    return {name: output_record(directory, name) for name in names}


def verify_outputs(directory: str | os.PathLike) -> str | None:
    """None when every output file that ``directory``'s manifest lists (``outputs``) is there and
    matches its record, else what is wrong, naming the file. A directory without a manifest, or
    whose manifest lists no outputs, has nothing to check."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except (ValueError, RecursionError):
        return f"{directory / MANIFEST} is not readable JSON: the file was changed or cut"
    outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
    for rec in (outputs or {}).values():
        path = directory / rec["path"]
        if not path.is_file():
            return f"{path} is missing (its manifest lists it)"
        if "sha256" in rec:
            ok, how = sha256_file(path) == rec["sha256"], "sha256"
        else:
            ok, how = output_record(directory, rec["path"]) == rec, "size and edges"
        if not ok:
            return f"{path} does not match its manifest ({how}): the file was changed or cut"
    return None


def require_verified(directory: str | os.PathLike) -> None:
    """Raise :class:`DataError` when :func:`verify_outputs` finds a problem in ``directory``, an
    input of the calling stage; the message names the file and the stage that writes it."""
    problem = verify_outputs(directory)
    if problem is not None:
        try:
            rerun = f"`esc-dist {read_manifest(directory)['stage']}`"
        except (ValueError, RecursionError, TypeError, KeyError):
            rerun = "the stage that wrote it"
        raise DataError(None, f"{problem}; rerun {rerun}")
