"""Every private name of TRL, transformers, DeepSpeed and accelerate esc-dist uses, in one place.

These libraries' public APIs do not yet offer what these names do (a DPO collator to wrap, the
fused LM head to extend, a reference engine to offload, DeepSpeed's universal checkpoint
conversion and its CPU shared-memory build, a cache layer's type, the chat template renderer of
the GGUF conversion, two trainer methods overridden, the attention implementation a loaded model
resolved, accelerate's state reset). They were checked against the versions in
``CHECKED`` (``constraints/cpu.txt``); a GPU node may have another stack. So:

- on a version not checked, one warning per library and process names both versions;
- where a name is missing, one line (:class:`MissingInternal`) says which name, which version,
  and what to install, instead of an ``AttributeError`` deep in a stage.

Use :func:`internal` to get a name, :func:`patched` to swap one for the length of a block,
:func:`set_internal` to replace one for good, :func:`require_method` before relying on a
private method an esc-dist class overrides, and :func:`attention_of` for a model's attention.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from .errors import EscError
from .log import get_logger

log = get_logger(__name__)

CHECKED = {
    "transformers": "5.24.0",
    "trl": "1.16.0",
    "deepspeed": "0.19.8",
    "accelerate": "1.15.0",
}
_warned: set[str] = set()


class MissingInternal(EscError):
    """A private library name esc-dist relies on is not in the installed version."""


def installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_version(package: str) -> None:
    """Warn once per process when ``package`` is not the version the internals were checked on."""
    have = installed(package)
    if package in _warned or package not in CHECKED or have == CHECKED[package]:
        return
    _warned.add(package)
    log.warning(
        "%s %s is installed; esc-dist's use of its internals was checked on %s "
        "(constraints/cpu.txt): a stage stops with one line where one is missing",
        package,
        have,
        CHECKED[package],
    )


def _module(path: str):
    package = path.split(".")[0]
    check_version(package)
    try:
        return importlib.import_module(path)
    except ImportError as e:
        raise _missing(path, None, e) from None


def _missing(path: str, name: str | None, cause: BaseException | None = None) -> MissingInternal:
    package = path.split(".")[0]
    what = f"{path}.{name}" if name else path
    return MissingInternal(
        f"{package} {installed(package)} has no {what} (esc-dist was checked on "
        f"{package} {CHECKED.get(package, '?')}): install that version (constraints/cpu.txt)"
        + (f" [{type(cause).__name__}]" if cause else "")
    )


def internal(path: str, name: str) -> Any:
    """``path.name`` (e.g. ``internal("trl.trainer.dpo_trainer", "DataCollatorForPreference")``)."""
    module = _module(path)
    if not hasattr(module, name):
        raise _missing(path, name)
    return getattr(module, name)


def set_internal(path: str, name: str, value: Any) -> None:
    """Replace ``path.name`` for the rest of the process."""
    internal(path, name)
    setattr(_module(path), name, value)


@contextmanager
def patched(path: str, name: str, make) -> Iterator[None]:
    """Within the block, ``path.name`` is ``make(original)``; restored afterwards."""
    original = internal(path, name)
    module = _module(path)
    setattr(module, name, make(original))
    try:
        yield
    finally:
        setattr(module, name, original)


def attention_of(model) -> str | None:
    """The attention implementation a loaded transformers model runs: the private
    ``config._attn_implementation`` (no public name says which one was resolved)."""
    config = model.config
    if not hasattr(config, "_attn_implementation"):
        raise _missing("transformers.configuration_utils", "PretrainedConfig._attn_implementation")
    check_version("transformers")
    return config._attn_implementation


def forget_accelerate_state() -> None:
    """Make accelerate forget its process-wide state (``AcceleratorState`` and
    ``PartialState``, through their private ``_reset_state``) once the process group it
    describes is destroyed: otherwise a later command in the same process (a notebook, a test)
    finds a multi-process state without a group, and its first barrier fails. No public name
    resets it."""
    accel_state = sys.modules.get("accelerate.state")
    if accel_state is None:  # never imported: nothing to forget
        return
    cls = accel_state.AcceleratorState
    require_method(cls, "_reset_state")
    cls._reset_state(reset_partial_state=True)


def require_method(cls: type, name: str) -> None:
    """Before a subclass overrides ``cls.name``, a private method its library calls: one line
    where the installed version has none (the override would silently never run)."""
    if not callable(getattr(cls, name, None)):
        raise _missing(cls.__module__, f"{cls.__name__}.{name}")
    check_version(cls.__module__.split(".")[0])
