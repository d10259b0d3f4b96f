# Sourced by the sbatch scripts in slurm/ (they find this file first): the repository, site settings and venv.
# Sets: LIFT3D_ROOT, site_env (the settings file), venv, render and lift3d (the two commands, as arrays).
# shellcheck shell=bash
LIFT3D_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
site_env="${LIFT3D_SITE_ENV:-$LIFT3D_ROOT/slurm/site.env}"
if [[ -f "$site_env" ]]; then
    set -a
    # shellcheck disable=SC1090
    source "$site_env"
    set +a
fi

venv="${LIFT3D_VENV:-$LIFT3D_ROOT/.venv}"
if [[ -x "$venv/bin/lift3d-render" ]]; then
    render=("$venv/bin/lift3d-render")
    lift3d=("$venv/bin/lift3d")
elif [[ -x "$venv/bin/python" ]]; then
    render=("$venv/bin/python" -m render_farm.cli)
    lift3d=("$venv/bin/python" -m lightning_modules.launch.cli)
else
    echo "$(basename "${0}"): no Python environment at $venv (LIFT3D_ROOT=$LIFT3D_ROOT)." >&2
    echo "  Set LIFT3D_VENV in $site_env (see slurm/site.env.example) or run 'make setup' in the repository." >&2
    exit 2
fi

# Environment modules named in the site settings (e.g. LIFT3D_MODULES="cuda/12.4 nccl/2.21"), when `module` exists.
if [[ -n "${LIFT3D_MODULES:-}" ]]; then
    if command -v module >/dev/null 2>&1 || type module >/dev/null 2>&1; then
        # shellcheck disable=SC2086
        module load $LIFT3D_MODULES
    else
        echo "$(basename "${0}"): LIFT3D_MODULES is set ($LIFT3D_MODULES) but there is no 'module' command here" >&2
        exit 2
    fi
fi
