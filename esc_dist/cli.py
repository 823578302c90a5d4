"""`esc-dist` command line: one subcommand per pipeline stage, each a thin call into its module.

Every subcommand takes ``--config RECIPE`` (default: the built-in tiny CPU recipe) and trailing
``key.path=value`` overrides of the recipe. Its own flags are shorthands for recipe keys.
"""

from __future__ import annotations

import argparse
import json
import re
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


def cmd_sft(args: argparse.Namespace) -> int:
    from .train.sft import train_sft

    recipe = _recipe(args, [f"sft.deepspeed={args.deepspeed}"] if args.deepspeed else [])
    m = train_sft(recipe, args.role, data_dir=args.data, model_dir=args.model, out=args.out)
    if m is None:
        return PREEMPTED_EXIT
    if _is_main():
        print(f"sft {args.role}: {m['global_step']} steps, final loss {m['final_loss']:.4f}, "
              f"exported to {m['export_dir']}")
    return 0


def cmd_dpo(args: argparse.Namespace) -> int:
    from .train.dpo import train_dpo

    recipe = _recipe(args, [f"dpo.deepspeed={args.deepspeed}"] if args.deepspeed else [])
    m = train_dpo(recipe, args.role, pairs_dir=args.pairs, model_dir=args.model, out=args.out)
    if m is None:
        return PREEMPTED_EXIT
    if _is_main():
        print(f"dpo {args.role}: {m['global_step']} steps, final loss {m['final_loss']:.4f}, "
              f"reward accuracy {m['final_reward_accuracy']}, exported to {m['export_dir']}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from .pipeline import run_pipeline

    recipe = _recipe(args)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    try:
        run_pipeline(recipe, only=only, force=args.force)
    except (RuntimeError, ValueError) as e:
        print(f"esc-dist pipeline: {e}", file=sys.stderr)
        return 1
    return 0


# Exit status of a training stage stopped by a preemption signal after saving a checkpoint:
# the Slurm templates requeue the job on it.
PREEMPTED_EXIT = 75


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


_OVERRIDE_WORD = re.compile(r"^[A-Za-z_]\w*\.[\w.\-]+=")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``section.key=value`` recipe overrides from the other words, wherever they are."""
    rest, overrides = [], []
    for word in argv:
        (overrides if _OVERRIDE_WORD.match(word) else rest).append(word)
    return rest, overrides


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="RECIPE", default=None,
                   help="YAML recipe (default: the built-in tiny CPU recipe, configs/tiny-cpu.yaml)")
    p.epilog = ("Recipe keys can be overridden anywhere on the command line with "
                "section.key=value words, e.g. sft.learning_rate=2e-5 run.output_dir=runs/x.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esc-dist",
        description="Distributed SFT, preference mining (IPM) and DPO for decoupled "
                    "emotional-support conversation models.")
    parser.add_argument("--version", action="version", version=f"esc-dist {__version__}")
    # The deepspeed launcher passes --local_rank=N; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
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

    p = add("sft", cmd_sft, "supervised fine-tuning of one role (DeepSpeed ZeRO)",
            "Full-parameter SFT of the planner, generator or vanilla model on its prepared "
            "dataset, under any launcher (deepspeed, torchrun, accelerate launch, srun) or as one "
            "process; checkpoints with resume, then one exported HF directory.")
    p.add_argument("--role", required=True, choices=["planner", "generator", "vanilla"])
    p.add_argument("--data", help="`prepare` output directory (default: RUN_DIR/data)")
    p.add_argument("--model", help="HF model directory to start from (default: model.base, "
                   "else RUN_DIR/models/tiny)")
    p.add_argument("--out", help="export directory (default: RUN_DIR/models/sft-ROLE)")
    p.add_argument("--deepspeed", metavar="JSON", help="DeepSpeed config (sft.deepspeed)")
    _add_common(p)

    p = add("dpo", cmd_dpo, "DPO of one role on its IPM-PrefDial pairs (DeepSpeed ZeRO)",
            "Full-parameter DPO of the planner, generator or vanilla model, starting from its SFT "
            "export, on the pairs kept by `esc-dist judge`; reference log-probs precomputed "
            "(default) or a live reference model; same launchers, checkpoints, resume and export "
            "as sft.")
    p.add_argument("--role", required=True, choices=["planner", "generator", "vanilla"])
    p.add_argument("--pairs", help="`judge` output directory of this role "
                   "(default: RUN_DIR/prefdial/ROLE)")
    p.add_argument("--model", help="SFT export to start from (default: RUN_DIR/models/sft-ROLE)")
    p.add_argument("--out", help="export directory (default: RUN_DIR/models/dpo-ROLE)")
    p.add_argument("--deepspeed", metavar="JSON", help="DeepSpeed config (dpo.deepspeed)")
    _add_common(p)

    p = add("pipeline", cmd_pipeline, "run every stage of a recipe, skipping finished ones",
            "prepare -> tiny model -> SFT x3 -> mine x3 -> judge x3 -> DPO x3 -> infer "
            "(Vanilla-SFT/DPO, Decoupled-SFT/DPO) -> eval x4 -> compare, into run.output_dir; "
            "training, mining and inference on pipeline.nproc ranks with pipeline.launcher. "
            "A stage whose output is complete and whose inputs and settings are unchanged is "
            "skipped; a failed stage stops the run and names its log.")
    p.add_argument("--only", metavar="STAGE,...", help="run only these stages (e.g. sft-planner)")
    p.add_argument("--force", action="store_true", help="rerun stages even when up to date")
    _add_common(p)

    from .eval.cli import register as register_eval
    from .infer_cli import register as register_infer
    from .ipm.judge_cli import register as register_judge
    from .ipm.mine_cli import register as register_mine

    register_judge(sub, _add_common)
    register_eval(sub, _add_common)
    register_mine(sub, _add_common)  # mine, merge
    register_infer(sub, _add_common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    words, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(words)
    args.overrides = overrides
    from .log import quiet_libraries

    quiet_libraries()
    from . import dist

    rc = 1
    try:
        rc = args.func(args)
    except (ConfigError, DataError) as e:
        print(f"esc-dist {args.command}: error: {e}", file=sys.stderr)
        rc = 2
    finally:
        dist.shutdown(ok=rc == 0)
    return rc
