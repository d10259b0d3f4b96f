#!/usr/bin/env bash
# Zero123 prediction pass of One-2-3-45 over one2345 render shards, as a SLURM job array (one GPU per task).
#
#   mkdir -p logs      # Slurm does not create the --output directory; a missing one fails the job silently
#   sbatch slurm/predict_zero123.sh --shards 'data/shards/objaverse/*.tar' --weights /models/zero123-xl \
#       --out data/shards/one2345
#   sbatch --array=0-63 slurm/predict_zero123.sh --shards "$LIFT3D_DATA/shards/objaverse" \
#       --weights "$LIFT3D_DATA/models/zero123-xl" --out "$LIFT3D_DATA/shards/one2345" --dtype float16
#
# Every argument after the script goes to `lift3d-render zero123` unchanged (see `lift3d-render zero123 -h`).
# Quote globs: the CLI expands them itself, the same way in every task. Array task t of T predicts the sorted input
# shards t, t+T, t+2T, ... (render_farm/tasks.py): the CLI reads SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT /
# SLURM_ARRAY_TASK_MIN itself, so any --array range works; use at most as many tasks as there are input shards.
# All tasks write into the same --out: shards OUT/<task>-<n>.tar, one shared index.json, per-task state in
# OUT/_state/. A requeued (pre-empted) task skips the objects in its done-list and carries on; the noise of every
# predicted view depends only on (--seed, object, view), so a resumed task writes the same images.
#
# Weights: a local diffusers Zero123 checkpoint directory (unet/ vae/ image_encoder/ feature_extractor/ scheduler/
# cc_projection/), staged on shared storage beforehand: compute nodes never download.
# Site settings (venv, data roots) come from slurm/site.env when it exists (see slurm/site.env.example).
# Account and partition are read by sbatch at submission, so set them in the environment you submit from
# (`set -a; source slurm/site.env; set +a; sbatch ...`: SBATCH_ACCOUNT, SBATCH_PARTITION) or pass -A / -p.
# Options given to sbatch on the command line override the #SBATCH lines below.
#
#SBATCH --job-name=lift3d-predict-zero123
#SBATCH --array=0-7
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=logs/zero123-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
set -euo pipefail

# --- find the repository (sbatch runs a spooled copy of this script, so $0 does not point into it): LIFT3D_ROOT from
# the environment you submit from, else the submitted script's path, else the submit directory. site.env is read only
# after this, from the repository found here, so it cannot set LIFT3D_ROOT.
submitted=$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's/^ *Command=//p' | head -n 1) || true
while [[ -n "$submitted" && ! -f "$submitted" ]]; do  # a path may hold spaces; Command= may end with the arguments
    if [[ "$submitted" == *" "* ]]; then submitted="${submitted% *}"; else submitted=""; fi
done
if [[ -n "${LIFT3D_ROOT:-}" ]]; then
    here="$LIFT3D_ROOT/slurm"
else
    for here in "${submitted:+$(dirname "$submitted")}" "$(dirname "${BASH_SOURCE[0]}")" \
                "${SLURM_SUBMIT_DIR:-$PWD}/slurm"; do
        [[ -f "$here/lift3d_env.sh" ]] && break
    done
fi
if [[ ! -f "$here/lift3d_env.sh" ]]; then
    echo "$(basename "$0"): cannot find the lift3d repository (LIFT3D_ROOT=${LIFT3D_ROOT:-<unset>}); export" \
         "LIFT3D_ROOT=<the repository, which holds slurm/lift3d_env.sh> in the shell you run sbatch from" >&2
    exit 2
fi
# shellcheck disable=SC1091
source "$here/lift3d_env.sh"  # LIFT3D_ROOT, site settings, the venv, ${render[@]}

# Weights never come from the hub on a compute node: fail fast instead of retrying downloads.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

array_min="${SLURM_ARRAY_TASK_MIN:-0}"
task="${SLURM_ARRAY_TASK_ID:-0}"
count="${SLURM_ARRAY_TASK_COUNT:-1}"
echo "predict_zero123: host $(hostname) job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}}" \
     "array task ${task} (slice $(( task - array_min )) of ${count}: sorted shards $(( task - array_min ))::${count})" \
     "gpus ${CUDA_VISIBLE_DEVICES:-none} restart ${SLURM_RESTART_COUNT:-0} start $(date -Is)"
# Our defaults come first: a --device among the user's arguments wins (argparse keeps the last one).
lift3d_user_args "$@"  # user_args: the arguments, their relative paths the submit directory's
cmd=("${render[@]}" zero123 --device auto --no-progress ${user_args[@]+"${user_args[@]}"})
echo "predict_zero123: repo ${LIFT3D_ROOT} site settings ${site_env}$([[ -f "$site_env" ]] || echo ' (none)')"
echo "predict_zero123: ${cmd[*]}"

status=0
"${cmd[@]}" || status=$?
echo "predict_zero123: array task ${task} finished with status ${status} at $(date -Is)"
exit "$status"
