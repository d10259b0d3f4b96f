# Sourced by slurm/train_lrm.sh and slurm/train_one2345.sh after lift3d_env.sh: defines
#   train_run DEFAULT_EXPERIMENT SHARDS_SUBDIR ARGS..., which
#   1. takes the experiment config (the script's default, or a leading `--config FILE` among the arguments),
#   2. places the run in $LIFT3D_RUNS/<run name> (default <repo>/logs/<run name>; run name: LIFT3D_RUN_NAME or the
#      experiment file's name) and passes --ckpt_path auto, so a requeued or resubmitted job resumes from the
#      checkpoint that is furthest along,
#   3. points the training shards at $LIFT3D_DATA/<subdir> when LIFT3D_DATA is set,
#   4. runs the launch check once on the batch host (LIFT3D_PREFLIGHT=1: allocation vs trainer.num_nodes × devices,
#      global batch vs global_batch_size), then starts one task per device with srun.
# Every other argument goes to `lift3d fit` after these, so it overrides them.
# shellcheck shell=bash

train_run() {
    local config="$1" shards="$2" name
    shift 2
    if [[ "${1:-}" == "--config" && -n "${2:-}" ]]; then
        config="$2"
        shift 2
    elif [[ "${1:-}" == --config=* ]]; then
        config="${1#--config=}"
        shift
    fi
    name="$(basename "$config" .yaml)"  # the run is named after its experiment
    if [[ "$config" != /* ]]; then  # not under the submit directory (lift3d_user_args): the repository's
        config="$LIFT3D_ROOT/$config"
    fi
    [[ -f "$config" ]] || { echo "train: no experiment config $config (pass --config FILE first)" >&2; exit 2; }
    name="${LIFT3D_RUN_NAME:-$name}"
    local run_dir="${LIFT3D_RUNS:-$LIFT3D_ROOT/logs}/$name"
    local args=(fit --config "$config" --trainer.default_root_dir "$run_dir" --trainer.enable_progress_bar false
                --ckpt_path auto)
    if [[ -n "${LIFT3D_DATA:-}" ]]; then
        args+=(--data.init_args.train_shards "$LIFT3D_DATA/$shards")
    fi
    args+=(${1+"$@"})

    # Relative paths inside the configs (data/..., configs/...) are the repository's; the user's arguments were
    # resolved against the submit directory before (lift3d_user_args in lift3d_env.sh).
    cd "$LIFT3D_ROOT"
    mkdir -p "$run_dir"
    echo "train: host $(hostname) job ${SLURM_JOB_ID:-local} restart ${SLURM_RESTART_COUNT:-0}" \
         "nodes ${SLURM_JOB_NUM_NODES:-1} tasks ${SLURM_NTASKS:-1} (${SLURM_TASKS_PER_NODE:-1} per node)" \
         "start $(date -Is)"
    echo "train: repo ${LIFT3D_ROOT} site settings ${site_env}$([[ -f "$site_env" ]] || echo ' (none)') run ${run_dir}"
    echo "train: ${lift3d[*]} ${args[*]}"

    if ! LIFT3D_PREFLIGHT=1 "${lift3d[@]}" "${args[@]}"; then
        echo "train: the launch check failed (see above); no training process was started" >&2
        exit 2
    fi
    local status=0
    # One task per device; srun does not pass --cpus-per-task on by itself in every Slurm release.
    srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "${lift3d[@]}" "${args[@]}" || status=$?
    echo "train: finished with status ${status} at $(date -Is)"
    exit "$status"
}
