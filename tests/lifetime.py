"""Nothing a test run starts outlives it: Slurm daemons, Slurm jobs, Blender workers, DDP ranks, CLI subprocesses.

A run (a pytest session, or any process that starts a :class:`tests.slurm.cluster.LocalSlurmCluster`) is the *owner*.
:func:`guard` makes the current process an owner:

* it puts a marker, ``LIFT3D_TEST_OWNER=<pid>:<start time>``, into ``os.environ``, so every process started from
  here on inherits it — subprocesses, their Blender workers, the Slurm daemons and (through ``sbatch``'s exported
  environment) the jobs and their ``slurmstepd``;
* it records itself in the registry, ``/tmp/lift3d-test-runs-<uid>/<pid>-<start time>.json``, with the temp
  directories and daemon PIDs of the clusters it starts (:func:`register_cluster`); the daemons run in their
  cluster's directory, and so does every ``slurmstepd`` they start (which clears its environment);
* it starts a watchdog (this file run as a script, in its own session, so a signal to the run's process group does not
  reach it) that polls the owner's PID; when the owner is gone — however it ended, SIGKILL included — the watchdog
  SIGKILLs every process that carries the owner's marker or works in a recorded cluster directory and every recorded
  PID, removes the recorded directories and the registry entry, and exits.

If the watchdog was killed too, the next run removes what is left: :func:`reap_stale` (called by :func:`guard`)
reaps every registry entry whose owner is dead. Processes are found by the marker, by working directory and by
recorded PIDs (checked against their start time, so a reused PID is never hit), never by name. Standard library
only: the watchdog runs this file with no project imports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

MARKER = "LIFT3D_TEST_OWNER"
REGISTRY = os.environ.get("LIFT3D_TEST_REGISTRY") or os.path.join(tempfile.gettempdir(),
                                                                  f"lift3d-test-runs-{os.getuid()}")
POLL_S = 0.5  # the watchdog's poll interval: leftovers are gone within about a second of the owner's death

_entry: str | None = None  # this process's registry entry, once guard() has run


# ------------------------------------------------------------------------------------------------ /proc
def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return None
    if fields[0] in ("Z", "X"):  # PID 1 may reap late: a zombie counts as dead
        return None
    return int(fields[19])


def is_alive(pid: int, started: int | None = None) -> bool:
    """True while ``pid`` runs (and, with ``started``, is still the process that started then, not a reused PID)."""
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def carrying(marker: str) -> list[int]:
    """PIDs of the live processes whose environment holds ``LIFT3D_TEST_OWNER=<marker>`` (not this process)."""
    needle = f"{MARKER}={marker}".encode() + b"\0"
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone, or another user's
            continue
        if needle in env + b"\0" and is_alive(int(name)):
            found.append(int(name))
    return found


def working_in(roots: list[str]) -> list[int]:
    """PIDs of the live processes whose working directory is in one of ``roots`` (even once it is deleted): a
    cluster's daemons and their ``slurmstepd`` (which clears its environment, so carries no marker) run there."""
    roots = [os.path.realpath(r) for r in roots]
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{name}/cwd").removesuffix(" (deleted)")
        except OSError:
            continue
        if any(cwd == r or cwd.startswith(r + os.sep) for r in roots) and is_alive(int(name)):
            found.append(int(name))
    return found


# ------------------------------------------------------------------------------------------------ registry
def _entry_path(pid: int, started: int) -> str:
    return os.path.join(REGISTRY, f"{pid}-{started}.json")


def entry_of(pid: int) -> str | None:
    """The registry entry of the run whose owner is ``pid`` (None if it has none)."""
    started = start_time(pid)
    path = _entry_path(pid, started) if started is not None else None
    return path if path and os.path.exists(path) else None


