# Sourced by the sbatch scripts in slurm/ (they find this file first): the repository, site settings and venv, and
# the helpers every script uses for its arguments and settings (one home for each rule).
# Sets: LIFT3D_ROOT, submit_dir, site_env (the settings file), venv, render and lift3d (the two commands, as arrays).
# Defines: lift3d_user_args ARGS... (sets user_args), lift3d_require_positive_int NAME VALUE FIX.
# Written for bash >= 4.2: an array that may be empty is expanded as ${a[@]+"${a[@]}"} (a bare "${a[@]}" of an empty
# array is an "unbound variable" error under `set -u` before bash 4.4).
# shellcheck shell=bash
LIFT3D_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The directory the job started in: where sbatch was run (SLURM_SUBMIT_DIR), or sbatch --chdir's directory. Relative
# paths in the user's arguments and in site.env are this directory's, also after a script changes directory.
submit_dir="$PWD"

site_env="${LIFT3D_SITE_ENV:-$LIFT3D_ROOT/slurm/site.env}"
if [[ "$site_env" != /* ]]; then
    site_env="$submit_dir/$site_env"
fi
if [[ -f "$site_env" ]]; then
    found_root="$LIFT3D_ROOT"
    set -a
    # shellcheck disable=SC1090
    source "$site_env"
    set +a
    # site.env is read from the repository found above, so it cannot choose the repository: refuse a different one.
    if [[ "$LIFT3D_ROOT" != "$found_root" \
          && "$(cd "$LIFT3D_ROOT" 2>/dev/null && pwd -P)" != "$(cd "$found_root" && pwd -P)" ]]; then
        echo "$(basename "${0}"): LIFT3D_ROOT=$LIFT3D_ROOT in $site_env is not the repository this job runs from" \
             "($found_root): site.env is read after the repository is found; remove LIFT3D_ROOT from it and set it in" \
             "the environment you submit from (export LIFT3D_ROOT=...; sbatch passes it on)" >&2
        exit 2
    fi
    LIFT3D_ROOT="$found_root"
    unset found_root
fi

# lift3d_abs_setting NAME: a relative path in setting NAME (site.env or the environment) becomes the submit
# directory's.
lift3d_abs_setting() {
    local value="${!1:-}"
    if [[ -n "$value" && "$value" != /* ]]; then
        printf -v "$1" '%s' "$submit_dir/$value"
    fi
}
for setting in LIFT3D_VENV LIFT3D_RUNS LIFT3D_DATA LIFT3D_BLENDER; do
    lift3d_abs_setting "$setting"
done
unset setting

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

# lift3d_require_positive_int NAME VALUE FIX: stop the job (status 2) with one line when VALUE is not a positive
# integer, naming the setting, where it is read from and FIX.
lift3d_require_positive_int() {
    if ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
        echo "$(basename "${0}"): $1=$2 (from $site_env or the environment) is not a positive integer; $3" >&2
        exit 2
    fi
}

# lift3d_resolve OPTION VALUE: sets REPLY to VALUE resolved against the submit directory. An output option's value
# (--out, --trainer.default_root_dir) always; any other relative value when it names a path under the submit
# directory (for a glob, when its directory is there). Anything else stays as it is: option values that are not
# paths, and a training config's repository paths (configs/...) that do not exist under the submit directory.
lift3d_resolve() {
    local option="$1" value="$2"
    REPLY="$value"
    if [[ -z "$value" || "$value" == /* || "$value" == -* ]]; then
        return 0
    fi
    if [[ "$option" == --out || "$option" == --trainer.default_root_dir ]]; then
        REPLY="$submit_dir/$value"
    elif [[ -e "$submit_dir/$value" ]]; then
        REPLY="$submit_dir/$value"
    elif [[ "$value" == *[\*\?\[]* ]]; then
        local dir="."
        [[ "$value" != */* ]] || dir="${value%/*}"
        [[ ! -d "$submit_dir/$dir" ]] || REPLY="$submit_dir/$value"
    fi
}

# lift3d_user_args ARGS...: sets the array user_args to ARGS with their paths resolved by lift3d_resolve, so they
# mean the same after a script changes directory (--opt VALUE, --opt=VALUE and bare arguments).
lift3d_user_args() {
    user_args=()
    local arg previous=""
    for arg in "$@"; do
        if [[ "$arg" == --*=* ]]; then
            lift3d_resolve "${arg%%=*}" "${arg#*=}"
            user_args+=("${arg%%=*}=$REPLY")
        elif [[ "$arg" == -* ]]; then
            user_args+=("$arg")
        else
            lift3d_resolve "$previous" "$arg"
            user_args+=("$REPLY")
        fi
        previous="$arg"
    done
}
