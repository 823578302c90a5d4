"""Hugging Face Hub ids as model names, resolved from the standard Hugging Face cache.

A model may be named as ``org/name`` (``model.base``, ``--model`` and the other model flags).
Stages never download: they resolve the id offline from the cache that ``huggingface_hub``
keeps (``HF_HUB_CACHE``, default ``$HF_HOME/hub``, default ``~/.cache/huggingface/hub``), so
compute nodes without internet work and every rank reads the same snapshot. ``esc-dist download
org/name`` fills that cache on a node with internet (the login node), fetching only what
transformers loads (configs, tokenizer files, safetensors weights). The snapshot directory's
name is the revision's commit hash: it is part of every stage key that reads the model, and
manifests record ``{"hub": {"repo_id", "revision"}}``.

An existing path always wins over an id of the same spelling (``runs/x`` is a directory when it
exists); what is neither gets one line naming the id, the cache and the download command.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import MissingInput

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# What transformers reads from a model repository; .bin/.pth/.gguf/.onnx duplicates are left.
DOWNLOAD_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.model",
    "*.txt",
    "*.jinja",
    "*.tiktoken",
    "tokenizer*",
]


def is_hub_id(spec: str | None) -> bool:
    """``org/name`` that is not an existing path, a GGUF file or a ``package:`` name."""
    return (
        isinstance(spec, str)
        and HUB_ID.fullmatch(spec) is not None
        and not spec.endswith(".gguf")
        and not Path(spec).exists()
    )


def cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve(spec: str, revision: str | None = None) -> str:
    """The cached snapshot directory of a Hub id (offline; never downloads)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    fix = (
        f"on a node with internet run `esc-dist download {spec}"
        f"{f' --revision {revision}' if revision else ''}` (same HF_HOME)"
    )
    at = f" at revision {revision}" if revision else ""
    try:  # the files download fetches are the ones a snapshot must hold
        return snapshot_download(
            spec, revision=revision, local_files_only=True, allow_patterns=DOWNLOAD_PATTERNS
        )
    except IncompleteSnapshotError:
        problem = "is only partly in the Hugging Face cache"
    except (LocalEntryNotFoundError, OSError, ValueError):
        problem = "is neither a directory nor in the Hugging Face cache"
    raise MissingInput(f"model {spec!r}{at} {problem} ({cache_dir()}); {fix}")


def model_path(spec: str | None, revision: str | None = None) -> str | None:
    """A model flag or ``model.base`` as a local directory: Hub ids resolved, the rest as is."""
    return resolve(spec, revision) if is_hub_id(spec) else spec


def identity(model_dir: str | Path) -> dict | None:
    """``{"repo_id", "revision"}`` of a directory that is a snapshot in the Hugging Face cache
    (``.../models--org--name/snapshots/COMMIT``), else None."""
    p = Path(model_dir)
    if p.parent.name != "snapshots" or not p.parent.parent.name.startswith("models--"):
        return None
    return {
        "repo_id": p.parent.parent.name[len("models--") :].replace("--", "/"),
        "revision": p.name,
    }


def download(spec: str, revision: str | None = None) -> str:
    """Fill the cache with what transformers loads of ``spec``; the snapshot directory. What
    the Hub refuses (no such model or revision, a gated model without a token, no network)
    ends in one line."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{constants.ENDPOINT} ({cache_dir()})"
    try:
        return snapshot_download(spec, revision=revision, allow_patterns=DOWNLOAD_PATTERNS)
    except GatedRepoError:
        problem = "is gated: accept its licence on the Hub and set HF_TOKEN"
    except RepositoryNotFoundError:
        problem = "is not on the Hub (or is private: set HF_TOKEN)"
    except RevisionNotFoundError:
        problem = f"has no revision {revision!r}"
    except OfflineModeIsEnabled:
        problem = "cannot be downloaded with HF_HUB_OFFLINE set"
    except (HfHubHTTPError, OSError) as e:  # no network, a proxy, a full disk
        problem = f"could not be downloaded: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    raise MissingInput(f"model {spec!r} {problem} [{where}]")


def push(directory: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload an exported model directory (its model card included) to ``repo_id``, created
    when missing; the commit's URL. Refusals (no token, no right, no network) end in one line."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(directory), commit_message="esc-dist export"
        )
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise MissingInput(
            f"hub.push to {repo_id!r} at {constants.ENDPOINT} failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0][:200]} (HF_TOKEN set, "
            "with write access?)",
            path=directory,
        ) from None
    return str(getattr(info, "commit_url", info))
