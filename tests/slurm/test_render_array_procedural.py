"""The real ``slurm/render_objaverse.sh procedural ...`` as a 2-task SLURM array on the local cluster equals one
``lift3d-render procedural`` process: the same objects once each, disjoint slices by ``task_of``, the same GLB
bytes (each task generates only its own objects), and an index.json that matches the tars."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from configs import RENDER_DIR, ROOT
from render_farm.tasks import task_of
from tests.slurm.test_render_array import SCRIPT, SHARD_NAME, done_keys, shard_keys

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]  # idle ~40 s: a 6-object single run + the array

COUNT, SEED = 6, 9
TINY = ["--count", str(COUNT), "--seed", str(SEED), "--rig", "lrm32", "--resolution", "32", "--samples", "2",
        "--shard-maxcount", "2"]


def _assets(out) -> dict[str, bytes]:
    d = os.path.join(out, "_assets")
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("procedural-single") / "shards")
    cmd = [sys.executable, "-m", "render_farm.cli", "procedural", "--out", out, *TINY, "--num-workers", "1",
           "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert f"{COUNT} ok, 0 failed" in proc.stdout, proc.stdout
    return out


def test_a_procedural_render_array_matches_a_single_process_run(slurm_cluster, single_run, tmp_path):
    out, logs = tmp_path / "shards", tmp_path / "logs"
    logs.mkdir()
    site_env = tmp_path / "site.env"
    site_env.write_text(f"LIFT3D_VENV={os.path.join(ROOT, '.venv')}\nLIFT3D_CPUS_PER_WORKER=1\n")
    config = tmp_path / "render.yaml"  # one Cycles thread per worker (the test cluster binds no CPUs)
    config.write_text(yaml.safe_dump({**yaml.safe_load((RENDER_DIR / "default.yaml").read_text()),
                                      "threads_per_worker": 1}))
    job = slurm_cluster.sbatch(
        ["--array=0-1", "--cpus-per-task=1", "--mem=2G", "--time=10", f"--output={logs}/render-%A_%a.out",
         f"--chdir={tmp_path}"],
        SCRIPT, "procedural", "--out", str(out), "--config", str(config), *TINY,
        env={"LIFT3D_SITE_ENV": str(site_env)})
    results = slurm_cluster.wait_array(job, [0, 1], timeout=150)
    for task, r in results.items():
        assert r.ok, f"array task {task} ended {r.state} exit {r.exit_code}:\n{r.output()}"
        assert " procedural --num-workers 1 " in r.output(), r.output()  # the script ran `lift3d-render procedural`
        assert re.search(r"task %d/2: \d+ ok, 0 failed" % task, r.output()), r.output()

    shards = shard_keys(str(out))
    by_task: dict[int, set[str]] = {0: set(), 1: set()}
    for name, keys in shards.items():
        m = SHARD_NAME.match(name)
        assert m, f"shard {name} is not named <task:05d>-<n:06d>.tar"
        by_task[int(m.group(1))].update(keys)
    all_keys = [k for keys in shards.values() for k in keys]
    assert not [k for k, n in Counter(all_keys).items() if n > 1], all_keys
    single = {k for keys in shard_keys(single_run).values() for k in keys}
    assert set(all_keys) == single and len(single) == COUNT
    for task in (0, 1):
        assert by_task[task] == {k for k in single if task_of(k, 2) == task}, f"task {task} rendered the wrong slice"
        assert done_keys(str(out), task) == by_task[task]
    assert _assets(str(out)) == _assets(single_run)  # the same generated GLBs, each made by the task that owns it
