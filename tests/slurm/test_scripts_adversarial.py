"""The sbatch scripts in ``slurm/`` against the inputs that broke them (issue 14, "Clear errors, early").

- A repository whose path holds a space: the repository search used to cut the submitted path at the space and
  stop with "cannot find the lift3d repository" (the cluster tests run a copy of the repository under such a path).
- ``LIFT3D_ROOT`` comes from the environment, before the search; site.env, read after it, cannot move it.
- An array that may be empty is never expanded bare (``"${a[@]}"`` under ``set -u`` aborts on bash < 4.4 when ``a``
  is empty), and the scripts run with no arguments after them.
- ``LIFT3D_CPUS_PER_WORKER=0`` (a division by zero) and other non-positive values stop with one line naming it.
- Relative paths in the user's arguments and settings are the submit directory's, also for the training scripts,
  which change into the repository.

The tests without the ``slurm_cluster`` fixture run the scripts directly with bash (as a batch host would, outside
Slurm); the others submit them to the local cluster (tests/slurm/cluster.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from configs import RENDER_DIR, ROOT
from render_farm import synthetic as assets

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

SLURM_DIR = os.path.join(ROOT, "slurm")
SCRIPTS = ["train_lrm.sh", "train_one2345.sh", "render_objaverse.sh", "render_mvimgnet.sh", "predict_zero123.sh"]
SOURCED = ["lift3d_env.sh", "lift3d_train.sh"]
VENV = os.path.join(ROOT, ".venv")
TINY = ["--rig", "lrm32", "--resolution", "32", "--samples", "2", "--shard-maxcount", "2"]


def script_env(**extra: str) -> dict[str, str]:
    """A batch host's environment outside Slurm: no job, no inherited lift3d settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "LIFT3D_", "WANDB_"))}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def run_script(path: str, *args: str, cwd: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", path, *args], cwd=cwd, env=script_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


# --- the scripts' text ---------------------------------------------------------------------------------------------

BARE_ARRAY = re.compile(r'(?<!\+)"\$\{(\w+)\[[@*]\]\}"')  # "${a[@]}" / "${a[*]}" not inside ${a[@]+"${a[@]}"}


def test_no_array_that_may_be_empty_is_expanded_bare():
    """Every bare ``"${a[@]}"`` is of an array that is only ever assigned with elements; the others use the
    ``${a[@]+"${a[@]}"}`` idiom (bash < 4.4 treats an empty array as unset under ``set -u``)."""
    texts = {name: read(os.path.join(SLURM_DIR, name)) for name in SCRIPTS + SOURCED}
    code = {name: "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
            for name, text in texts.items()}
    everything = "\n".join(code.values())
    bare = {array for text in code.values() for array in BARE_ARRAY.findall(text)}
    assert bare, "the check found no array expansions at all: the pattern no longer matches the scripts"
    for array in sorted(bare):
        assignments = re.findall(rf"(?:^|[\s;(]){array}=\(([^)]*)\)", everything, re.M)
        assert assignments, f'"${{{array}[@]}}" is expanded but never assigned as an array in slurm/'
        empty = [a for a in assignments if not a.strip()]
        assert not empty, (f'{array} may be empty ({array}=()) but is expanded bare as "${{{array}[@]}}": '
                           f'use ${{{array}[@]+"${{{array}[@]}}"}}')
    # the arrays that are empty when no argument or setting fills them
    for array in ("extra", "user_args"):
        assert f'${{{array}[@]+"${{{array}[@]}}"}}' in everything, f"{array} is not expanded with the idiom"


def test_every_script_finds_the_repository_the_same_way():
    blocks = set()
    for name in SCRIPTS:
        text = read(os.path.join(SLURM_DIR, name))
        start, end = text.index("# --- find the repository"), text.index('source "$here/lift3d_env.sh"')
        blocks.add(text[start:end])
    assert len(blocks) == 1, "the repository search differs between the scripts in slurm/"
    (block,) = blocks
    assert "[^ ]" not in block, "the search must not cut the submitted path at a space"


# --- run directly with bash ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-2", "four"])
def test_cpus_per_worker_that_is_not_a_positive_integer_is_a_one_line_error(tmp_path, value):
    r = run_script(os.path.join(SLURM_DIR, "render_objaverse.sh"), "--glb-dir", str(tmp_path), "--out",
                   str(tmp_path / "out"), cwd=str(tmp_path), LIFT3D_CPUS_PER_WORKER=value)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"LIFT3D_CPUS_PER_WORKER={value}" in lines[0] and "is not a positive integer" in lines[0], lines[0]
    assert "set it to the allocated CPUs per Blender worker" in lines[0], lines[0]
    assert "division by 0" not in r.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["render_objaverse.sh", "render_mvimgnet.sh"])
