"""What the subcommand modules share with the command table (``esc_dist.cli``): a command's
entry, the recipe of its arguments, rank 0, the recipe overrides among the words, and the one
error policy's message."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Callable

from ..config import Recipe, load_recipe
from ..errors import EscError
from ..redaction import redact_text


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None]


def recipe_of(args: argparse.Namespace, extra: list[str] | None = None) -> Recipe:
    """The recipe of ``--config`` with the command line's overrides, then ``extra`` ones."""
    return load_recipe(args.config, list(args.overrides) + list(extra or []))


def is_main() -> bool:
    from .. import dist

    return dist.is_main()


_OVERRIDE_WORD = re.compile(r"^[A-Za-z_]\w*\.[\w.\-]+=")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``section.key=value`` recipe overrides from the other words, wherever they are."""
    rest, overrides = [], []
    for word in argv:
        (overrides if _OVERRIDE_WORD.match(word) else rest).append(word)
    return rest, overrides


def error_message(e: BaseException) -> str | None:
    """The one-line message of an error the user caused, or None for a bug."""
    if isinstance(e, EscError):
        message = str(e)
    elif isinstance(e, OSError) and e.filename is not None:
        message = redact_text(f"{e.filename}: {e.strerror or e}")
    else:
        return None
    # a value quoted from the user's files (an id, a name) may hold a line break: shown escaped,
    # the message stays one line
    return message.replace("\r", "\\r").replace("\n", "\\n")
