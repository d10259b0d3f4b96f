# Sourced by the sbatch scripts in slurm/ (they find this file first): the repository, site settings and venv.
# Sets: LIFT3D_ROOT, site_env (the settings file), venv, render (the lift3d-render command as an array).
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
elif [[ -x "$venv/bin/python" ]]; then
    render=("$venv/bin/python" -m render_farm.cli)
else
    echo "$(basename "${0}"): no Python environment at $venv (LIFT3D_ROOT=$LIFT3D_ROOT)." >&2
    echo "  Set LIFT3D_VENV in $site_env (see slurm/site.env.example) or run 'make setup' in the repository." >&2
    exit 2
fi
