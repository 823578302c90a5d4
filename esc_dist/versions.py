"""Versions of the code behind each stage's outputs, part of the stage keys.

A stage is up to date when its settings and inputs are unchanged (``pipeline.stage_key``); what
the code makes of them counts too. Each kind of stage (its subcommand) has a version here, and
the source files its outputs depend on (``SOURCES``) have a recorded hash (``RECORDED``: their
syntax trees without docstrings, so comments, docstrings and formatting do not count).
``tests/unit/test_versions.py`` fails when a kind's files change and its recorded hash does not:

- if the change alters what the stage writes (a loss, a prompt, data formatting, parsing, a
  metric), bump the kind's version: outputs made by the older code then run again (and a
  training stage does not resume their checkpoints);
- if it does not (a refactor, a log line), record the new hash only.

Version 1 is left out of the keys, so the keys of outputs made before versions existed hold.
The judge's rules and prompt have their own versions besides (``ipm.verdicts``).
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

CODE_VERSIONS: dict[str, int] = {
    "prepare": 1,
    "tiny-model": 1,
    "base-model": 1,
    "sft": 1,
    "mine": 1,
    "judge": 1,
    "dpo": 1,
    "infer": 1,
    "eval": 1,
    "compare": 1,
}

_TRAIN = ("train/common.py", "train/runner.py", "train/tokens.py", "train/arguments.py",
          "train/models.py", "data/fitting.py", "models/loading.py")  # fmt: skip
_GENERATE = ("generation/", "data/fitting.py", "models/loading.py", "strategies.py")

# Package-relative files (a folder: its .py files) whose code makes each kind's outputs.
SOURCES: dict[str, tuple[str, ...]] = {
    "prepare": ("data/esconv.py", "data/splits.py", "data/tasks.py", "data/transcript.py",
                "strategies.py"),
    "tiny-model": ("models/tiny.py", "models/chatml.py"),
    "base-model": ("models/gguf.py", "models/chatml.py"),
    "sft": ("train/sft.py", "train/packing.py", *_TRAIN),
    "mine": ("ipm/mine.py", *_GENERATE),
    "judge": ("ipm/stage.py", "ipm/prefdial.py", "ipm/balance.py", "ipm/verdicts.py"),
    "dpo": ("train/dpo.py", "train/heads.py", "train/packing.py", "train/guard.py",
            *_TRAIN),
    "infer": ("infer.py", *_GENERATE),
    "eval": ("eval/", "psych/"),
    "compare": ("eval/stage.py", "eval/compare.py", "eval/markdown.py", "eval/views.py",
                "eval/plots.py"),
}  # fmt: skip

RECORDED_PYTHON = (3, 11)  # the syntax trees' dump differs between Python versions
RECORDED: dict[str, str] = {
    "prepare": "1cf8001a6dea204d",
    "tiny-model": "1e2ea46eb1dacf70",
    "base-model": "787719e828f1e741",
    "sft": "b61e8838c3b95b14",
    "mine": "4f999c308b5f2318",
    "judge": "d4675c1594f4e781",
    "dpo": "6c90e3e7b651bbd4",
    "infer": "6ea187b99f2613fa",
    "eval": "ad780342593250ca",
    "compare": "6d55ba185f70d7a7",
}


def code_version(kind: str) -> str | None:
    """What a stage of ``kind`` (its subcommand) puts into its key: None at version 1."""
    v = CODE_VERSIONS.get(kind, 1)
    return None if v == 1 else f"{kind}-v{v}"


def _files(kind: str) -> list[Path]:
    out: set[Path] = set()
    for rel in SOURCES[kind]:
        path = PACKAGE / rel
        out.update(path.glob("*.py") if rel.endswith("/") else [path])
    return sorted(out)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


def source_hash(kind: str) -> str:
    """The hash of the code behind ``kind``: each file's path and syntax tree, no docstrings."""
    h = hashlib.sha256()
    for path in _files(kind):
        tree = _without_docstrings(ast.parse(path.read_text(encoding="utf-8")))
        h.update(str(path.relative_to(PACKAGE)).encode() + b"\0")
        h.update(ast.dump(tree).encode() + b"\0")
    return h.hexdigest()[:16]
