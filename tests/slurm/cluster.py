"""A real one-node SLURM cluster under a temp dir, for tests that submit the project's sbatch scripts.

    with LocalSlurmCluster() as cluster:
        job = cluster.sbatch(["--array=0-1", "--cpus-per-task=1"], "slurm/render_objaverse.sh", "--glb-dir", d)
        results = cluster.wait_array(job, [0, 1], timeout=90)

It runs Debian's Slurm 22.05 as root without systemd or cgroups (facts: shared/notes/slurm-localhost.md): its own
munged (key, socket, pid/log/seed files in the temp dir), slurmctld and slurmd in the foreground as children of this
process (so their PIDs are known and they are stopped by PID, never by name), free TCP ports so two clusters (two
test sessions) can run side by side, ``EnforcePartLimits=ALL`` so an impossible request is rejected at submission
instead of pending forever, and ``jobcomp/filetxt`` so finished jobs (which vanish from ``squeue`` at once) can still
be read back: state and exit code of every job and array task.

Every wait has a timeout and raises :class:`SlurmError` with what is needed to see why: the job's state in the
queue, its output file, and the tail of the daemons' logs.

The cluster never outlives the process that started it, however that process ends (a CI timeout's SIGKILL
included): each daemon is exec'd through a wrapper that sets ``PR_SET_PDEATHSIG`` (SIGKILL when its parent dies), and
the cluster's temp dir and daemon PIDs are recorded with :mod:`tests.lifetime`, whose watchdog kills what is left
(the jobs and their ``slurmstepd``, which carry the owner's marker in their environment) and removes the directory;
a cluster whose watchdog was killed too is removed by the next run that starts one.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from tests import lifetime

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel", "sacct")
INSTALL_HINT = ("install Debian's Slurm as root with `make -C <repo> slurm-packages` "
                "(apt-get install slurmctld slurmd slurm-client munge)")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}
NODE_NAME = "localhost"
PARTITION = "debug"

# Run as `python -c EXEC_WITH_PDEATHSIG <parent pid> <daemon argv...>`: the daemon (in the foreground, -D /
# --foreground) gets SIGKILL when the process that started it dies; PR_SET_PDEATHSIG survives execve.
EXEC_WITH_PDEATHSIG = (
    "import ctypes, os, signal, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) != 0:\n"
    "    sys.exit(f'prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}')\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('the parent died before the daemon started')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n")


class SlurmError(RuntimeError):
    """The local cluster could not start, a submission was rejected, or a job did not finish in time."""


class SlurmUnavailable(SlurmError):
    """Slurm/munge binaries are missing or this user cannot run the daemons (the tests skip with this message)."""


@dataclass
class JobResult:
    """One finished job or array task, as recorded by jobcomp/filetxt."""

    job_id: str  # the task's own job id
    state: str  # COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    exit_code: int  # the batch script's exit status (ExitCode=N:signal)
    signal: int
    array_job_id: str | None = None
    array_task_id: int | None = None
    stdout_path: str | None = None
    record: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == 0

    def output(self) -> str:
        return read_text(self.stdout_path)


def read_text(path: str | None, tail: int = 6000) -> str:
    if not path:
        return "<no output file known>"
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError as exc:
        return f"<cannot read {path}: {exc.strerror}>"
    return text if len(text) <= tail else "...\n" + text[-tail:]


def missing_binaries() -> list[str]:
    return [b for b in SLURM_BINARIES if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]


def _which(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_dead(pid: int) -> bool:
    """True when ``pid`` is gone or a zombie (PID 1 may reap late: ``kill -0`` still succeeds on a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def parse_jobcomp_line(line: str) -> dict:
    """``JobId=5 UserId=root(0) ... JobState=COMPLETED ... ExitCode=0:0`` -> dict (values may contain no spaces)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"(\w+)=(\S*)", line)}


class LocalSlurmCluster:
    """Context manager: a running munged + slurmctld + slurmd with one node and one partition (``debug``).

    ``cpus``: the CPUs the node advertises (at least what ``slurmd -C`` finds; more oversubscribes the machine through
    ``SlurmdParameters=config_overrides``, so array tasks plus a helper job fit on a 2-core CI machine).
    ``env``: the environment for Slurm clients (``SLURM_CONF`` set, inherited ``SLURM_*``/``SBATCH_*`` removed).
    """

    def __init__(self, cpus: int = 4, root: str | None = None, start_timeout: float = 60.0, keep: bool = False):
        self.requested_cpus = cpus
        self.start_timeout = start_timeout
        self.keep = keep or bool(os.environ.get("LIFT3D_KEEP_SLURM_DIR"))
        self._root_arg = root
        self.root = ""
        self.procs: dict[str, subprocess.Popen] = {}
        self.env: dict[str, str] = {}
        self.cpus = 0  # what the node advertises
        self.hw_cpus = 0  # what slurmd -C found
        self.memory_mb = 0
        self._stdout_paths: dict[str, str] = {}  # job id or "array_task" -> output path

    # ------------------------------------------------------------------ paths
    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def conf(self) -> str:
        return self.path("etc", "slurm.conf")

    @property
    def jobcomp_file(self) -> str:
        return self.path("log", "jobcomp.txt")

    # ------------------------------------------------------------------ start / stop
    def __enter__(self) -> "LocalSlurmCluster":
        missing = missing_binaries()
        if missing:
            raise SlurmUnavailable(f"Slurm binaries not found: {', '.join(missing)}; {INSTALL_HINT}")
        if os.geteuid() != 0:
            raise SlurmUnavailable("the local Slurm cluster runs its daemons as root (SlurmUser=root); "
                                   f"run the slurm tests as root (uid is {os.geteuid()})")
        lifetime.guard()  # before the environment is copied: daemons and jobs carry this run's marker
        self.root = self._root_arg or tempfile.mkdtemp(prefix="lift3d-slurm-")
        self._register()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        for d in ("etc", "log", "run", "state/ctld", "state/slurmd", "munge", "jobs"):
            os.makedirs(self.path(d), exist_ok=True)
        os.chmod(self.path("munge"), 0o700)
        self._read_hardware()
        self.env = self._client_env()
        # The config comes first: a client whose SLURM_CONF points at a missing file retries for 60 s.
        self._write_config()
        self._start_munged()
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", self.conf])
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", self.conf, "-N", NODE_NAME])
        self._wait_node_idle()

    def _read_hardware(self) -> None:
        try:
            out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmError(f"`slurmd -C` failed: {exc}") from exc
        fields = parse_jobcomp_line(out)
        if "CPUs" not in fields or "RealMemory" not in fields:
            raise SlurmError(f"`slurmd -C` printed no CPUs/RealMemory: {out!r}")
        self.hw_cpus = int(fields["CPUs"])
        self.cpus = max(self.hw_cpus, self.requested_cpus)
        self.memory_mb = max(256, int(int(fields["RealMemory"]) * 0.85))

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
        env["SLURM_CONF"] = self.conf
        return env

    def _write_config(self) -> None:
        ctld_port, slurmd_port = _free_port(), _free_port()
        while slurmd_port == ctld_port:
            slurmd_port = _free_port()
        lines = [
            "ClusterName=lift3d-test",
            f"SlurmctldHost={NODE_NAME}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.path('munge', 'munge.socket.2')}",
            f"StateSaveLocation={self.path('state', 'ctld')}",
            f"SlurmdSpoolDir={self.path('state', 'slurmd')}",
            f"SlurmctldPidFile={self.path('run', 'slurmctld.pid')}",
            f"SlurmdPidFile={self.path('run', 'slurmd.pid')}",
            f"SlurmctldLogFile={self.path('log', 'slurmctld.log')}",
            f"SlurmdLogFile={self.path('log', 'slurmd.log')}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp_file}",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1",
            "ReturnToService=2",
            "EnforcePartLimits=ALL",
            "MailProg=/bin/true",
            "MinJobAge=300",
            "KillWait=5",
            "SlurmdParameters=config_overrides",
            f"NodeName={NODE_NAME} NodeAddr=127.0.0.1 CPUs={self.cpus} Sockets=1 CoresPerSocket={self.cpus} "
            f"ThreadsPerCore=1 RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _start_munged(self) -> None:
        key = self.path("munge", "munge.key")
        with open(key, "wb") as f:
            f.write(secrets.token_bytes(1024))
        os.chmod(key, 0o400)
        sock = self.path("munge", "munge.socket.2")
        self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                               f"--pid-file={self.path('munge', 'munged.pid')}",
                               f"--log-file={self.path('log', 'munged.log')}",
                               f"--seed-file={self.path('munge', 'munged.seed')}"])
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            self._check_alive("munged")
            if time.monotonic() > deadline:
                raise SlurmError(f"munged did not create its socket {sock} within 15 s\n{self.diagnostics()}")
            time.sleep(0.05)

    def _spawn(self, name: str, argv: list[str]) -> None:
        """Start a daemon in the foreground, in its own session (a signal to the test's process group does not stop
        it half-way: :meth:`stop` does, in order), killed by the kernel when this process dies."""
        out = open(self.path("log", f"{name}.stdout"), "wb")
        wrapped = [sys.executable, "-I", "-S", "-c", EXEC_WITH_PDEATHSIG, str(os.getpid()), *argv]
        try:
            self.procs[name] = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                                                start_new_session=True)
        except OSError as exc:
            raise SlurmError(f"cannot start {name} ({shlex.join(argv)}): {exc}") from exc
        finally:
            out.close()
        self._register()
        with open(self.path("run", f"{name}.child.pid"), "w") as f:
            f.write(f"{self.procs[name].pid}\n")

    def _register(self) -> None:
        """Record the temp dir and the daemons' PIDs: if this process is killed, they are removed for it."""
        lifetime.register_cluster(self.root, {name: proc.pid for name, proc in self.procs.items()},
                                  remove=not (self.keep or self._root_arg))

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise SlurmError(f"{name} exited with status {proc.returncode} while starting\n{self.diagnostics()}")

    def _wait_node_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        state = ""
        while time.monotonic() < deadline:
            for name in ("munged", "slurmctld", "slurmd"):
                self._check_alive(name)
            r = self.run(["sinfo", "-h", "-n", NODE_NAME, "-o", "%t"], check=False, timeout=15)
            state = r.stdout.strip()
            if r.returncode == 0 and state == "idle":
                return
            time.sleep(0.2)
        raise SlurmError(f"node {NODE_NAME} not idle after {self.start_timeout:.0f} s (sinfo state {state!r})\n"
                         f"{self.diagnostics()}")

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged by their recorded PIDs (SIGTERM, then SIGKILL)."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            jobs = self.run(["squeue", "-h", "-o", "%i"], check=False, timeout=10).stdout.split()
            if jobs:
                self.run(["scancel", *sorted({j.split("_")[0] for j in jobs})], check=False, timeout=10)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and self.run(["squeue", "-h", "-o", "%i"], check=False,
                                                               timeout=10).stdout.strip():
                    time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                _terminate(proc)
        if self.root and not self.keep and not self._root_arg:
            shutil.rmtree(self.root, ignore_errors=True)
        if self.root:
            lifetime.unregister_cluster(self.root)

    # ------------------------------------------------------------------ clients
    def run(self, argv: list[str], check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        """Run a Slurm client (``squeue``, ``sacct``, ...) against this cluster."""
        try:
            r = subprocess.run(argv, env=kw.pop("env", None) or self.env, capture_output=True, text=True,
                               timeout=timeout, **kw)
        except subprocess.TimeoutExpired as exc:
            raise SlurmError(f"`{shlex.join(argv)}` did not return within {timeout} s\n{self.diagnostics()}") from exc
        if check and r.returncode != 0:
            raise SlurmError(f"`{shlex.join(argv)}` failed with status {r.returncode}:\n{r.stdout}{r.stderr}")
        return r

    def sbatch(self, args: list[str], script: str, *script_args: str, cwd: str | None = None,
               env: dict[str, str] | None = None) -> str:
        """Submit ``script`` (a path, or the text of a script starting with ``#!``) with sbatch ``args``; job id.

        Command-line ``args`` override the script's ``#SBATCH`` lines. A rejected submission raises at once with
        sbatch's message (e.g. more CPUs than the node has: EnforcePartLimits=ALL). ``env``: extra variables for
        the job (sbatch exports the submitting environment, ``--export=ALL``).
        """
        if script.startswith("#!"):
            path = self.path("jobs", f"job-{secrets.token_hex(4)}.sh")
            with open(path, "w") as f:
                f.write(script)
            os.chmod(path, 0o755)
            script = path
        argv = ["sbatch", "--parsable", *args, script, *script_args]
        r = self.run(argv, check=False, timeout=30, cwd=cwd, env={**self.env, **(env or {})})
        if r.returncode != 0:
            raise SlurmError(f"sbatch rejected the job (status {r.returncode}): {r.stderr.strip() or r.stdout.strip()}"
                             f"\n  command: {shlex.join(argv)}")
        job_id = r.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"cannot parse a job id from sbatch --parsable output {r.stdout!r}")
        self._remember_stdout(job_id)
        return job_id

    def _remember_stdout(self, job_id: str) -> None:
        """Record the StdOut path of the job (and of each array task scontrol already lists)."""
        r = self.run(["scontrol", "show", "job", "-o", job_id], check=False, timeout=15)
        for line in r.stdout.splitlines():
            rec = parse_jobcomp_line(line)
            # a pending array's record shows the task id as NO_VAL (4294967294) in StdOut: not a real path yet
            if rec.get("StdOut") and "4294967294" not in rec["StdOut"]:
                self._stdout_paths[rec.get("JobId", job_id)] = rec["StdOut"]
                if rec.get("ArrayJobId") and rec.get("ArrayTaskId", "").isdigit():
                    self._stdout_paths[f"{rec['ArrayJobId']}_{rec['ArrayTaskId']}"] = rec["StdOut"]

    def jobcomp_records(self) -> list[dict]:
        try:
            with open(self.jobcomp_file) as f:
                return [parse_jobcomp_line(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def _result(self, rec: dict) -> JobResult:
        code, _, sig = rec.get("ExitCode", "0:0").partition(":")
        job_id = rec["JobId"]
        array_job = rec.get("ArrayJobId") if rec.get("ArrayJobId") not in (None, "", "0", "4294967294") else None
        task = rec.get("ArrayTaskId")
        task_id = int(task) if task and task.isdigit() and array_job else None
        stdout = self._stdout_paths.get(f"{array_job}_{task_id}") if array_job else None
        stdout = stdout or self._stdout_paths.get(job_id) or rec.get("StdOut")
        return JobResult(job_id=job_id, state=rec.get("JobState", "UNKNOWN"), exit_code=int(code or 0),
                         signal=int(sig or 0), array_job_id=array_job, array_task_id=task_id, stdout_path=stdout,
                         record=rec)

    def _final_records(self, job_id: str) -> dict[str, JobResult]:
        """Last final jobcomp record per job id (a requeued job has an earlier REQUEUED/PREEMPTED line)."""
        out: dict[str, JobResult] = {}
        for rec in self.jobcomp_records():
            if rec.get("JobId") == job_id or rec.get("ArrayJobId") == job_id:
                res = self._result(rec)
                if res.state in FINAL_STATES:
                    out[res.job_id] = res
        return out

    def _in_queue(self, job_id: str) -> list[dict]:
        r = self.run(["squeue", "-h", "-j", job_id, "-o", "%i|%T|%r"], check=False, timeout=15)
        rows = []
        for line in r.stdout.splitlines():
            jid, state, reason = (line.split("|") + ["", ""])[:3]
            rows.append({"id": jid, "state": state, "reason": reason})
        return rows

    def wait(self, job_id: str, timeout: float = 60) -> JobResult:
        """Wait until the (non-array) job has finished; its :class:`JobResult`. Raises after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            done = self._final_records(job_id)
            if job_id in done and not self._in_queue(job_id):
                self._remember_stdout(job_id)
                return self._final_records(job_id)[job_id]
            if time.monotonic() > deadline:
                raise SlurmError(self._timeout_message(job_id, timeout, done))
            self._remember_stdout(job_id)
            time.sleep(0.25)

    def wait_array(self, job_id: str, task_ids, timeout: float = 60) -> dict[int, JobResult]:
        """Wait until every array task in ``task_ids`` has finished; {array task id: JobResult}."""
        want = set(task_ids)
        deadline = time.monotonic() + timeout
        while True:
            by_task = {r.array_task_id: r for r in self._final_records(job_id).values() if r.array_task_id is not None}
            if want <= set(by_task) and not self._in_queue(job_id):
                self._remember_stdout(job_id)  # scontrol still lists finished tasks (MinJobAge): their StdOut
                by_task = {r.array_task_id: r for r in self._final_records(job_id).values()
                           if r.array_task_id is not None}
                return {t: by_task[t] for t in sorted(want)}
            if time.monotonic() > deadline:
                raise SlurmError(self._timeout_message(job_id, timeout, by_task, want))
            self._remember_stdout(job_id)
            time.sleep(0.25)

    def _timeout_message(self, job_id: str, timeout: float, done: dict, want=None) -> str:
        lines = [f"job {job_id} did not finish within {timeout:.0f} s"]
        if want is not None:
            lines.append(f"  array tasks finished: {sorted(done)} of {sorted(want)}")
        for row in self._in_queue(job_id):
            lines.append(f"  still in the queue: {row['id']} {row['state']} (reason: {row['reason']})")
        paths = {p for k, p in self._stdout_paths.items() if k == job_id or k.startswith(f"{job_id}_")}
        for p in sorted(paths):
            lines.append(f"--- output {p}:\n{read_text(p)}")
        lines.append(self.diagnostics())
        return "\n".join(lines)

    def diagnostics(self, tail: int = 3000) -> str:
        """Tails of the daemons' logs (for error messages)."""
        parts = [f"cluster dir: {self.root}"]
        for name in ("munged.log", "slurmctld.log", "slurmd.log", "munged.stdout", "slurmctld.stdout",
                     "slurmd.stdout"):
            p = self.path("log", name)
            if os.path.exists(p) and os.path.getsize(p):
                parts.append(f"--- {p} (tail):\n{read_text(p, tail)}")
        return "\n".join(parts)


def _terminate(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the recorded PID, wait (a zombie counts as dead), then SIGKILL; reap it."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while proc.poll() is None and not _is_dead(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None and not _is_dead(proc.pid):
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass  # left as a zombie of ours; it holds no resources and is reaped when this process exits
