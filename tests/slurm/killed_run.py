"""The run that ``test_lifetime.py`` SIGKILLs. Not collected by ``make test`` (not a ``test_*.py`` file): it runs only
when named on the command line, with ``LIFT3D_KILLED_RUN_DIR`` set.

It brings up the session's Slurm cluster and a Blender render worker three ways — in this process, under a child
process (as ``lift3d-render`` runs them) and inside a Slurm job — writes what it started to
``$LIFT3D_KILLED_RUN_DIR/ready.json`` and waits to be killed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from configs import ROOT
from render_farm.worker import WorkerPool
from tests import lifetime

HOLD = f"""
import json, os, sys, time
sys.path.insert(0, {str(ROOT)!r})
from render_farm.worker import WorkerPool
pool = WorkerPool(1, os.path.join(sys.argv[1], "worker"))
list(pool.run([]))  # starts the Blender worker; no job
with open(os.path.join(sys.argv[1], "pids.json.tmp"), "w") as f:
    json.dump({{"hold": os.getpid(), "blender": pool.workers[0].proc.pid}}, f)
os.replace(os.path.join(sys.argv[1], "pids.json.tmp"), os.path.join(sys.argv[1], "pids.json"))
time.sleep(600)
"""
WAIT_S = 600  # to be killed; the test that runs this kills it within seconds of ready.json


def wait_for_pids(where: str, what: str, proc: subprocess.Popen | None = None, timeout: float = 300) -> dict:
    path = os.path.join(where, "pids.json")
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        log = os.path.join(where, "worker-w0.log")
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what} exited with status {proc.returncode} before its Blender worker was up; see {log}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: no Blender worker within {timeout:.0f} s; see {log}")
        time.sleep(0.1)
    with open(path) as f:
        return json.load(f)


def test_start_slurm_and_blender_then_wait_to_be_killed(slurm_cluster, tmp_path):
    out = os.environ.get("LIFT3D_KILLED_RUN_DIR")
    if not out:
        pytest.fail("tests/slurm/killed_run.py is run by tests/slurm/test_lifetime.py, which sets "
                    "LIFT3D_KILLED_RUN_DIR; run that test instead")
    hold = tmp_path / "hold.py"
    hold.write_text(HOLD)
    direct, child_dir, job_dir = tmp_path / "direct", tmp_path / "child", tmp_path / "job"
    for d in (direct, child_dir, job_dir):
        d.mkdir()

    pool = WorkerPool(1, str(direct / "worker"))  # in this process, as the render fixtures run them
    list(pool.run([]))
    child = subprocess.Popen([sys.executable, str(hold), str(child_dir)], cwd=ROOT)  # as lift3d-render runs them
    job = slurm_cluster.sbatch(["--cpus-per-task=1", f"--output={job_dir}/job.out"],  # as an array task runs them
                               f"#!/bin/sh\nexec {sys.executable} {hold} {job_dir}\n")
    in_child = wait_for_pids(str(child_dir), "the child process", child)
    in_job = wait_for_pids(str(job_dir), f"Slurm job {job}")

    ready = {"pytest": os.getpid(), "marker": os.environ[lifetime.MARKER], "entry": lifetime.entry_of(os.getpid()),
             "cluster_root": slurm_cluster.root, "job": job,
             "daemons": {name: p.pid for name, p in slurm_cluster.procs.items()},
             "blender": {"direct": pool.workers[0].proc.pid, "child": in_child["blender"], "job": in_job["blender"]},
             "holders": {"child": in_child["hold"], "job": in_job["hold"]}}
    with open(os.path.join(out, "ready.json.tmp"), "w") as f:
        json.dump(ready, f)
    os.replace(os.path.join(out, "ready.json.tmp"), os.path.join(out, "ready.json"))
    time.sleep(WAIT_S)
    pytest.fail(f"not killed within {WAIT_S} s of writing {out}/ready.json")
