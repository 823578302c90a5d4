"""`esc-dist sft` and `esc-dist dpo`: full-parameter training of one role under any launcher."""

from __future__ import annotations

import argparse

from ..constants import PREEMPTED_EXIT, ROLES
from ..models.hub import model_path
from .common import Command, is_main, recipe_of


def _train(args: argparse.Namespace) -> int:
    stage = args.command
    extra = [f"{stage}.deepspeed={args.deepspeed}"] if args.deepspeed else []
    recipe = recipe_of(args, extra)
    if stage == "sft":
        from ..train.sft import train_sft

        m = train_sft(
            recipe, args.role, data_dir=args.data, model_dir=model_path(args.model), out=args.out
        )
    else:
        from ..eval.strategy import strategy_metrics
        from ..train.dpo import train_dpo

        m = train_dpo(
            recipe,
            args.role,
            pairs_dir=args.pairs,
            model_dir=model_path(args.model),
            out=args.out,
            data_dir=args.data,
            score=strategy_metrics,
        )
    if m is None:
        return PREEMPTED_EXIT
    if is_main():
        extra_facts = f", reward accuracy {m['final_reward_accuracy']}" if stage == "dpo" else ""
        print(
            f"{stage} {args.role}: {m['global_step']} steps, final loss "
            f"{m['final_loss']:.4f}{extra_facts}, exported to {m['export_dir']}"
        )
    return 0


def _common(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--role", required=True, choices=ROLES)
    if stage == "sft":
        p.add_argument("--data", help="`prepare` output directory (default: RUN_DIR/data)")
        p.add_argument(
            "--model",
            help="HF model directory or Hub id (org/name, from the HF cache) "
            "to start from (default: model.base, else RUN_DIR/models/tiny)",
        )
    else:
        p.add_argument(
            "--pairs", help="`judge` output directory of this role (default: RUN_DIR/prefdial/ROLE)"
        )
        p.add_argument(
            "--model", help="SFT export to start from (default: RUN_DIR/models/sft-ROLE)"
        )
        p.add_argument(
            "--data",
            help="`prepare` output whose validation turns the planner's "
            "guard decodes (dpo.validation_every; default: RUN_DIR/data)",
        )
    p.add_argument("--out", help=f"export directory (default: RUN_DIR/models/{stage}-ROLE)")
    p.add_argument("--deepspeed", metavar="JSON", help=f"DeepSpeed config ({stage}.deepspeed)")


COMMANDS = [
    Command(
        "sft",
        _train,
        "supervised fine-tuning of one role (DeepSpeed ZeRO)",
        "Full-parameter SFT of the planner, generator or vanilla model on its prepared "
        "dataset, under any launcher (deepspeed, torchrun, accelerate launch, srun) or as one "
        "process; checkpoints with resume, then one exported HF directory.",
        lambda p: _common(p, "sft"),
    ),
    Command(
        "dpo",
        _train,
        "DPO of one role on its IPM-PrefDial pairs (DeepSpeed ZeRO)",
        "Full-parameter DPO of the planner, generator or vanilla model, starting from its SFT "
        "export, on the pairs kept by `esc-dist judge`; reference log-probs precomputed "
        "(default) or a live reference model; same launchers, checkpoints, resume and export "
        "as sft.",
        lambda p: _common(p, "dpo"),
    ),
]
