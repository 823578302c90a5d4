"""The one rule of where esc-dist writes: nothing of the user's is deleted, renamed or overwritten.

A stage writes its output directory only when that path

- does not exist,
- is an empty directory, or
- is an output that esc-dist created: a directory holding the marker file :data:`MARKER`
  (``.esc-dist-output``, whose one line is the name of the stage that wrote it; every output
  directory esc-dist creates gets one), written by the same stage.

and never when the output is equal to, inside or around one of the stage's inputs. An existing
file is never taken as an output. Anything else is refused with a :class:`ConfigError` naming the
path; esc-dist never deletes or renames what it did not create. :func:`check_output` is the rule,
:func:`claim_dir` (an output written in place), :func:`staged_dir` (an output built beside its
final place and swapped in as a whole) and :func:`remove_output` (the pipeline's clean-up) are
the only ways a stage creates, replaces or removes an output directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import glob
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import ConfigError
from .io import COMPLETED, MANIFEST, apply_umask, atomic_write_text

MARKER = ".esc-dist-output"

# Outputs written before the marker existed: a directory with one of these files, written by
# esc-dist (a JSON object with the given key; COMPLETED is the completion marker every stage
# writes), or a training work directory (checkpoints/, tokenized/) is taken as esc-dist's own, so
# that a run directory of an earlier version is resumed and re-run as before.
_LEGACY = {
    COMPLETED: None,
    MANIFEST: "stage",
    "pipeline.json": "stage",
    "job.json": "fingerprint",
    "report.json": "headline",
    "comparison.json": "systems",
}
_LEGACY_WORK = ("checkpoints", "tokenized")

_HOW = "choose another --out or remove it yourself"


def marker_stage(path: str | os.PathLike) -> str | None:
    """The stage named by ``path``'s marker, "" for an unmarked output of an earlier version,
    None when ``path`` is not an esc-dist output."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return None
    marker = path / MARKER
    if marker.is_file():
        return marker.read_text(encoding="utf-8").strip()
    for name, key in _LEGACY.items():
        if (path / name).is_file() and (key is None or _json_has(path / name, key)):
            return ""
    if path.name.endswith(".work") and any((path / d).is_dir() for d in _LEGACY_WORK):
        return ""
    return None


def is_ours(path: str | os.PathLike) -> bool:
    return marker_stage(path) is not None


def _json_has(path: Path, key: str) -> bool:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and key in obj


def _overlaps(out: Path, inp: Path) -> bool:
    return out == inp or out in inp.parents or inp in out.parents


def check_output(
    out: str | os.PathLike, stage: str, inputs: Iterable[str | os.PathLike | None] = ()
) -> Path:
    """Refuse (``ConfigError``) an output path that :mod:`esc_dist.outputs`' rule forbids for
    ``stage`` with these ``inputs``; returns ``out`` as a Path."""
    out = Path(out)
    full = Path(os.path.realpath(out))
    for inp in inputs:
        if inp is not None and _overlaps(full, Path(os.path.realpath(inp))):
            raise ConfigError(
                f"the output would overwrite this stage's own input {inp}; choose another --out",
                path=out,
            )
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(
            "exists and is not a directory (a file or a symbolic link); esc-dist "
            f"writes its output as a directory and never replaces a file: {_HOW}",
            path=out,
        )
    if not out.is_dir():
        return out
    owner = marker_stage(out)
    if owner is None and any(out.iterdir()):
        raise ConfigError(
            f"is a directory that esc-dist did not create (no {MARKER}) and it is "
            f"not empty; esc-dist does not write over it: {_HOW}",
            path=out,
        )
    if owner and owner != stage:
        raise ConfigError(f"holds the output of esc-dist {owner}, not of {stage}: {_HOW}", path=out)
    return out


def mark(directory: str | os.PathLike, stage: str) -> None:
    """Write the marker that makes ``directory`` an output of ``stage``."""
    if (Path(directory) / MARKER).is_file():
        return
    atomic_write_text(Path(directory) / MARKER, stage + "\n")


def claim_dir(
    out: str | os.PathLike, stage: str, inputs: Iterable[str | os.PathLike | None] = ()
) -> Path:
    """An output written in place (generation chunks, a training work directory, a report
    directory's caches): checked, created and marked as ``stage``'s."""
    out = check_output(out, stage, inputs)
    out.mkdir(parents=True, exist_ok=True)  # mkdir honours the umask
    mark(out, stage)
    return out


def remove_output(path: str | os.PathLike) -> bool:
    """Remove an esc-dist output (marked, or of an earlier version); True if removed. Anything
    else is refused."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return False
    if not is_ours(path):
        raise ConfigError(
            f"would be removed as a stale output, but esc-dist did not create it "
            f"(no {MARKER}): {_HOW}",
            path=path,
        )
    shutil.rmtree(path)
    return True


# ---------------------------------------------------------------------------------------------
# Staged outputs: built beside the final place, swapped in whole


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux renameat2 RENAME_EXCHANGE); False where the
    system cannot, so that the caller falls back to two renames."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _owner_tag() -> str:
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


def _clear_abandoned(final: Path) -> None:
    """Remove the partial builds of ``final`` that a killed esc-dist process on this host left
    (their names carry host and pid; each holds our marker)."""
    host = socket.gethostname().split(".")[0]
    for p in final.parent.glob(f"{glob.escape(f'.{final.name}.{host}-')}*.partial"):
        pid = p.name[len(f".{final.name}.{host}-") :].split(".")[0]
        if not pid.isdigit() or not (p / MARKER).is_file():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _swap_in(tmp: Path, final: Path, stage: str, keep: Iterable[str]) -> None:
    """Put the build ``tmp`` at ``final``: a new name, over an empty directory, or exchanged with
    an output of ``stage`` (whose ``keep`` entries move into the new one)."""
    while True:
        check_output(final, stage)
        if not final.exists():
            try:
                os.rename(tmp, final)  # fails if another process put a directory there first
                return
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                    raise
                continue
        if not any(final.iterdir()):
            try:
                os.replace(tmp, final)  # over an empty directory
                return
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                continue
        for name in keep:
            if (final / name).exists() and not (tmp / name).exists():
                os.replace(final / name, tmp / name)
        if _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old output
            return
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return


@contextmanager
def staged_dir(
    final: str | os.PathLike,
    stage: str,
    inputs: Iterable[str | os.PathLike | None] = (),
    keep: Iterable[str] = (),
) -> Iterator[Path]:
    """Build ``stage``'s output beside ``final`` and put it in place, whole, only when the block
    succeeds.

    ``final`` must be allowed by :func:`check_output` (checked before and again at the swap).
    An existing output is exchanged with the new one in one step where the system allows it and
    untouched until then; on error the partial build is removed and ``final`` stays as it was.
    ``keep`` names entries of the old output (caches, W&B files) carried into the new one.
    """
    final = Path(final)
    inputs = list(inputs)
    check_output(final, stage, inputs)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_abandoned(final)
    tmp = Path(
        tempfile.mkdtemp(
            prefix=f".{final.name}.{_owner_tag()}.", suffix=".partial", dir=final.parent
        )
    )
    try:
        apply_umask(tmp, directory=True)
        mark(tmp, stage)
        yield tmp
        _swap_in(tmp, final, stage, keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
