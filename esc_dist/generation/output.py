"""A generation stage's output directory: claiming it for one job, finishing it on rank 0."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .. import dist
from ..errors import ConfigError
from ..io import atomic_write_json, is_completed, read_json, read_manifest, verify_outputs
from ..log import get_logger
from ..outputs import check_output, claim_dir
from ..redaction import redact

log = get_logger(__name__)


def finalize_on_main(out: str | Path, finalize: Callable[[], dict]) -> dict:
    """Run ``finalize`` (merge the chunk files, write the output and its manifest) on rank 0
    only and return the manifest on every rank; a failure on rank 0 is raised on every rank."""
    error = None
    if not dist.is_main():
        _share_error(None)
        return read_manifest(out)
    try:
        return finalize()
    except Exception as e:  # tell the other ranks, then raise everywhere
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        _share_error(error)


def _share_error(error: str | None) -> None:
    errors = [e for e in dist.all_gather_object(error) if e]
    if errors and not dist.is_main():
        raise RuntimeError(f"rank 0 failed to merge: {errors[0]}")


def claim_output(out: str | Path, job: dict, name: str) -> dict | None:
    """Prepare a stage's output directory for ``job`` (a dict with a ``fingerprint``).

    Returns the manifest when ``out`` is already complete for the same fingerprint and its output
    files match the manifest (nothing to do); when they do not, the output is made again (from
    the chunk files kept). Raises :class:`esc_dist.errors.ConfigError` when ``out`` holds a
    complete or partial output of another job, so that chunks of different inputs are never
    mixed. Otherwise rank 0 records the job in ``out/job.json`` (what ``esc-dist merge`` reads)
    and None is returned. Every rank calls this and reaches the same answer. ``out`` must be
    allowed by the output rule (:mod:`esc_dist.outputs`) and lie apart from the job's inputs.
    """
    stage = job.get("stage", name)
    inputs = [v["path"] for v in job.get("inputs", {}).values() if isinstance(v, dict)]
    out = check_output(out, stage, inputs)
    if is_completed(out):
        prev = read_manifest(out) or {}
        if prev.get("fingerprint") == job["fingerprint"]:
            problem = verify_outputs(out)
            if problem is None:
                log.info("%s: %s is already complete for these inputs; nothing to do", name, out)
                return prev
            log.warning("%s: %s; making the output again", name, problem)
        else:
            raise ConfigError(
                f"{out} already holds a completed {prev.get('stage', '')} "
                "output for other inputs (model, data or settings differ); remove "
                "it or choose another --out"
            )
    job_file = out / "job.json"
    if job_file.is_file() and read_json(job_file).get("fingerprint") != job["fingerprint"]:
        raise ConfigError(
            f"{out} holds an unfinished run for other inputs (model, data or "
            "settings differ); remove it or choose another --out"
        )
    dist.barrier()  # every rank has looked before rank 0 writes: they all see the same state
    if dist.is_main():
        claim_dir(out, stage, inputs)
        atomic_write_json(job_file, redact(job, by_name=False))
    dist.barrier()
    return None
