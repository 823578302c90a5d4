# Shared by the slurm/*.sbatch templates (sourced; defines functions, runs nothing by itself).
#
# A template calls `esc_job STAGE... -- [RECIPE.yaml] [section.key=value ...]`, which runs the
# named pipeline stages in order, each exactly as `esc-dist pipeline` would (command, output,
# "up to date" check: see `esc-dist stage --help`), skipping those already finished:
#   * distributed stages (training, mining, inference): `srun` starts one torchrun per node,
#     joined by a c10d rendezvous on the first node of the allocation; NPROC_PER_NODE ranks per
#     node (default: the node's GPUs, else 1 CPU rank with gloo);
#   * single-process stages: one `srun` task on the first node.
# Preemption: on SIGUSR1 (`#SBATCH --signal=B:USR1@600`, pipeline.signal_lead_s, or `scancel --signal=USR1 --batch`)
# the running step is told to stop -- training ranks save a checkpoint at the end of the current
# step, other stages just stop (mining and inference resume from their chunk files) -- and the
# job requeues itself; the next attempt resumes (`resume: auto`, same W&B run). Any other
# failure fails the job.
#
# Environment (all optional):
#   ESC_DIST_ROOT     the esc-dist checkout (default: the submit directory if it is one, else the
#                     checkout the template was submitted from)
#   ESC_DIST_SETUP    a file sourced first on the node (e.g. `module load cuda/12.4`)
#   ESC_DIST_VENV     a virtual environment to activate (default: the one whose `esc-dist` is on
#                     PATH, else ESC_DIST_ROOT/.venv)
#   NPROC_PER_NODE    ranks per node (default: GPUs on the node, 1 without GPUs)
#   ESC_MASTER_PORT   rendezvous port (default: esc_dist.dist.slurm_master_port, from the job id)
#   FORCE=1           rerun stages even when up to date (first attempt only)
#   ESC_MAX_REQUEUES  give up after this many self-requeues (default 100)
#   NCCL_SOCKET_IFNAME, NCCL_DEBUG (default WARN), NCCL_*: passed to NCCL as usual

esc_log() { printf '[esc-dist %s] %s\n' "$(date +%T)" "$*"; }

