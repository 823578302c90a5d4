"""The judge stage (`esc-dist judge`, the pipeline's judge-ROLE): mined pairs in, the role's
IPM-PrefDial dataset out, with its W&B run. The command layer only parses and prints."""

from __future__ import annotations

from pathlib import Path

from ..config import Recipe
from ..errors import PairsError
from ..io import require_verified
from ..layout import RunLayout
from ..outputs import check_output, claim_dir
from ..tracking import resolve_mode, stage_run
from .prefdial import build_prefdial, read_pairs


def judge_stage(
    recipe: Recipe,
    role: str,
    pairs: str | Path,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[dict, Path]:
    """Judge ``pairs`` (a mining output's pairs.jsonl) into ``out`` (default: the run's pairs
    of ``role``); returns (manifest, output directory)."""
    out = check_output(out or RunLayout.of(recipe).pairs(role), "judge", [pairs])
    require_verified(Path(pairs).parent)  # a mining output changed or cut since it was made
    # a bad input fails before anything is written; so does an empty one (nothing to judge
    # is a mistake upstream, not an empty preference dataset)
    if not read_pairs(Path(pairs), role):
        raise PairsError(
            pairs,
            None,
            "no pairs to judge (the file holds no record): check "
            "the mining output it came from (esc-dist mine)",
        )
    # The W&B files live in a directory of their own beside the output (the output is replaced
    # whole when the build completes), named after it, so that the run id follows the output.
    wandb_dir = out.with_name(out.name + ".wandb")
    if resolve_mode(recipe.wandb) != "disabled":
        claim_dir(wandb_dir, "judge", [pairs])
    with stage_run(
        recipe,
        f"judge-{role}",
        wandb_dir,
        config={"pairs": str(pairs), "out": str(out), "role": role},
    ) as run:
        manifest = build_prefdial(
            pairs, out, recipe.judge, recipe, run=run, role=role, cache_dir=cache_dir
        )
    return manifest, out
