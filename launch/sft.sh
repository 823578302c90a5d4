#!/usr/bin/env bash
# SFT of one role on this machine's GPUs (or 2 CPU ranks) with the deepspeed launcher.
# Usage: launch/sft.sh ROLE [RECIPE.yaml] [section.key=value ...]
# Runs the stages it needs first (through `esc-dist pipeline --only`, which skips finished
# ones). LAUNCHER=torchrun|accelerate and NPROC override the launcher and process count.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_stage.sh"
launch_after prepare sft
