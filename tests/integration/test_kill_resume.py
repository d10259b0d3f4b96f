"""A render task killed with SIGKILL at arbitrary moments and restarted finishes with every object exactly once."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import psutil
import pytest
import webdataset as wds

from configs import ROOT
from render_farm import synthetic as assets
from tests.integration.conftest import render_cli

pytestmark = pytest.mark.slow

N_OBJECTS = 12


def _start(asset_dir, out):
    cmd = [sys.executable, "-m", "render_farm.cli", "objaverse", "--glb-dir", str(asset_dir), "--out", str(out),
           "--config", "configs/render/tiny.yaml", "--resolution", "48", "--samples", "4", "--shard-maxcount", "4",
           "--num-workers", "2", "--no-progress"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _done_lines(out):
    path = out / "_state" / "task-00000.done.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _kill_after(proc, out, n_done, timeout=120):
    """SIGKILL the farm once ``n_done`` objects are done and a shard is open; returns its worker pids."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _done_lines(out) >= n_done and any(p.name.endswith(".tar.tmp") for p in out.iterdir()):
            break
        if proc.poll() is not None:
            pytest.fail(f"render finished before it could be killed:\n{proc.stdout.read()}")
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"no progress within {timeout}s")
    workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return workers


def _shard_keys(out):
    keys = []
    for name in sorted(os.listdir(out)):
        if name.endswith(".tar"):
            with tarfile.open(out / name) as tar:
                keys += sorted({m.name.split(".", 1)[0] for m in tar})
    return keys


def test_sigkill_mid_run_then_resume_gives_every_object_exactly_once(tmp_path):
    asset_dir = tmp_path / "assets"
    asset_dir.mkdir()
    uids = set()
    for i in range(N_OBJECTS):
        uids.add(assets.vertex_coloured_sphere(str(asset_dir), name=f"sphere_{i:02d}").uid)
    out = tmp_path / "shards"

    for n_done in (2, 7):  # two kills: one in the first shard, one in a later shard of the resumed run
        proc = _start(asset_dir, out)
        workers = _kill_after(proc, out, n_done)
        deadline = time.time() + 10  # Blender workers die with their parent (PR_SET_PDEATHSIG)
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers):
            assert time.time() < deadline, "render workers outlived the killed farm"
            time.sleep(0.1)
        keys = _shard_keys(out)
        assert len(keys) == len(set(keys))  # committed shards never hold a duplicate, even mid-run

    result = render_cli("objaverse", "--glb-dir", asset_dir, "--out", out, "--config", "configs/render/tiny.yaml",
                        "--resolution", 48, "--samples", 4, "--shard-maxcount", 4, "--num-workers", 2, "--no-progress")
    assert "already done" in result.stdout
    keys = _shard_keys(out)
    assert sorted(keys) == sorted(uids) and len(keys) == N_OBJECTS  # every object, exactly once
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no partial shard left
    done = [json.loads(line)["key"] for line in (out / "_state" / "task-00000.done.jsonl").read_text().splitlines()
            if line.strip().endswith("}")]
    assert set(done) >= uids
    index = json.loads((out / "index.json").read_text())
    assert index["total_samples"] == N_OBJECTS
    for shard in index["shardlist"]:
        assert len(list(wds.WebDataset(str(out / shard["url"]), shardshuffle=False))) == shard["nsamples"]
    # a third run has nothing left to do
    again = render_cli("objaverse", "--glb-dir", asset_dir, "--out", out, "--config", "configs/render/tiny.yaml",
                       "--resolution", 48, "--samples", 4, "--no-progress")
    assert f"0 ok, 0 failed, {N_OBJECTS} already done" in again.stdout
