"""`esc-dist judge`: judge mined pairs and write the IPM-PrefDial dataset of one role.

Wired into the main parser by ``register(sub, add_common)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from ..constants import ROLES


def cmd_judge(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load_recipe
    from ..data.esconv import DataError
    from ..llm_client import LLMError
    from ..tracking import finish, start_run
    from .prefdial import build_prefdial

    try:
        extra = [f"judge.backend={args.backend}"] if args.backend else []
        recipe = load_recipe(args.config, list(args.overrides) + extra)
        out = Path(args.out or f"{recipe.run.output_dir}/prefdial/{args.role}")
        # The W&B files live beside the output: the output directory itself is replaced
        # atomically when the build completes.
        run = start_run(recipe, f"judge-{args.role}", out.resolve().parent,
                        config={"pairs": str(args.pairs), "out": str(out), "role": args.role})
        try:
            manifest = build_prefdial(args.pairs, out, recipe.judge, recipe, run=run,
                                      role=args.role, cache_dir=args.cache_dir)
        finally:
            finish(run)
    except (ConfigError, DataError, LLMError) as e:
        print(f"esc-dist judge: error: {e}", file=sys.stderr)
        return 2
    print(f"judged {manifest['counts']['pairs_in']} {args.role} pairs with "
          f"{manifest['judge_name']}: kept {manifest['counts']['kept']} -> {out}: "
          f"{json.dumps(manifest['counts'])}")
    return 0


def register(sub, add_common: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """Add the ``judge`` subcommand to the subparsers object ``sub``."""
    p = sub.add_parser(
        "judge", help="judge mined pairs and build the IPM-PrefDial dataset of one role",
        description="Keep a mined (chosen, rejected) pair only when the chosen side is free of "
                    "Lack Empathy, Early Emotion Shift and Template Response and the rejected side "
                    "shows at least one; write judged.jsonl, pairs.jsonl, a TRL conversational "
                    "DPO dataset, stats.json and a manifest.")
    p.set_defaults(func=cmd_judge)
    p.add_argument("--role", required=True, choices=ROLES, help="which model's pairs these are")
    p.add_argument("--pairs", required=True, metavar="PAIRS.jsonl",
                   help="pairs file written by the mining stage")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/prefdial/ROLE)")
    p.add_argument("--backend", choices=("offline", "openai"),
                   help="judge backend (judge.backend; default offline)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="cache of LLM judge answers (default: beside the output, judge_cache)")
    add_common(p)
    return p
