"""`esc-dist` command line: one subcommand per pipeline stage, each a thin call into its module.

Every subcommand takes ``--config RECIPE`` (default: the built-in tiny CPU recipe) and trailing
``key.path=value`` overrides of the recipe. Its own flags are shorthands for recipe keys.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from . import __version__
from .config import ConfigError, Recipe, load_recipe
from .data.esconv import DataError


def _recipe(args: argparse.Namespace, extra: list[str] | None = None) -> Recipe:
    return load_recipe(args.config, list(args.overrides) + list(extra or []))


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.tasks import prepare

    extra = []
    if args.esconv:
        extra.append(f"data.esconv={args.esconv}")
    if args.split:
        extra.append(f"data.split={args.split}")
    recipe = _recipe(args, extra)
    out = args.out or f"{recipe.run.output_dir}/data"
    manifest = prepare(recipe.data, out)
    summary = {k: {"dialogues": v["dialogues"], "turns": v["turns"]}
               for k, v in manifest["counts"].items()}
    print(f"wrote {', '.join(manifest['tasks'])} datasets to {out}: {json.dumps(summary)}")
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from .models.tiny import build_tiny_model

    recipe = _recipe(args)
    corpus = args.corpus or recipe.data.esconv
    out = args.out or f"{recipe.run.output_dir}/models/tiny"
    info = build_tiny_model(recipe.tiny_model, corpus, out)
    print(f"wrote a {info['architecture']} model with {info['parameters']:,} parameters and a "
          f"{info['vocab_size']}-token tokenizer to {out}")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="RECIPE", default=None,
                   help="YAML recipe (default: the built-in tiny CPU recipe, configs/tiny-cpu.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value",
                   help="override recipe keys, e.g. data.max_history_messages=8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esc-dist",
        description="Distributed SFT, preference mining (IPM) and DPO for decoupled "
                    "emotional-support conversation models.")
    parser.add_argument("--version", action="version", version=f"esc-dist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Callable, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description)
        p.set_defaults(func=fn)
        return p

    p = add("prepare", cmd_prepare, "build the vanilla, planner and generator datasets",
            "Load and validate ESConv, split it by dialogue, extract supporter turns and write "
            "the three task datasets (HF DatasetDict) with a manifest.")
    p.add_argument("--esconv", help="ESConv file in the original schema (data.esconv)")
    p.add_argument("--split", help="split-index JSON file, or 'seeded' (data.split)")
    p.add_argument("--out", help="output directory (default: RUN_DIR/data)")
    _add_common(p)

    p = add("tiny-model", cmd_tiny_model, "build the tiny from-scratch model and tokenizer",
            "Train a byte-level BPE tokenizer on ESConv text and initialise a small causal LM "
            "(sizes from the recipe's tiny_model section); save both with save_pretrained.")
    p.add_argument("--corpus", help="ESConv file or `prepare` output directory "
                   "(default: data.esconv)")
    p.add_argument("--out", help="output directory (default: RUN_DIR/models/tiny)")
    _add_common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .log import quiet_libraries

    quiet_libraries()
    try:
        return args.func(args)
    except (ConfigError, DataError) as e:
        print(f"esc-dist {args.command}: error: {e}", file=sys.stderr)
        return 2
