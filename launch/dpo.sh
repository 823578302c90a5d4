#!/usr/bin/env bash
# DPO of one role on this machine's GPUs (or 2 CPU ranks) with the deepspeed launcher.
# Usage: launch/dpo.sh ROLE [RECIPE.yaml] [section.key=value ...]
# Runs the stages it needs first (prepare, tiny model, SFT, mining and judging of this role,
# through `esc-dist pipeline --only`, which skips finished ones).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_stage.sh"
launch_after "prepare,sft-$role,mine-$role,judge-$role" dpo
