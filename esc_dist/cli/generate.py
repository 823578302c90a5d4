"""`esc-dist mine`, `esc-dist infer` and `esc-dist merge`: the sharded generation stages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..constants import MODES, ROLES
from ..errors import ConfigError, MergeError
from ..models.hub import model_path
from .common import Command, is_main, recipe_of


def run_mine(args: argparse.Namespace) -> int:
    from ..ipm.mine import mine

    manifest = mine(
        recipe_of(args),
        args.role,
        model_dir=model_path(args.model),
        data_dir=args.data,
        out=args.out,
    )
    if is_main():
        c = manifest["counts"]
        print(
            f"mined {c['samples']} {args.role} samples on {c['turns']} turns: {c['pairs']} pairs "
            f"({c['same_as_gold']} same as gold, {c['unparseable']} unparseable): "
            f"{json.dumps(c)}"
        )
    return 0


def mine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument(
        "--model", metavar="DIR", help="SFT model directory (default: RUN_DIR/models/sft-ROLE)"
    )
    p.add_argument("--data", metavar="DIR", help="`prepare` output (default: RUN_DIR/data)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/ipm/mine-ROLE)")


# the model flags each inference mode takes
MODE_MODELS = {
    "decoupled": ("planner", "generator"),
    "planner": ("planner",),
    "vanilla": ("model",),
    "generator-gold": ("generator",),
}


def run_infer(args: argparse.Namespace) -> int:
    from ..infer import infer

    recipe = recipe_of(args, [f"infer.split={args.split}"] if args.split else [])
    takes = MODE_MODELS[args.mode]
    wrong = [
        f"--{k}" for k in ("planner", "generator", "model") if getattr(args, k) and k not in takes
    ]
    if wrong:
        raise ConfigError(
            f"{'/'.join(wrong)} not for --mode {args.mode}: {args.mode} inference "
            f"takes {' and '.join('--' + k for k in takes)}"
            + (" (the strategies are the gold ones)" if args.mode == "generator-gold" else "")
        )
    manifest = infer(
        recipe,
        args.mode,
        data_dir=args.data,
        out=args.out,
        planner=model_path(args.planner),
        generator=model_path(args.generator),
        model=model_path(args.model),
    )
    if is_main():
        print(f"infer {args.mode} on {manifest['split']}: {json.dumps(manifest['counts'])}")
    return 0


def infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument(
        "--planner",
        metavar="DIR",
        help="planner model (decoupled, planner; default RUN_DIR/models/sft-planner)",
    )
    p.add_argument(
        "--generator",
        metavar="DIR",
        help="generator model (decoupled, generator-gold; default RUN_DIR/models/sft-generator)",
    )
    p.add_argument(
        "--model", metavar="DIR", help="joint model (vanilla; default RUN_DIR/models/sft-vanilla)"
    )
    p.add_argument("--data", metavar="DIR", help="`prepare` output (default: RUN_DIR/data)")
    p.add_argument(
        "--split",
        choices=("train", "validation", "test"),
        help="split to predict (infer.split; default test)",
    )
    p.add_argument(
        "--out", metavar="DIR", help="output directory (default: RUN_DIR/predictions/MODE-SPLIT)"
    )


def merge_output(out: str | Path) -> dict:
    """Merge and verify the chunk files of a mining or inference output directory again and
    rewrite its outputs, manifest and COMPLETED marker (no model, one process)."""
    from ..io import read_json

    out = Path(out)
    job_file = out / "job.json"
    if not job_file.is_file():
        raise MergeError(f"{out}: no job.json (not an `esc-dist mine` or `esc-dist infer` output)")
    try:
        job = read_json(job_file)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deeply
        raise MergeError(f"unreadable job.json ({e})", path=job_file) from None
    stage = job.get("stage") if isinstance(job, dict) else None
    if stage == "mine":
        from ..ipm.mine import finalize
    elif stage == "infer":
        from ..infer import finalize
    else:
        raise MergeError(f"unknown stage {stage!r} (expected mine or infer)", path=job_file)
    return finalize(out, job)


def run_merge(args: argparse.Namespace) -> int:
    recipe_of(args)  # checked like every command's; the merge's settings come from job.json
    manifest = merge_output(args.out)
    print(f"merged {manifest['stage']} output {args.out}: {json.dumps(manifest['counts'])}")
    return 0


def merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="the output directory to merge")


COMMANDS = [
    Command(
        "mine",
        run_mine,
        "sample the SFT model on every training turn and build preference pairs",
        "Inferential Preference Mining: sample mine.n_samples completions per gold "
        "supporter turn of the training split (gold history as context) with a plain model "
        "replica per rank, sharded and resumable (chunk files; the result does not depend on "
        "the number of ranks), then write pairs.jsonl (the judge's input), stats.json, "
        "manifest.json and COMPLETED.",
        mine_arguments,
    ),
    Command(
        "infer",
        run_infer,
        "teacher-forced predictions (decoupled, vanilla, or the generator on gold strategies)",
        "Predict every gold supporter turn of a split with the gold history as context. "
        "decoupled: the planner predicts the strategy, then the generator writes the reply "
        "under the predicted strategy (Others when the planner's output names none); "
        "vanilla: the joint model writes '[Strategy] reply'; generator-gold: the generator "
        "writes the reply under the gold strategy. Decoding follows eval.protocol (paper: "
        "sampled at 0.7 / 0.95 over infer.decode_seeds decodes). Sharded and resumable like "
        "`mine`; writes predictions.jsonl (the input of `esc-dist eval`; further decodes in "
        "predictions.decode-K.jsonl), manifest.json and "
        "COMPLETED.",
        infer_arguments,
    ),
    Command(
        "merge",
        run_merge,
        "re-run the merge and verification of a mining or inference output",
        "Read every chunk file of an `esc-dist mine` or `esc-dist infer` output, check that "
        "each planned chunk exists and each input id appears exactly once, and rewrite the "
        "merged outputs, the manifest and COMPLETED. Needs no model and runs as one process.",
        merge_arguments,
    ),
]