def read_entry(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_entry(path: str, entry: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(entry, f, indent=1)
    os.replace(tmp, path)  # atomic: a reader (the watchdog) never sees half a file


def guard() -> str:
    """Make this process an owner (idempotent): marker in ``os.environ``, registry entry, watchdog. Returns the
    marker. Reaps what killed runs left behind first."""
    global _entry
    if _entry is not None and os.path.exists(_entry):
        return os.environ[MARKER]
    if not os.path.isdir("/proc"):  # not Linux: no /proc to find processes by; the fixtures' own teardown only
        return ""
    reap_stale()
    pid, started = os.getpid(), start_time(os.getpid()) or 0  # this process runs: it has a start time
    marker = f"{pid}:{started}"
    os.environ[MARKER] = marker
    os.makedirs(REGISTRY, exist_ok=True)
    path = _entry_path(pid, started)
    entry = {"owner": pid, "started": started, "marker": marker, "watchdog": None, "clusters": {}}
    _write_entry(path, entry)  # before the watchdog starts: it reads it
    env = {k: v for k, v in os.environ.items() if k != MARKER}  # the watchdog must not carry what it kills
    watchdog = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), "--watch", path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, start_new_session=True, close_fds=True)
    entry["watchdog"] = watchdog.pid
    _write_entry(path, entry)
    _entry = path
    return marker


def register_cluster(root: str, pids: dict[str, int], remove: bool = True) -> None:
    """Record a cluster's daemon PIDs and its directory (removed by the reaper if ``remove``) in this owner's entry
    (after :func:`guard`)."""
    entry = read_entry(_entry) if _entry else None
    if _entry is None or entry is None:
        raise RuntimeError(f"register_cluster({root!r}) before tests.lifetime.guard(): call guard() first")
    entry["clusters"][root] = {"remove": remove, "pids": {name: [pid, start_time(pid)] for name, pid in pids.items()}}
    _write_entry(_entry, entry)


def unregister_cluster(root: str) -> None:
    """The cluster at ``root`` was stopped and removed by its owner."""
    entry = read_entry(_entry) if _entry else None
    if _entry is not None and entry is not None and entry["clusters"].pop(root, None) is not None:
        _write_entry(_entry, entry)


# ------------------------------------------------------------------------------------------------ reaping
def reap(path: str, timeout: float = 20.0) -> None:
    """Kill everything the (dead) owner of entry ``path`` left: marked processes and recorded daemons; remove its
    clusters' directories and the entry."""
    entry = read_entry(path)
    if entry is None:
        _remove(path)
        return
    clusters = entry.get("clusters", {})
    recorded = [(pid, started) for cluster in clusters.values() for pid, started in cluster["pids"].values()]
    deadline = time.monotonic() + timeout
    while True:  # again until none is left: a dying daemon may just have started a child
        victims = set(carrying(entry["marker"])) | set(working_in(list(clusters)))
        victims |= {pid for pid, started in recorded if is_alive(pid, started)}
        if not victims or time.monotonic() > deadline:
            break
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.1)
    for root, cluster in clusters.items():
        if cluster["remove"]:
            shutil.rmtree(root, ignore_errors=True)
    _remove(path)


def reap_stale() -> list[str]:
    """Reap every registry entry whose owner is dead (runs that were killed, along with their watchdog)."""
    reaped: list[str] = []
    try:
        names = sorted(os.listdir(REGISTRY))
    except FileNotFoundError:
        return reaped
    for name in names:
        path = os.path.join(REGISTRY, name)
        if name.endswith(".tmp"):
            pid = int(name.split(".")[-2]) if name.split(".")[-2].isdigit() else 0
            if pid and not is_alive(pid):
                _remove(path)
            continue
        entry = read_entry(path)
        if entry is None or not is_alive(entry["owner"], entry["started"]):
            reap(path)
            reaped.append(path)
    return reaped


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def watch(path: str) -> None:
    """The watchdog: wait for the owner of entry ``path`` to end, then reap it."""
    entry = read_entry(path)
    if entry is None:
        return
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # outlive the owner's terminal, like the daemons would
    while is_alive(entry["owner"], entry["started"]):
        time.sleep(POLL_S)
    reap(path)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--watch":
        sys.exit(f"usage: {sys.argv[0]} --watch <registry entry>  (started by tests.lifetime.guard(), not by hand)")
    watch(sys.argv[2])
