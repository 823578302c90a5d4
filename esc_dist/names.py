"""The one character set of names that end up in paths, Slurm job names, the tab-separated job
plan, W&B groups and tags, report rows and chart titles.

A name is 1-64 ASCII letters, digits and ``. _ @ : -``, starting with a letter or a digit. That
leaves out everything a format gives a meaning to: whitespace and line breaks (the job plan is
read line by line and field by field), ``|`` and ``*`` (Markdown tables), ``<`` and ``&``
(HTML), ``,`` and quotes (CSV), ``$`` (matplotlib reads ``$...$`` as a formula), ``/``
(paths). The whole string must match (``fullmatch``): a trailing newline is not part of a name.

Names are checked once, where they enter: the recipe (``run.name``, ``wandb.group``,
``wandb.tags``), the command line (``eval --name``, ``compare --names``, ``human-eval build
--names``, ``human-eval add-annotator``) and imports (Label Studio user ids).
"""

from __future__ import annotations

import re

from .errors import ConfigError

NAME_RULE = "1-64 letters, digits and . _ @ : -, starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:\-]{0,63}")


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_name(value: object, what: str, error=ConfigError) -> str:
    """``value`` if it is a name (see the module), else ``error(message)`` saying what it is
    (``what``, e.g. "'run.name'") and the rule."""
    if not is_name(value):
        raise error(f"{what} {value!r:.80}: use {NAME_RULE}")
    return value


# ---------------------------------------------------------------------------------------------
# Text that did not come through the check (older files, imported values) on its way out


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~>-])")


def markdown_text(text: object) -> str:
    """``text`` for Markdown (a table cell, a heading, a list item): one line (line breaks and
    tabs become spaces), HTML's ``& < >`` as entities, Markdown's punctuation (``|`` included)
    backslash-escaped, so it shows as the characters it is and adds no row, link or markup.
    A name (the character set above) is left as it is: nothing in it is markup."""
    if is_name(text):
        return text
    one_line = " ".join(str(text).split())
    entities = one_line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", entities)


def plot_text(text: object) -> str:
    """``text`` for a matplotlib title, label or legend: ``$`` escaped, so that it is not read
    as a formula (mathtext)."""
    return str(text).replace("$", r"\$")
