#!/usr/bin/env bash
# Submit the whole pipeline of a recipe as Slurm jobs, chained with --dependency=afterok.
#
#   slurm/submit_pipeline.sh [--wait] [--force] [--dry-run] [RECIPE.yaml] [section.key=value ...]
#
# The jobs are the stages of `esc-dist pipeline` (read from esc_dist.pipeline.plan through
# `esc-dist stage`): prepare (+ tiny-model or base-model) -> sft x3 -> mine x3 -> judge x3 -> dpo x3 ->
# infer+eval x4 -> compare, each depending only on the jobs whose outputs it reads, so the three
# roles run side by side. Stages already finished with the same settings and inputs are not
# submitted; a failed job cancels everything downstream (--kill-on-invalid-dep). Job logs go to
# RUN/logs/slurm/<run name>-<job>-<job id>.out (RUN = run.output_dir).
#
#   --wait     wait for the last job; exit 0 only if every stage finished (the comparison exists)
#   --force    rerun every stage
#   --dry-run  print the sbatch commands instead of submitting them
#
# Extra sbatch options (word-split), e.g. ESC_SBATCH_ARGS="--account=abc --partition=gpu":
#   ESC_SBATCH_ARGS (every job), ESC_SBATCH_TRAIN (sft, dpo), ESC_SBATCH_MINE, ESC_SBATCH_INFER
#   (infer+eval), ESC_SBATCH_SINGLE (prepare, tiny/base-model, judge, compare), ESC_SBATCH_STAGE.
# The recipe's pipeline.signal_lead_s sets every job's --signal=B:USR1@S (these variables may
# override it). Multi-node training: ESC_SBATCH_TRAIN="--nodes=2". CPU-only cluster: ESC_SBATCH_ARGS=
# "--gpus-per-node=0" (NPROC_PER_NODE=N for N CPU ranks per node). The jobs run in the current
# directory (relative recipe paths are read from there) with the current environment.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

wait=0 force=0 dry=0 args=()
for a in "$@"; do
  case $a in
    --wait) wait=1 ;;
    --force) force=1 ;;
    --dry-run) dry=1 ;;
    -h|--help) usage ;;
    -*) echo "submit_pipeline.sh: unknown option $a" >&2; usage 2 ;;
    *) args+=("$a") ;;
  esac
done

export ESC_DIST_ROOT=$root
# shellcheck source=common.sh
source "$root/slurm/common.sh"
esc_setup_env
esc_stages init "${args[@]}" $( ((dry)) && echo --dry-run) > /dev/null
plan=$(esc_stages jobs "${args[@]}" $( ((force)) && echo --force))
if [[ -z $plan ]]; then
  echo "every stage is up to date: $(esc_stages out compare "${args[@]}")/comparison.md"
  exit 0
fi
logs=$(esc_stages out slurm-logs "${args[@]}")
(( dry )) || mkdir -p "$logs"
mapfile -t jobs <<<"$plan"

declare -A ids=()
for n in "${!jobs[@]}"; do
  IFS=$'\t' read -r key name template envs deps stages recipe_opts <<<"${jobs[$n]}"
  [[ $envs == - ]] && envs=
  [[ $deps == - ]] && deps=
  dep_ids=()
  for d in ${deps//,/ }; do dep_ids+=("${ids[$d]}"); done
  # shellcheck disable=SC2206  # the option variables are word lists on purpose
  opts=(--parsable --job-name="$name" --output="$logs/%x-%j.out" --kill-on-invalid-dep=yes
        $recipe_opts ${ESC_SBATCH_ARGS:-})
  case $template in
    train) opts+=(${ESC_SBATCH_TRAIN:-}) ;;
    mine) opts+=(${ESC_SBATCH_MINE:-}) ;;
    infer_eval) opts+=(${ESC_SBATCH_INFER:-}) ;;
    single) opts+=(${ESC_SBATCH_SINGLE:-}) ;;
    stage) opts+=(${ESC_SBATCH_STAGE:-}) ;;
  esac
  (( ${#dep_ids[@]} )) && opts+=(--dependency="afterok:$(IFS=:; echo "${dep_ids[*]}")")
  last=$(( n == ${#jobs[@]} - 1 ))
  (( last && wait )) && opts+=(--wait)
  # shellcheck disable=SC2086  # envs is "VAR=value ..."
  cmd=(env -u STAGE -u ROLE -u SYSTEM $envs FORCE=$force sbatch "${opts[@]}"
       "$root/slurm/$template.sbatch" "${args[@]}")
  after=${deps:+ after ${deps//,/, }}
  if (( dry )); then
    ids[$key]="<$key>"
    printf '%q ' "${cmd[@]}"; echo
    continue
  fi
  if (( last && wait )); then
    set +e
    "${cmd[@]}" | { read -r id; printf '%-22s %-8s %s\n' "$key" "${id%%;*}" "$stages$after"
                    echo "waiting for job ${id%%;*} (logs: $logs) ..."; cat; }
    rc=${PIPESTATUS[0]}
    set -e
    if (( rc == 0 )) && esc_stages status "${args[@]}"; then exit 0; fi
    echo "submit_pipeline.sh: the pipeline did not finish (last job exit $rc); see $logs" >&2
    exit $(( rc ? rc : 1 ))
  fi
  id=$("${cmd[@]}")
  ids[$key]=${id%%;*}
  printf '%-22s %-8s %s\n' "$key" "${ids[$key]}" "$stages$after"
done
(( dry )) || echo "submitted ${#jobs[@]} jobs; logs: $logs; comparison: $(esc_stages out compare "${args[@]}")/comparison.md"
