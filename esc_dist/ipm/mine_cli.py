"""`esc-dist mine` (sample the SFT model on the training turns, build preference pairs) and
`esc-dist merge` (re-run only the merge and verification of a mining or inference output).

Wired into the main parser by ``register(sub, add_common)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from ..generation.remerge import merge_output

ROLES = ("planner", "generator", "vanilla")


def _errors():
    from ..config import ConfigError
    from ..data.esconv import DataError
    from ..generation import MergeError, PlanMismatch

    return (ConfigError, DataError, MergeError, PlanMismatch, FileNotFoundError)


def cmd_mine(args: argparse.Namespace) -> int:
    from .. import dist
    from ..config import load_recipe
    from .mine import mine

    try:
        recipe = load_recipe(args.config, list(args.overrides))
        manifest = mine(recipe, args.role, model_dir=args.model, data_dir=args.data,
                        out=args.out)
    except _errors() as e:
        print(f"esc-dist mine: error: {e}", file=sys.stderr)
        return 2
    if dist.is_main():
        c = manifest["counts"]
        print(f"mined {c['samples']} {args.role} samples on {c['turns']} turns: {c['pairs']} pairs "
              f"({c['same_as_gold']} same as gold, {c['unparseable']} unparseable): "
              f"{json.dumps(c)}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    try:
        manifest = merge_output(args.out)
    except _errors() as e:
        print(f"esc-dist merge: error: {e}", file=sys.stderr)
        return 2
    print(f"merged {manifest['stage']} output {args.out}: {json.dumps(manifest['counts'])}")
    return 0


def register(sub, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the ``mine`` and ``merge`` subcommands to the subparsers object ``sub``."""
    p = sub.add_parser(
        "mine", help="sample the SFT model on every training turn and build preference pairs",
        description="Inferential Preference Mining: sample mine.n_samples completions per gold "
                    "supporter turn of the training split (gold history as context) with a "
                    "plain model replica per rank, sharded and resumable (chunk files; the "
                    "result does not depend on the number of ranks), then write pairs.jsonl "
                    "(the judge's input), stats.json, manifest.json and COMPLETED.")
    p.set_defaults(func=cmd_mine)
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--model", metavar="DIR", help="SFT model directory "
                   "(default: RUN_DIR/models/sft-ROLE)")
    p.add_argument("--data", metavar="DIR", help="`prepare` output (default: RUN_DIR/data)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/ipm/mine-ROLE)")
    add_common(p)

    p = sub.add_parser(
        "merge", help="re-run the merge and verification of a mining or inference output",
        description="Read every chunk file of an `esc-dist mine` or `esc-dist infer` output, "
                    "check that each planned chunk exists and each input id appears exactly "
                    "once, and rewrite the merged outputs, the manifest and COMPLETED. Needs no "
                    "model and runs as one process.")
    p.set_defaults(func=cmd_merge)
    p.add_argument("--out", required=True, metavar="DIR", help="the output directory to merge")
    add_common(p)
