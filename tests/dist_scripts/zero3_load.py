"""Run under torchrun: load a model the way training does and report how ZeRO-3 partitioned it."""

import json
import sys
from pathlib import Path

from esc_dist import dist
from esc_dist.config import load_recipe
from esc_dist.train.arguments import deepspeed_config, trainer_arguments
from esc_dist.train.common import stage_paths
from esc_dist.train.models import load_policy

model_dir, ds_json, out = sys.argv[1:4]
recipe = load_recipe(None, [f"sft.deepspeed={ds_json}", f"run.output_dir={Path(out).parent}"])
dist.init(120, deepspeed=True)
from trl import SFTConfig  # noqa: E402

paths = stage_paths(recipe, "sft", "planner")
args = SFTConfig(
    **trainer_arguments(recipe.sft, recipe, paths, "probe", False, deepspeed_config(recipe.sft))
)
model = load_policy(model_dir, recipe, recipe.sft)
params = list(model.parameters())
report = {
    "rank": dist.rank(),
    "materialized": sum(p.numel() for p in params),
    "local": sum(p.ds_tensor.numel() for p in params if hasattr(p, "ds_tensor")),
    "full": sum(p.ds_numel for p in params if hasattr(p, "ds_numel")),
    "all_partitioned": all(hasattr(p, "ds_tensor") for p in params),
}
Path(f"{out}.rank{dist.rank()}.json").write_text(json.dumps(report))
