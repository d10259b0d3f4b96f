#!/usr/bin/env bash
# The LRM paper run: 16 nodes × 8 GPUs (128 A100s), 8 samples per GPU = global batch 1024, DeepSpeed ZeRO-2, bf16
# (configs/experiments/lrm_paper.yaml). One task per GPU through srun, so Lightning's SLURM environment assigns ranks.
#
#   mkdir -p logs      # Slurm does not create the --output directory; a missing one fails the job silently
#   sbatch slurm/train_lrm.sh
#   sbatch --nodes=2 slurm/train_lrm.sh --trainer.num_nodes=2 --global_batch_size=128     # a smaller run
#   sbatch slurm/train_lrm.sh --config configs/experiments/lrm_small.yaml                  # another experiment
#
# Arguments after the script go to `lift3d fit` (a leading `--config FILE` replaces the experiment). The launch check
# runs first: --nodes / --ntasks-per-node must match trainer.num_nodes / devices and the global batch must be the
# config's global_batch_size, or the job stops with what to change.
# Pre-emption: 90 s before the time limit Slurm sends SIGUSR1 to every task; the run checkpoints at the next step
# (<run dir>/hpc_ckpt_<n>.ckpt), rank 0 requeues the job, and the requeued job resumes from that checkpoint (same step,
# optimiser, scheduler, data position, W&B run). A job requeued for any other reason resumes from last.ckpt.
#
# Site settings (venv, modules, data and run roots, W&B project/entity) come from slurm/site.env when it exists (see
# slurm/site.env.example). Account and partition are read by sbatch at submission: set them in the environment you
# submit from (`set -a; source slurm/site.env; set +a; sbatch ...`: SBATCH_ACCOUNT, SBATCH_PARTITION) or pass -A / -p.
# Options given to sbatch on the command line override the #SBATCH lines below. slurm/README.md has the details.
#
#SBATCH --job-name=lift3d-lrm
#SBATCH --nodes=16
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --time=48:00:00
#SBATCH --signal=SIGUSR1@90
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/train-lrm-%j.out
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
source "$here/lift3d_env.sh"    # LIFT3D_ROOT, site settings, modules, the venv, ${lift3d[@]}
# shellcheck disable=SC1091
source "$here/lift3d_train.sh"  # train_run

lift3d_user_args "$@"  # user_args: the arguments, their relative paths the submit directory's
train_run configs/experiments/lrm_paper.yaml shards/objaverse ${user_args[@]+"${user_args[@]}"}
