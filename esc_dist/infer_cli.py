"""`esc-dist infer`: teacher-forced decoupled or vanilla predictions for one split.

Wired into the main parser by ``register(sub, add_common)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable


def cmd_infer(args: argparse.Namespace) -> int:
    from . import dist
    from .config import ConfigError, load_recipe
    from .data.esconv import DataError
    from .generation import MergeError, PlanMismatch
    from .infer import infer

    try:
        if args.mode == "decoupled" and args.model:
            raise ConfigError("--model is for --mode vanilla; decoupled inference takes "
                              "--planner and --generator")
        if args.mode == "vanilla" and (args.planner or args.generator):
            raise ConfigError("--planner/--generator are for --mode decoupled; vanilla "
                              "inference takes --model")
        extra = [f"infer.split={args.split}"] if args.split else []
        recipe = load_recipe(args.config, list(args.overrides) + extra)
        manifest = infer(recipe, args.mode, data_dir=args.data, out=args.out,
                         planner=args.planner, generator=args.generator, model=args.model)
    except (ConfigError, DataError, MergeError, PlanMismatch, FileNotFoundError) as e:
        print(f"esc-dist infer: error: {e}", file=sys.stderr)
        return 2
    if dist.is_main():
        print(f"infer {args.mode} on {manifest['split']}: {json.dumps(manifest['counts'])}")
    return 0


def register(sub, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the ``infer`` subcommand to the subparsers object ``sub``."""
    p = sub.add_parser(
        "infer", help="teacher-forced predictions (decoupled planner+generator, or vanilla)",
        description="Predict every gold supporter turn of a split with the gold history as "
                    "context. decoupled: the planner predicts the strategy, then the generator "
                    "writes the reply under the predicted strategy (Others when the planner's "
                    "output names none); vanilla: the joint model writes '[Strategy] reply'. "
                    "Sharded and resumable like `mine`; writes predictions.jsonl (the input of "
                    "`esc-dist eval`), manifest.json and COMPLETED.")
    p.set_defaults(func=cmd_infer)
    p.add_argument("--mode", required=True, choices=("decoupled", "vanilla"))
    p.add_argument("--planner", metavar="DIR",
                   help="planner model (decoupled; default RUN_DIR/models/sft-planner)")
    p.add_argument("--generator", metavar="DIR",
                   help="generator model (decoupled; default RUN_DIR/models/sft-generator)")
    p.add_argument("--model", metavar="DIR",
                   help="joint model (vanilla; default RUN_DIR/models/sft-vanilla)")
    p.add_argument("--data", metavar="DIR", help="`prepare` output (default: RUN_DIR/data)")
    p.add_argument("--split", choices=("train", "validation", "test"),
                   help="split to predict (infer.split; default test)")
    p.add_argument("--out", metavar="DIR",
                   help="output directory (default: RUN_DIR/predictions/MODE-SPLIT)")
    add_common(p)