def test_scripts_run_with_no_arguments_and_no_optional_settings(tmp_path, name):
    """No arguments after the script and no LIFT3D_BLENDER: the empty arrays expand to nothing under ``set -u``; the
    render CLI itself then says what is missing."""
    r = run_script(os.path.join(SLURM_DIR, name), cwd=str(tmp_path))
    assert "unbound variable" not in r.stderr, r.stderr
    prefix = name.removesuffix(".sh")
    assert re.search(rf"^{prefix}: .*lift3d-render\S* \S*{prefix.split('_')[1]}", r.stdout, re.M), r.stdout
    assert f"{prefix}: array task 0 finished with status {r.returncode}" in r.stdout, r.stdout
    assert r.returncode != 0, "the render CLI accepted no input at all"


def test_train_script_runs_with_no_arguments(tmp_path):
    """train_lrm.sh with nothing after it: the paper config's launch check runs (outside a job there is no
    allocation to compare with) and the script goes on to srun (which, outside Slurm, fails) instead of bash aborting
    on an empty argument array."""
    r = run_script(os.path.join(SLURM_DIR, "train_lrm.sh"), cwd=str(tmp_path), LIFT3D_RUNS=str(tmp_path / "runs"))
    assert "unbound variable" not in r.stderr, r.stderr
    assert f"--config {ROOT}/configs/experiments/lrm_paper.yaml" in r.stdout, r.stdout
    assert "lift3d: preflight ok: 16 node(s) × 8 device(s)" in r.stdout, (r.stdout, r.stderr[-3000:])
    assert f"train: finished with status {r.returncode}" in r.stdout, r.stdout


def test_lift3d_root_from_the_environment_is_used_for_a_spooled_script(tmp_path):
    """sbatch runs a copy of the script from its spool directory: LIFT3D_ROOT, exported at submission, finds the
    repository (here one whose path holds a space)."""
    repo, spool = copy_repository(tmp_path / "my lift3d"), tmp_path / "spool"
    spool.mkdir()
    shutil.copy(os.path.join(SLURM_DIR, "render_mvimgnet.sh"), spool / "slurm_script")
    (repo / "slurm" / "site.env").write_text(f"LIFT3D_VENV={VENV}\n")
    r = run_script(str(spool / "slurm_script"), cwd=str(tmp_path), LIFT3D_ROOT=str(repo))
    assert f"render_mvimgnet: repo {repo} site settings {repo}/slurm/site.env\n" in r.stdout, (r.stdout, r.stderr)


def test_lift3d_root_without_the_scripts_is_a_clear_error(tmp_path):
    missing = tmp_path / "not the repo"
    missing.mkdir()
    spool = tmp_path / "slurm_script"
    shutil.copy(os.path.join(SLURM_DIR, "render_objaverse.sh"), spool)
    r = run_script(str(spool), cwd=str(tmp_path), LIFT3D_ROOT=str(missing))
    assert r.returncode == 2 and not r.stdout, (r.stdout, r.stderr)
    assert f"cannot find the lift3d repository (LIFT3D_ROOT={missing})" in r.stderr, r.stderr
    assert "export LIFT3D_ROOT=" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_lift3d_root_in_site_env_that_names_another_directory_is_a_clear_error(tmp_path):
    site_env = tmp_path / "site.env"
    site_env.write_text(f"LIFT3D_VENV={VENV}\nLIFT3D_ROOT={tmp_path}\n")
    r = run_script(os.path.join(SLURM_DIR, "render_mvimgnet.sh"), cwd=str(tmp_path), LIFT3D_SITE_ENV=str(site_env))
    assert r.returncode == 2 and not r.stdout, (r.stdout, r.stderr)
    assert f"LIFT3D_ROOT={tmp_path} in {site_env} is not the repository this job runs from ({ROOT})" in r.stderr
    assert "set it in the environment you submit from" in r.stderr, r.stderr


def test_relative_paths_in_arguments_and_settings_are_the_submit_directorys(tmp_path):
    """lift3d_user_args (the one home of the rule, in slurm/lift3d_env.sh), from a directory whose name holds a
    space: outputs always, inputs and globs when they are there; repository paths and non-paths unchanged."""
    submit = tmp_path / "submit dir"
    (submit / "my assets").mkdir(parents=True)
    (submit / "cfg.yaml").write_text("{}\n")
    site_env = tmp_path / "site.env"
    site_env.write_text(f"LIFT3D_VENV={VENV}\nLIFT3D_RUNS=runs\nLIFT3D_DATA=/data\n")
    args = ["--out", "shards", "--glb-dir", "my assets", "--config=cfg.yaml", "--shards", "my assets/*.tar",
            "--trainer", "configs/trainer/deepspeed_zero2.yaml", "--rig", "lrm32", "--trainer.default_root_dir=r",
            "--uids-file", "missing.txt", "--weights", "/abs/w"]
    program = f'set -euo pipefail; source {shlex.quote(SLURM_DIR)}/lift3d_env.sh; lift3d_user_args "$@"; ' \
              'printf "%s\\n" "${user_args[@]}" "runs=$LIFT3D_RUNS" "data=$LIFT3D_DATA"'
    r = subprocess.run(["bash", "-c", program, "bash", *args], cwd=str(submit), capture_output=True, text=True,
                       env=script_env(LIFT3D_SITE_ENV=str(site_env)), timeout=60)
    assert r.returncode == 0, r.stderr
    s = str(submit)
    assert r.stdout.splitlines() == [
        "--out", f"{s}/shards", "--glb-dir", f"{s}/my assets", f"--config={s}/cfg.yaml", "--shards",
        f"{s}/my assets/*.tar", "--trainer", "configs/trainer/deepspeed_zero2.yaml", "--rig", "lrm32",
        f"--trainer.default_root_dir={s}/r", "--uids-file", "missing.txt", "--weights", "/abs/w",
        f"runs={s}/runs", "data=/data"]


