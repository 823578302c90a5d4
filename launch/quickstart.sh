#!/usr/bin/env bash
# The main job: install esc-dist (pinned CPU stack) and run the whole pipeline on the tiny default
# recipe with 2 ranks, then print where the 4-way comparison is.
# Usage: bash launch/quickstart.sh [RECIPE] [section.key=value ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/launch/setup.sh")"
cd "$root"
recipe="${1:-configs/tiny-cpu.yaml}"
shift || true
export WANDB_MODE="${WANDB_MODE:-offline}" TOKENIZERS_PARALLELISM=false
"$venv/bin/esc-dist" pipeline --config "$recipe" "$@"
run_dir="$("$venv/bin/python" -c "from esc_dist.config import load_recipe; import sys; print(load_recipe(sys.argv[1], sys.argv[2:]).run.output_dir)" "$recipe" "$@")"
echo
cat "$run_dir/reports/comparison/comparison.md"
echo
echo "comparison table: $run_dir/reports/comparison/comparison.md"