esc_setup_env() {
  if [[ -n ${ESC_DIST_SETUP:-} ]]; then
    # shellcheck disable=SC1090
    source "$ESC_DIST_SETUP"
  fi
  if [[ -n ${ESC_DIST_VENV:-} ]]; then
    # shellcheck disable=SC1091
    source "$ESC_DIST_VENV/bin/activate"
  elif ! command -v esc-dist >/dev/null 2>&1 && [[ -f $ESC_DIST_ROOT/.venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    source "$ESC_DIST_ROOT/.venv/bin/activate"
  fi
  # the interpreter of the esc-dist on PATH (the environment it was installed into)
  local bin
  bin=$(dirname "$(command -v esc-dist 2>/dev/null || echo /nonexistent/x)")
  if [[ -x $bin/python ]]; then ESC_PY=$bin/python; else ESC_PY=$(command -v python3 || command -v python); fi
  if [[ -z $ESC_PY ]] || ! "$ESC_PY" -c 'import esc_dist' 2>/dev/null; then
    esc_log "error: no Python with esc_dist found (set ESC_DIST_VENV or activate an environment)"
    return 1
  fi
  export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false} PYTHONUNBUFFERED=1
}

esc_gpus_on_node() {  # GPUs this job may use on the first node (0 without a working driver)
  local n
  command -v nvidia-smi >/dev/null 2>&1 || { echo 0; return; }
  n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  (( n > 0 )) || { echo 0; return; }
  if [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then echo "$SLURM_GPUS_ON_NODE"
  elif [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then awk -F, '{print NF}' <<<"$CUDA_VISIBLE_DEVICES"
  else echo "$n"; fi
}

esc_cluster_env() {
  ESC_NNODES=${SLURM_NNODES:-1}
  MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}" | head -n 1)
  ESC_MASTER_PORT=${ESC_MASTER_PORT:-$("$ESC_PY" -c 'from esc_dist.dist import slurm_master_port; print(slurm_master_port())')}
  GPUS_PER_NODE=$(esc_gpus_on_node)
  NPROC_PER_NODE=${NPROC_PER_NODE:-$GPUS_PER_NODE}
  (( NPROC_PER_NODE > 0 )) || NPROC_PER_NODE=1
  export MASTER_ADDR GPUS_PER_NODE NPROC_PER_NODE
  # NCCL: fail a collective on a dead peer instead of hanging (after run.dist_timeout_s, the
  # process-group timeout of the recipe); NCCL_SOCKET_IFNAME, if set, picks the interface.
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  if [[ -n ${NCCL_SOCKET_IFNAME:-} ]]; then export NCCL_SOCKET_IFNAME; fi
  if (( GPUS_PER_NODE > 0 )); then
    ESC_BACKEND="$GPUS_PER_NODE GPU(s) per node, NCCL"
  else
    ESC_BACKEND="no GPUs: CPU ranks, gloo"
  fi
  if [[ -z ${OMP_NUM_THREADS:-} ]]; then
    local t=$(( ${SLURM_CPUS_PER_TASK:-1} / NPROC_PER_NODE ))
    export OMP_NUM_THREADS=$(( t > 0 ? t : 1 ))
  fi
}

# --- preemption --------------------------------------------------------------------------------
ESC_PREEMPTED=0 ESC_FORWARDED=0 ESC_INTERRUPTED=0 ESC_STEP_PID=

esc_on_usr1() {
  ESC_INTERRUPTED=1
  if [[ $ESC_PREEMPTED == 0 ]]; then
    ESC_PREEMPTED=1
    esc_log "SIGUSR1 (time limit or preemption): stopping the running step, then requeueing"
  fi
  esc_forward_usr1
}

esc_forward_usr1() {  # once, to every step of this job (not this batch shell)
  [[ $ESC_FORWARDED == 0 && -n $ESC_STEP_PID ]] || return 0
  ESC_FORWARDED=1
  # Slurm delivers it to every process of the step, on every node
  scancel --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null || kill -USR1 "$ESC_STEP_PID" 2>/dev/null
}

esc_wait_step() {  # wait for the step in ESC_STEP_PID, through the USR1 trap; returns its status
  local rc
  while :; do
    ESC_INTERRUPTED=0
    wait "$ESC_STEP_PID"; rc=$?
    [[ $ESC_INTERRUPTED == 1 ]] && (( rc > 128 )) && continue   # the trap ran, not the step ended
    break
  done
  ESC_STEP_PID=
  return "$rc"
}

# The script each node's srun task runs for a distributed stage: one torchrun per node, which
# must outlive SIGUSR1 (Slurm signals every process of the step, and USR1 would kill torchrun),
# while its ranks either checkpoint (training) or are stopped through torchrun (other stages).
esc_node_script() {  # esc_node_script PORT PREEMPT_MODE ARGS...
  local port=$1 mode=$2; shift 2
  local forward
  if [[ $mode == checkpoint ]]; then
    # ranks install their SIGUSR1 handler once their trainer exists: repeat until they exit
    forward='[ -n "$fw" ] || { fw=1; (while kill -0 $tr 2>/dev/null; do pkill -USR1 -P $tr; sleep 10; done) & }'
  else
    forward='kill -TERM $tr 2>/dev/null'
  fi
  cat <<EOF
echo "[esc-dist] node \$SLURM_NODEID (\$(hostname)): torchrun, $NPROC_PER_NODE rank(s)"
trap '' USR1
$(printf '%q' "$ESC_PY") -m torch.distributed.run --nnodes=$ESC_NNODES --nproc_per_node=$NPROC_PER_NODE \\
  --node_rank=\$SLURM_NODEID --rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:$port \\
  --rdzv_id=$SLURM_JOB_ID --max_restarts=0 -m esc_dist $(printf '%q ' "$@") &
tr=\$!
trap 'int=1; $forward' USR1
while :; do int=0; wait \$tr; rc=\$?; [ \$int = 1 ] && [ \$rc -gt 128 ] && continue; break; done
# ranks that stopped for preemption exit 75; torchrun reports any such exit as 1
[ -n "\$fw" ] && [ \$rc != 0 ] && rc=75
exit \$rc
EOF
}

# --- stages ------------------------------------------------------------------------------------
esc_stages() { "$ESC_PY" -m esc_dist stage "$@"; }

esc_run_stage() {  # esc_run_stage NAME INDEX
  local name=$1 i=$2 info rc t0
  info=$(esc_stages show "$name" "${ESC_RECIPE_ARGS[@]}") || return 2
  eval "$info"
  local force=${FORCE:-0}
  (( ${SLURM_RESTART_COUNT:-0} > 0 )) && force=0   # a requeued job resumes, it does not restart
  if [[ $ESC_STAGE_CURRENT == 1 && $force != 1 ]]; then
    esc_log "$name: up to date, skipped ($ESC_STAGE_OUT)"
    return 0
  fi
  esc_stages start "$name" "${ESC_RECIPE_ARGS[@]}" || return 2
  local step=(srun --kill-on-bad-exit=1)
  [[ -n ${SLURM_CPUS_PER_TASK:-} ]] && step+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
  if [[ $ESC_STAGE_DISTRIBUTED == 1 ]]; then
    esc_log "$name: $ESC_NNODES node(s) x $NPROC_PER_NODE rank(s) ($ESC_BACKEND), rendezvous $MASTER_ADDR:$((ESC_MASTER_PORT + i))"
    step+=(--nodes="$ESC_NNODES" --ntasks="$ESC_NNODES" --ntasks-per-node=1 bash -c
           "$(esc_node_script $((ESC_MASTER_PORT + i)) "$ESC_STAGE_PREEMPT" "${ESC_STAGE_ARGS[@]}")")
  else
    esc_log "$name: one process"
    step+=(--nodes=1 --ntasks=1 "$ESC_PY" -m esc_dist "${ESC_STAGE_ARGS[@]}")
  fi
  esc_log "esc-dist ${ESC_STAGE_ARGS[*]}"
  t0=$SECONDS
  "${step[@]}" &
  ESC_STEP_PID=$!
  [[ $ESC_PREEMPTED == 1 ]] && esc_forward_usr1   # the signal came before the step existed
  esc_wait_step; rc=$?
  if (( rc == 0 )); then
    esc_stages done "$name" "${ESC_RECIPE_ARGS[@]}" --seconds $((SECONDS - t0)) || return 1
    esc_log "$name: done in $((SECONDS - t0)) s"
  elif [[ $ESC_PREEMPTED == 1 ]]; then
    esc_log "$name: stopped for preemption after $((SECONDS - t0)) s (exit $rc)"
  else
    esc_log "$name: FAILED (exit $rc) after $((SECONDS - t0)) s"
  fi
  return "$rc"
}

# esc_job STAGE... -- [RECIPE.yaml] [section.key=value ...]
esc_job() {
  local stages=()
  while (( $# )) && [[ $1 != -- ]]; do stages+=("$1"); shift; done
  (( $# )) && shift
  ESC_RECIPE_ARGS=("$@")
  [[ -n ${ESC_PY:-} ]] || esc_setup_env || exit 1
  esc_cluster_env
  trap esc_on_usr1 USR1
  esc_log "job ${SLURM_JOB_ID:-?} ($SLURM_JOB_NAME) attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )) SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-unset} on $SLURM_JOB_NODELIST: ${stages[*]}"
  local run_dir
  run_dir=$(esc_stages init "${ESC_RECIPE_ARGS[@]}") || exit 2
  esc_log "run directory $run_dir; recipe ${ESC_RECIPE_ARGS[*]:-(built-in tiny)}"

  local i=0 name rc=0
  for name in "${stages[@]}"; do
    if [[ $ESC_PREEMPTED == 1 ]]; then rc=1; break; fi
    esc_run_stage "$name" "$i"; rc=$?
    (( rc == 0 )) || break
    i=$((i + 1))
  done
  if (( rc != 0 )) && [[ $ESC_PREEMPTED == 1 ]]; then
    if (( ${SLURM_RESTART_COUNT:-0} >= ${ESC_MAX_REQUEUES:-100} )); then
      esc_log "preempted, but already requeued ${SLURM_RESTART_COUNT} times: giving up"
      exit 1
    fi
    esc_log "requeueing job $SLURM_JOB_ID; the next attempt resumes where this one stopped"
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    esc_log "scontrol requeue failed"
    exit 1
  fi
  (( rc == 0 )) && esc_log "job finished: ${stages[*]}"
  exit "$rc"
}
