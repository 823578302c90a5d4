"""`esc-dist` command line: every subcommand registered from one table, one error policy.

Every subcommand takes ``--config RECIPE`` (default: the built-in tiny CPU recipe) and trailing
``key.path=value`` overrides of the recipe; its own flags are shorthands for recipe keys. The
subcommands live by area in this package (``data``, ``train``, ``generate``, ``evaluate``,
``stages``, ``human_eval``); each module lists its :class:`Command` entries in ``COMMANDS``.

Error policy (the one place it is decided): an :class:`~esc_dist.errors.EscError` (bad input,
recipe or output) and an OS error on a named file end the command with one line on stderr,
``esc-dist CMD: error: FILE, line N: problem``, printed by rank 0 only, and the error's exit
status (2; 1 for a failed pipeline stage); anything else is a bug and keeps its traceback. The
process group is torn down either way.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import EscError
from ..redaction import redact_text
from .common import Command, error_message, split_overrides  # noqa: F401 (the CLI's face)


def commands() -> list[Command]:
    """Every subcommand, in pipeline order."""
    from . import app, data, evaluate, generate, human_eval, stages, train

    return [
        *data.COMMANDS,
        *train.COMMANDS,
        *generate.COMMANDS,
        *evaluate.COMMANDS,
        *stages.COMMANDS,
        *app.COMMANDS,
        *human_eval.COMMANDS,
    ]


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors quote the word they reject: a secret-looking one shows as ***."""

    def error(self, message: str):
        super().error(redact_text(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="esc-dist",
        description="Distributed SFT, preference mining (IPM) and DPO for decoupled "
        "emotional-support conversation models.",
    )
    parser.add_argument("--version", action="version", version=f"esc-dist {__version__}")
    # The deepspeed launcher passes --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in commands():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description)
        p.set_defaults(func=cmd.run)
        cmd.arguments(p)
        p.add_argument(
            "--config",
            metavar="RECIPE",
            default=None,
            help="YAML recipe (default: the built-in tiny CPU recipe, configs/tiny-cpu.yaml)",
        )
        p.epilog = (
            "Recipe keys can be overridden anywhere on the command line with "
            "section.key=value words, e.g. sft.learning_rate=2e-5 run.output_dir=runs/x."
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    words, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(words)
    args.overrides = overrides
    from .. import dist
    from ..log import quiet_libraries

    quiet_libraries()
    rc = 1
    try:
        rc = args.func(args)
    except (EscError, OSError) as e:
        message = error_message(e)
        if message is None:
            raise
        rc = e.exit_code if isinstance(e, EscError) else 2
        if dist.is_main():
            print(f"esc-dist {args.command}: error: {message}", file=sys.stderr)
    except KeyboardInterrupt:
        rc = 130
    finally:
        dist.shutdown(ok=rc == 0)
    return rc
