"""The real ``slurm/render_objaverse.sh`` as a 2-task SLURM array on the local cluster.

The array must produce exactly what one process produces: every object once, each task in its own shards
(``<task>-<n>.tar``), disjoint slices (the uids that ``render_farm.tasks.task_of`` assigns to task t), and an
index.json that matches the tars.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from collections import Counter, defaultdict

import pytest
import yaml

from configs import RENDER_DIR, ROOT
from render_farm import synthetic as assets
from render_farm.tasks import task_of

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

SCRIPT = os.path.join(ROOT, "slurm", "render_objaverse.sh")
TINY = ["--rig", "lrm32", "--resolution", "32", "--samples", "2", "--shard-maxcount", "2"]
SHARD_NAME = re.compile(r"^(\d{5})-(\d{6})\.tar$")


def tar_keys(path: str) -> list[str]:
    """Sample keys in a shard, in order (WebDataset: a member's key is its name up to the first dot)."""
    keys: list[str] = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key = os.path.basename(member.name).split(".", 1)[0]
            if not keys or keys[-1] != key:
                keys.append(key)
    return keys


def shard_keys(out: str) -> dict[str, list[str]]:
    return {f: tar_keys(os.path.join(out, f)) for f in sorted(os.listdir(out)) if f.endswith(".tar")}


def done_keys(out: str, task: int) -> set[str]:
    path = os.path.join(out, "_state", f"task-{task:05d}.done.jsonl")
    with open(path) as f:
        return {json.loads(line)["key"] for line in f if line.strip()}


@pytest.fixture(scope="module")
def asset_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("array-assets")
    for make in (assets.textured_box, assets.vertex_coloured_sphere, assets.multi_material, assets.non_manifold):
        make(str(d))
    assets.simple_formats(str(d))
    return str(d)


@pytest.fixture(scope="module")
def single_run_keys(asset_dir, tmp_path_factory) -> set[str]:
    out = str(tmp_path_factory.mktemp("single") / "shards")
    cmd = [sys.executable, "-m", "render_farm.cli", "objaverse", "--glb-dir", asset_dir, "--out", out, *TINY,
           "--num-workers", "1", "--world-size", "1", "--rank", "0", "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    keys = [k for ks in shard_keys(out).values() for k in ks]
    assert len(keys) == len(set(keys)) >= 4, f"single-process run wrote {keys}:\n{proc.stdout}"
    return set(keys)


def test_render_array_matches_a_single_process_run(slurm_cluster, asset_dir, single_run_keys, tmp_path):
    out, logs = tmp_path / "shards", tmp_path / "logs"
    logs.mkdir()
    site_env = tmp_path / "site.env"  # the script's site settings: this repository's venv, one CPU per worker
    site_env.write_text(f"LIFT3D_VENV={os.path.join(ROOT, '.venv')}\nLIFT3D_CPUS_PER_WORKER=1\n")
    # One Cycles thread per worker: the test cluster binds no CPUs (task/none), so a task sees every core and the
    # farm's default (cores / workers) would give each of the two tasks' workers all of them.
    config = tmp_path / "render.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load((RENDER_DIR / "default.yaml").read_text()),
                                      "threads_per_worker": 1}))
    job = slurm_cluster.sbatch(
        ["--array=0-1", "--cpus-per-task=1", "--mem=2G", "--time=10", f"--output={logs}/render-%A_%a.out",
         f"--chdir={tmp_path}"],
        SCRIPT, "--glb-dir", asset_dir, "--out", str(out), "--config", str(config), *TINY,
        env={"LIFT3D_SITE_ENV": str(site_env)})
    results = slurm_cluster.wait_array(job, [0, 1], timeout=150)
    if os.environ.get("LIFT3D_SHOW_SLURM_OUTPUT"):
        print("\n".join(r.output() for r in results.values()))
    for task, r in results.items():
        assert r.ok, f"array task {task} ended {r.state} exit {r.exit_code}:\n{r.output()}"
        text = r.output()
        assert f"array task {task} (slice {task} of 2" in text and "workers 1" in text, text
        assert f"repo {ROOT} site settings {site_env}" in text, text  # found from the submitted script's path
        assert re.search(r"task %d/2: \d+ ok, 0 failed" % task, text), text

    shards = shard_keys(str(out))
    by_task: dict[int, list[str]] = defaultdict(list)
    for name, keys in shards.items():
        m = SHARD_NAME.match(name)
        assert m, f"shard {name} is not named <task:05d>-<n:06d>.tar"
        by_task[int(m.group(1))].extend(keys)
    assert sorted(by_task) == [0, 1], f"expected shards from tasks 0 and 1, got {sorted(shards)}"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")], "a shard was left unfinished"

    all_keys = [k for keys in shards.values() for k in keys]
    dupes = [k for k, n in Counter(all_keys).items() if n > 1]
    assert not dupes, f"keys written more than once: {dupes}"
    assert set(all_keys) == single_run_keys
    assert not set(by_task[0]) & set(by_task[1])
    expected = sorted(single_run_keys)
    for task in (0, 1):
        mine = {k for k in expected if task_of(k, 2) == task}
        assert set(by_task[task]) == mine, f"task {task} rendered the wrong slice"
        assert done_keys(str(out), task) == set(by_task[task])
        failures = out / "_state" / f"task-{task:05d}.failures.jsonl"
        assert not failures.exists() or not failures.read_text().strip(), failures.read_text()

    index = json.loads((out / "index.json").read_text())
    listed = {e["url"]: e["nsamples"] for e in index["shardlist"]}
    assert listed == {name: len(keys) for name, keys in shards.items()}
    assert index["total_samples"] == len(all_keys)
