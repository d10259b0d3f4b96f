#!/usr/bin/env bash
# Convert MVImgNet videos (COLMAP models + frames) into WebDataset shards, as a SLURM job array.
#
#   mkdir -p logs      # Slurm does not create the --output directory; a missing one fails the job silently
#   sbatch slurm/render_mvimgnet.sh --root /data/mvimgnet --out data/shards/mvimgnet
#   sbatch --array=0-63 slurm/render_mvimgnet.sh --root "$LIFT3D_DATA/mvimgnet" --out data/shards/mvimgnet
#
# Every argument after the script goes to `lift3d-render mvimgnet` unchanged (see `lift3d-render mvimgnet -h`).
# Array task t of T converts the videos whose key hashes to t (render_farm/tasks.py task_of): the CLI reads
# SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT / SLURM_ARRAY_TASK_MIN itself, so any --array range works. All
# tasks write into the same --out: shards OUT/<task>-<n>.tar, one shared index.json, per-task state in OUT/_state/.
# A requeued (pre-empted) task skips the videos in its done-list and carries on. No Blender here: the conversion
# reads COLMAP models and images, one process per task.
#
# Site settings (venv, data roots) come from slurm/site.env when it exists (see slurm/site.env.example).
# Account and partition are read by sbatch at submission, so set them in the environment you submit from
# (`set -a; source slurm/site.env; set +a; sbatch ...`: SBATCH_ACCOUNT, SBATCH_PARTITION) or pass -A / -p.
# Options given to sbatch on the command line override the #SBATCH lines below.
#
#SBATCH --job-name=lift3d-render-mvimgnet
#SBATCH --array=0-15
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=16G
#SBATCH --time=12:00:00
#SBATCH --output=logs/render-%A_%a.out
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

cpus="${SLURM_CPUS_PER_TASK:-$(nproc)}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$cpus}" OPENCV_NUM_THREADS="${OPENCV_NUM_THREADS:-$cpus}"

array_min="${SLURM_ARRAY_TASK_MIN:-0}"
task="${SLURM_ARRAY_TASK_ID:-0}"
count="${SLURM_ARRAY_TASK_COUNT:-1}"
echo "render_mvimgnet: host $(hostname) job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}}" \
     "array task ${task} (slice $(( task - array_min )) of ${count}: videos with sha1(key) mod ${count} = $(( task - array_min )))" \
     "cpus ${cpus} restart ${SLURM_RESTART_COUNT:-0} start $(date -Is)"
lift3d_user_args "$@"  # user_args: the arguments, their relative paths the submit directory's
cmd=("${render[@]}" mvimgnet ${user_args[@]+"${user_args[@]}"})
echo "render_mvimgnet: repo ${LIFT3D_ROOT} site settings ${site_env}$([[ -f "$site_env" ]] || echo ' (none)')"
echo "render_mvimgnet: ${cmd[*]}"

status=0
"${cmd[@]}" || status=$?
echo "render_mvimgnet: array task ${task} finished with status ${status} at $(date -Is)"
exit "$status"
