"""A test run that is killed leaves no Slurm, munge or Blender process and no cluster directory behind.

A child pytest (``killed_run.py``) starts the local Slurm cluster and a Blender render worker in three places (its
own process, a child process, a Slurm job), then is SIGKILLed as a CI timeout kills ``make test``: the leader of its
process group only, so nothing else gets a signal. Everything it started must be gone within a bounded number of
polls: the daemons (by their recorded PIDs), the job's ``slurmstepd`` and processes, the Blender workers (by PID),
the cluster's temp dir and the run's registry entry. In the second case the run's watchdog is killed first (a
``kill -9`` of everything the user owns would do that): the daemons still die with their parent (PR_SET_PDEATHSIG),
and the next run's start removes the rest (:func:`tests.lifetime.reap_stale`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from configs import ROOT
from tests import lifetime
from tests.slurm.cluster import missing_binaries

# Idle: 25 s per case (most of it three Blender start-ups); hang guard 4× the slowest case, plus the bounded waits.
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(300)]

POLLS, POLL_S = 120, 0.5  # what is left must be gone within 60 s (the watchdog polls every 0.5 s)


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return "?"


def snapshot(ready: dict) -> dict[int, tuple[int | None, str]]:
    """{pid: (start time, command line)} of the live processes of the run: those that carry its marker and those that
    work in its cluster's directory (``slurmstepd`` clears its environment)."""
    pids = set(lifetime.carrying(ready["marker"])) | set(lifetime.working_in([ready["cluster_root"]]))
    return {pid: (lifetime.start_time(pid), comm(pid)) for pid in pids}


def start_killed_run(tmp_path) -> tuple[subprocess.Popen, dict, str]:
    out = tmp_path / "run"
    out.mkdir()
    log = str(tmp_path / "pytest.log")
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "tests/slurm/killed_run.py", f"--basetemp={tmp_path / 'basetemp'}"],
                                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                env=dict(os.environ, LIFT3D_KILLED_RUN_DIR=str(out)), start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out / "ready.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            with open(log, errors="replace") as f:
                pytest.fail(f"the run to be killed did not get ready (status {proc.returncode}):\n{f.read()[-6000:]}")
        time.sleep(0.2)
    return proc, json.loads((out / "ready.json").read_text()), log


def leftovers(ready: dict, before: dict[int, tuple[int | None, str]]) -> list[str]:
    """What is still there of the killed run, in words (empty when nothing is)."""
    left = [f"pid {pid} ({cmd}), running before the kill" for pid, (started, cmd) in before.items()
            if lifetime.is_alive(pid, started)]
    left += [f"pid {pid} ({cmd}), of the run (its marker or working directory), started after the kill"
             for pid, (_, cmd) in snapshot(ready).items() if pid not in before]
    if os.path.exists(ready["cluster_root"]):
        left.append(f"the cluster directory {ready['cluster_root']}")
    if os.path.exists(ready["entry"]):
        left.append(f"the registry entry {ready['entry']}")
    return left


def wait_until_gone(ready: dict, before: dict) -> list[str]:
    for _ in range(POLLS):
        left = leftovers(ready, before)
        if not left:
            return []
        time.sleep(POLL_S)
    return left


@pytest.mark.parametrize("watchdog", ["alive", "killed too"])
def test_killed_run_leaves_no_slurm_munge_or_blender_process(tmp_path, watchdog):
    if missing_binaries() or os.geteuid() != 0:
        pytest.skip("needs the local Slurm cluster (Slurm installed, run as root)")
    proc, ready, log = start_killed_run(tmp_path)
    try:
        before = snapshot(ready)
        names = {cmd.split()[0].rsplit("/", 1)[-1] for _, cmd in before.values()}
        # the run really has what the kill must take down (the daemons exec'd under their own names)
        assert {"munged", "slurmctld", "slurmd"} <= names, before
        assert any(cmd.startswith("slurmstepd") for _, cmd in before.values()), before
        pids = {**ready["daemons"], **{f"blender ({k})": v for k, v in ready["blender"].items()},
                **{f"holder ({k})": v for k, v in ready["holders"].items()}}
        for what, pid in pids.items():
            assert pid in before, f"{what} (pid {pid}, {comm(pid)}) does not carry the run's marker: {before}"
        for where, pid in ready["blender"].items():
            assert "render_farm.worker" in comm(pid), (where, comm(pid))

        if watchdog == "killed too":
            os.kill(json.loads(open(ready["entry"]).read())["watchdog"], signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)  # the process group's leader only, as a CI timeout does
        proc.wait()

        if watchdog == "killed too":
            daemons = [ready["daemons"][n] for n in ("munged", "slurmctld", "slurmd")] + [ready["blender"]["direct"]]
            for _ in range(POLLS):
                alive = [p for p in daemons if lifetime.is_alive(p, before[p][0])]
                if not alive:
                    break
                time.sleep(POLL_S)
            assert not alive, f"children of the killed run outlived it (PR_SET_PDEATHSIG): {alive}"
            assert os.path.exists(ready["entry"]), "nothing should have reaped the run without its watchdog"
            assert ready["entry"] in lifetime.reap_stale()  # what the next run does when it starts

        left = wait_until_gone(ready, before)
        assert not left, "the killed run left behind:\n  " + "\n  ".join(left)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if os.path.exists(ready["entry"]):
            lifetime.reap(ready["entry"])  # a failing test must not leave its own leftovers
