#!/usr/bin/env bash
# Render Objaverse objects (or a local directory of assets) into WebDataset shards, as a SLURM job array.
#
#   mkdir -p logs      # Slurm does not create the --output directory; a missing one fails the job silently
#   sbatch slurm/render_objaverse.sh --uids-file uids.txt --out data/shards/objaverse --rig lrm32
#   sbatch --array=0-63 slurm/render_objaverse.sh --glb-dir /data/assets --out data/shards/local --rig lrm32
#
#   sbatch --array=0-15 slurm/render_objaverse.sh procedural --count 100000 --seed 0 --out data/shards/procedural
#
# Every argument after the script goes to `lift3d-render objaverse` unchanged (see `lift3d-render objaverse -h`);
# a first argument `procedural` renders procedural objects instead (`lift3d-render procedural -h`).
# Array task t of T renders the objects whose id hashes to t (render_farm/tasks.py task_of): the CLI reads
# SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT / SLURM_ARRAY_TASK_MIN itself, so any --array range works. All
# tasks write into the same --out: shards OUT/<task>-<n>.tar, one shared index.json, per-task state in OUT/_state/.
# A requeued (pre-empted) task skips the objects in its done-list and carries on.
#
# Site settings (venv, data roots, Blender) come from slurm/site.env when it exists (see slurm/site.env.example).
# Account and partition are read by sbatch at submission, so set them in the environment you submit from
# (`set -a; source slurm/site.env; set +a; sbatch ...`: SBATCH_ACCOUNT, SBATCH_PARTITION) or pass -A / -p.
# Options given to sbatch on the command line override the #SBATCH lines below.
#
#SBATCH --job-name=lift3d-render-objaverse
#SBATCH --array=0-15
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=24:00:00
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

# --- Blender worker processes: one per LIFT3D_CPUS_PER_WORKER allocated CPUs (Cycles threads share the rest)
cpus="${SLURM_CPUS_PER_TASK:-$(nproc)}"
per_worker="${LIFT3D_CPUS_PER_WORKER:-4}"
lift3d_require_positive_int LIFT3D_CPUS_PER_WORKER "$per_worker" \
    "set it to the allocated CPUs per Blender worker, e.g. 4 (the default when unset)"
workers=$(( cpus / per_worker ))
(( workers >= 1 )) || workers=1

extra=()
if [[ -n "${LIFT3D_BLENDER:-}" ]]; then
    extra+=(--custom-blender-path "$LIFT3D_BLENDER")
fi

array_min="${SLURM_ARRAY_TASK_MIN:-0}"
task="${SLURM_ARRAY_TASK_ID:-0}"
count="${SLURM_ARRAY_TASK_COUNT:-1}"
echo "render_objaverse: host $(hostname) job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}}" \
     "array task ${task} (slice $(( task - array_min )) of ${count}: objects with sha1(id) mod ${count} = $(( task - array_min )))" \
     "cpus ${cpus} workers ${workers} restart ${SLURM_RESTART_COUNT:-0} start $(date -Is)"
# Our defaults come first: a --num-workers among the user's arguments wins (argparse keeps the last one).
command=objaverse
if [[ "${1:-}" == procedural ]]; then command=procedural; shift; fi
lift3d_user_args "$@"  # user_args: the arguments, their relative paths the submit directory's
cmd=("${render[@]}" "$command" --num-workers "$workers" --no-progress ${extra[@]+"${extra[@]}"}
     ${user_args[@]+"${user_args[@]}"})
echo "render_objaverse: repo ${LIFT3D_ROOT} site settings ${site_env}$([[ -f "$site_env" ]] || echo ' (none)')"
echo "render_objaverse: ${cmd[*]}"

status=0
"${cmd[@]}" || status=$?
echo "render_objaverse: array task ${task} finished with status ${status} at $(date -Is)"
exit "$status"
