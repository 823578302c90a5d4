# Shared by the per-stage launchers: pick the venv, the launcher and the number of processes.
#   LAUNCHER=deepspeed|torchrun|accelerate (default deepspeed), NPROC (default: GPUs, else 2),
#   MASTER_PORT (default 29500).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$root/.venv/bin/python" ]]; then PATH="$root/.venv/bin:$PATH"; fi
cd "$root"
export TOKENIZERS_PARALLELISM=false
nproc="${NPROC:-$(python -c 'import torch; print(torch.cuda.device_count() or 2)')}"
port="${MASTER_PORT:-29500}"
case "${LAUNCHER:-deepspeed}" in
  deepspeed) launch=(deepspeed --num_gpus "$nproc" --master_port "$port" --module esc_dist) ;;
  torchrun) launch=(torchrun --nproc_per_node "$nproc" --master_port "$port" -m esc_dist) ;;
  accelerate) launch=(accelerate launch --num_processes "$nproc" --main_process_port "$port" -m esc_dist) ;;
  *) echo "unknown LAUNCHER=$LAUNCHER" >&2; exit 2 ;;
esac

# ROLE [RECIPE.yaml] [overrides...] -> $role, $recipe, $overrides, $run_dir
role="${1:?usage: $0 ROLE [RECIPE.yaml] [section.key=value ...]}"; shift
recipe="configs/tiny-cpu.yaml"
if [[ $# -gt 0 && "$1" == *.yaml ]]; then recipe="$1"; shift; fi
overrides=("$@")
recipe_get() {  # recipe_get EXPR: a Python expression over `r`, the loaded recipe
  python -c "import sys; from esc_dist.config import load_recipe; r = load_recipe(sys.argv[1], sys.argv[2:]); print($1)" "$recipe" "${overrides[@]}"
}
run_dir="$(recipe_get r.run.output_dir)"

# launch_after STAGES SUBCOMMAND: run STAGES (plus tiny-model when no model.base is set) through
# `esc-dist pipeline --only`, which skips finished ones, then SUBCOMMAND --role ROLE under the
# launcher with the run's resolved recipe, recorded as done the way the pipeline records a stage
# (slurm/stages.py), so that a later pipeline or launcher run finds it up to date and does not
# train it again. An up-to-date stage is skipped unless FORCE=1.
launch_after() {
  local needs="$1" stage="$2-$role" stages=(python "$root/slurm/stages.py")
  [[ "$(recipe_get r.model.base)" == "None" ]] && needs="$needs,tiny-model"
  esc-dist pipeline --only "$needs" --config "$recipe" "${overrides[@]}"
  eval "$("${stages[@]}" show "$stage" "$recipe" "${overrides[@]}")"
  if [[ $ESC_STAGE_CURRENT == 1 && -z ${FORCE:-} ]]; then
    echo "$stage is up to date ($ESC_STAGE_OUT); FORCE=1 runs it again"
    return 0
  fi
  "${stages[@]}" start "$stage" "$recipe" "${overrides[@]}"
  local t0=$SECONDS
  "${launch[@]}" "$2" --role "$role" --config "$run_dir/recipe.yaml"
  "${stages[@]}" done "$stage" "$recipe" "${overrides[@]}" --seconds "$((SECONDS - t0))"
}
