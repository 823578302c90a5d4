#!/usr/bin/env bash
# DPO of one role on this machine's GPUs (or 2 CPU ranks) with the deepspeed launcher.
# Usage: launch/dpo.sh ROLE [RECIPE.yaml] [section.key=value ...]
# Runs the stages it needs first (prepare, tiny model, SFT, mining and judging of this role,
# through `esc-dist pipeline --only`, which skips finished ones).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_stage.sh"
needs="prepare,sft-$role,mine-$role,judge-$role"
[[ "$(recipe_get r.model.base)" == "None" ]] && needs="$needs,tiny-model"
esc-dist pipeline --only "$needs" --config "$recipe" "${overrides[@]}"
exec "${launch[@]}" dpo --role "$role" --config "$run_dir/recipe.yaml"
