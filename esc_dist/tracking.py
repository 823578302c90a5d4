"""Weights & Biases: one run per stage invocation, on rank 0 only, secrets never logged (the config
and the command line W&B records are redacted by key name and by value).

Runs of one pipeline share a W&B *group* (the recipe's run name unless ``wandb.group`` is set) and
carry a ``job_type`` such as ``sft-planner``. The run id is derived from the output directory, so a
resumed or requeued stage continues the same W&B run. Without an API key the run is offline (the
files land under ``<output>/wandb``; ``wandb sync`` uploads them later).
"""

from __future__ import annotations

import hashlib
import netrc
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .config import Recipe, WandbConfig, redact
from .log import get_logger, rank

log = get_logger(__name__)


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
        return rc.authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(cfg: WandbConfig) -> str:
    """online/offline/disabled. ``WANDB_MODE`` in the environment wins over the recipe."""
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled"
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if _has_credentials() else "offline"


def run_id(output_dir: str | Path, job_type: str) -> str:
    key = f"{Path(output_dir).resolve()}::{job_type}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


@contextmanager
def _redacted_argv() -> Iterator[None]:
    """W&B records the command line in the run's metadata: show it the redacted one."""
    argv = sys.argv
    sys.argv = redact(list(argv))
    try:
        yield
    finally:
        sys.argv = argv


def quiet_wandb() -> None:
    """W&B's own lines on stderr off, whatever the user's W&B settings: its hints ("Detected
    [openai] in use", the Weave advertisement of its LLM-library autodetection) and its run
    banners would otherwise surround the one-line errors of esc-dist (what W&B records is not
    affected). Set before ``import wandb``, which reads them when it sets itself up."""
    os.environ["WANDB_SILENT"] = "true"
    os.environ["WANDB_DISABLE_WEAVE"] = "true"  # the LLM-library autodetection and its hints


def start_run(
    recipe: Recipe, job_type: str, output_dir: str | Path, config: dict[str, Any] | None = None
):
    """Start (or resume) this stage's W&B run on rank 0; returns the run, or None elsewhere."""
    mode = resolve_mode(recipe.wandb)
    if rank() != 0 or mode == "disabled":
        return None
    quiet_wandb()
    import wandb

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # The HF integration reads these when it logs through the run we start here.
    os.environ["WANDB_PROJECT"] = recipe.wandb.project
    os.environ.setdefault("WANDB_LOG_MODEL", "false")
    payload = redact({"recipe": recipe.to_dict(), **(config or {})})
    with _redacted_argv():
        run = wandb.init(
            project=recipe.wandb.project,
            entity=recipe.wandb.entity,
            group=redact(recipe.wandb.group or recipe.run.name),
            job_type=job_type,
            name=redact(f"{recipe.run.name}/{job_type}"),
            tags=redact(list(recipe.wandb.tags)) or None,
            id=run_id(output_dir, job_type),
            resume="allow",
            dir=str(output_dir),
            mode=mode,
            config=payload,
            settings=wandb.Settings(silent=True, x_disable_stats=mode == "offline"),
        )
    log.info("W&B %s run %s (%s) in %s", mode, run.id, job_type, output_dir / "wandb")
    return run


def finish(run, exit_code: int = 0) -> None:
    if run is not None:
        run.finish(exit_code=exit_code)


@contextmanager
def stage_run(
    recipe: Recipe, job_type: str, output_dir: str | Path, config: dict[str, Any] | None = None
) -> Iterator[Any]:
    """The W&B run of one stage invocation, the one way every stage opens and closes it: started
    on rank 0 (None elsewhere or when disabled), finished when the block ends, marked failed
    (exit code 1) when it ends with an exception."""
    run = start_run(recipe, job_type, output_dir, config)
    try:
        yield run
    except BaseException:
        finish(run, exit_code=1)
        raise
    finish(run)


def log_reference(run, path: str | Path, name: str, kind: str) -> None:
    """Log an output directory (an exported model, a report) as a W&B artifact by reference:
    W&B records its files' paths and sizes, uploads nothing (no 15 GB uploads) and computes no
    checksum; the run's group ties it to its pipeline."""
    if run is None:
        return
    import wandb

    artifact = wandb.Artifact(name=name, type=kind, metadata={"path": str(Path(path).resolve())})
    artifact.add_reference(Path(path).resolve().as_uri(), checksum=False)
    run.log_artifact(artifact)
