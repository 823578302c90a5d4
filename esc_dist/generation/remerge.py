"""Re-merge a generation stage's output from its ``job.json`` (``esc-dist merge``): merge and
verify the chunk files again and rewrite the outputs, the manifest and COMPLETED, with no model
and in one process.

Not imported by :mod:`esc_dist.generation` itself: it knows the stages built on the package.
"""

from __future__ import annotations

from pathlib import Path

from .. import infer
from ..errors import MergeError
from ..io import read_json
from ..ipm import mine

FINALIZE = {"mine": mine.finalize, "infer": infer.finalize}


def merge_output(out: str | Path) -> dict:
    """Merge and verify the chunk files of a mining or inference output directory again and
    rewrite its outputs, manifest and COMPLETED marker (no model, one process)."""
    out = Path(out)
    job_file = out / "job.json"
    if not job_file.is_file():
        raise MergeError(f"{out}: no job.json (not an `esc-dist mine` or `esc-dist infer` output)")
    job = read_json(job_file)
    stage = job.get("stage")
    finalize = FINALIZE.get(stage) if isinstance(stage, str) else None
    if finalize is None:
        raise MergeError(f"{job_file}: unknown stage {job.get('stage')!r}")
    return finalize(out, job)
