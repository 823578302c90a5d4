# Shared by the per-stage launchers (sourced): run one role's training stage of a recipe through
# `esc-dist stage run`, with the stages it needs first.
#   LAUNCHER=deepspeed|torchrun|accelerate (default deepspeed), NPROC (default: GPUs, else 2),
#   MASTER_PORT (default: a free port; when set, each stage adds its number), FORCE=1 (rerun
#   when up to date).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$root/.venv/bin/python" ]]; then PATH="$root/.venv/bin:$PATH"; fi
cd "$root"
export TOKENIZERS_PARALLELISM=false

# ROLE [RECIPE.yaml] [overrides...]
role="${1:?usage: $0 ROLE [RECIPE.yaml] [section.key=value ...]}"; shift
recipe="configs/tiny-cpu.yaml"
if [[ $# -gt 0 && "$1" == *.yaml ]]; then recipe="$1"; shift; fi
nproc="${NPROC:-$(python -c 'import torch; print(torch.cuda.device_count() or 2)')}"
overrides=("$@" "pipeline.launcher=${LAUNCHER:-deepspeed}" "pipeline.nproc=$nproc")
[[ -n ${MASTER_PORT:-} ]] && overrides+=("pipeline.master_port=$MASTER_PORT")

# launch_after STAGES KIND: run STAGES (plus tiny-model when no model.base is set) through
# `esc-dist pipeline --only`, which skips finished ones, then KIND-ROLE with `esc-dist stage run`:
# the pipeline's own command under the launcher, recorded as done the way the pipeline records a
# stage, so that a later pipeline or launcher run finds it up to date and does not train it again.
launch_after() {
  local needs="$1" stage="$2-$role" force=()
  local base
  base="$(python -c 'import sys; from esc_dist.config import load_recipe
print(load_recipe(sys.argv[1], sys.argv[2:]).model.base)' "$recipe" "${overrides[@]}")"
  [[ $base == None ]] && needs="$needs,tiny-model"
  [[ -n ${FORCE:-} ]] && force=(--force)
  esc-dist pipeline --only "$needs" --config "$recipe" "${overrides[@]}"
  esc-dist stage run "$stage" "$recipe" "${overrides[@]}" "${force[@]}"
}