# --- on the local SLURM cluster ------------------------------------------------------------------------------------

def copy_repository(dest):
    """The repository's tracked files (as they are in the working tree) under ``dest``, without links."""
    files = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"], capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel), follow_symlinks=True)
    return dest


@pytest.fixture(scope="module")
def spaced_repo(tmp_path_factory):
    """A copy of the repository whose path holds a space, with the site settings a user would write there."""
    repo = copy_repository(tmp_path_factory.mktemp("repo") / "lift3d repo")
    (repo / "slurm" / "site.env").write_text(
        f"LIFT3D_VENV={VENV}\nLIFT3D_CPUS_PER_WORKER=1\nLIFT3D_RUNS=runs\nHF_HUB_OFFLINE=1\n"
        "unset WANDB_MODE WANDB_API_KEY\n")
    return repo


def submit_dir(tmp_path):
    d = tmp_path / "submit here"
    d.mkdir()
    return d


def test_render_array_task_runs_from_a_repository_path_with_a_space(slurm_cluster, spaced_repo, tmp_path):
    """sbatch <repo with a space>/slurm/render_objaverse.sh from another directory, with relative --glb-dir,
    --config and --out: the job finds the copy (not this checkout) and writes the shards under the submit
    directory."""
    submit = submit_dir(tmp_path)
    (submit / "assets").mkdir()
    assets.textured_box(str(submit / "assets"))
    (submit / "render.yaml").write_text(yaml.safe_dump({**yaml.safe_load((RENDER_DIR / "default.yaml").read_text()),
                                                        "threads_per_worker": 1}))
    job = slurm_cluster.sbatch(
        ["--array=0-0", "--cpus-per-task=1", "--mem=2G", "--time=10", "--output=render-%A_%a.out"],
        str(spaced_repo / "slurm" / "render_objaverse.sh"), "--glb-dir", "assets", "--config", "render.yaml",
        "--out", "shards", *TINY, cwd=str(submit))
    result = slurm_cluster.wait_array(job, [0], timeout=200)[0]
    text = read(str(submit / f"render-{job}_0.out"))  # (the cluster reads StdOut= from scontrol, cut at the space)
    assert result.ok, f"array task 0 ended {result.state} exit {result.exit_code}:\n{text}"
    assert f"render_objaverse: repo {spaced_repo} site settings {spaced_repo}/slurm/site.env\n" in text, text
    assert f"--glb-dir {submit}/assets --config {submit}/render.yaml --out {submit}/shards" in text, text
    assert re.search(r"task 0/1: 1 ok, 0 failed", text), text
    index = json.loads((submit / "shards" / "index.json").read_text())
    assert index["total_samples"] == 1, index
    assert not (spaced_repo / "shards").exists()


def test_train_launch_check_runs_from_a_repository_path_with_a_space(slurm_cluster, spaced_repo, lrm_shards,
                                                                       tmp_path):
    """sbatch <repo with a space>/slurm/train_lrm.sh with a relative shard path and a relative LIFT3D_RUNS (site.env)
    that stops at the launch check (2 tasks, 1 device): the script changes into the repository, yet the shards and
    the run directory are the submit directory's and the experiment config is the repository's."""
    submit = submit_dir(tmp_path)
    os.symlink(lrm_shards["dir"], submit / "my shards")
    args = ["--config", "configs/experiments/lrm_tiny.yaml", "--trainer.accelerator=cpu", "--trainer.devices=1",
            "--trainer.num_nodes=1", "--trainer.strategy=ddp", "--data.init_args.train_shards=my shards",
            "--data.init_args.val_shards=null", "--data.init_args.batch_size=1", "--trainer.max_steps=2",
            "--global_batch_size=1"]
    job = slurm_cluster.sbatch(["--nodes=1", "--ntasks-per-node=2", "--gres=none", "--cpus-per-task=1", "--mem=4G",
                                "--time=10", "--output=train-%j.out"],
                               str(spaced_repo / "slurm" / "train_lrm.sh"), *args, cwd=str(submit),
                               env={"OMP_NUM_THREADS": "1"})
    result = slurm_cluster.wait(job, timeout=200)
    text = read(str(submit / f"train-{job}.out"))
    assert (result.state, result.exit_code) == ("FAILED", 2), text
    assert "launch check failed" in text and "no training process was started" in text, text
    assert f"train: repo {spaced_repo} site settings {spaced_repo}/slurm/site.env run {submit}/runs/lrm_tiny" in text
    assert f"--config {spaced_repo}/configs/experiments/lrm_tiny.yaml" in text, text
    assert f"--data.init_args.train_shards={submit}/my shards" in text, text
    assert (submit / "runs" / "lrm_tiny").is_dir() and not (spaced_repo / "runs").exists()
