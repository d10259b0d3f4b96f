"""Render worker processes: one Blender per process, jobs over pipes, hard timeouts, recycling.

A worker is started as ``python -m render_farm.worker`` (pip ``bpy``) or, on clusters with a pre-staged
portable Blender 4.2 (``--custom-blender-path``), as ``blender --background --python render_farm/worker.py``:
the same job loop runs in both. Jobs and results travel over two dedicated pipes (not stdout: Blender prints
there); the worker's stdout and stderr go to its log file. The parent (:class:`WorkerPool`) kills a worker whose
job passes its deadline or that has served ``max_jobs`` objects (Blender leaks memory when looping), and starts a
fresh one. Workers die with their parent (each sets PR_SET_PDEATHSIG at start-up, and a closed job pipe ends its
loop), so a SIGKILLed job leaves no orphan Blenders.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------ worker side
def render_job(job: dict) -> dict:
    """Render one object (inside the worker) and return the encoded format-v1 sample plus a done-list record."""
    import resource

    import numpy as np

    from geometry.rigs import make_rig, object_rng
    from render_farm.blender_scene import render_object
    from render_farm.config import RenderSettings
    from render_farm.shards import encode_sample

    t0 = time.time()
    settings = RenderSettings(**job["settings"])
    rig = make_rig(job["rig"], job["uid"], settings.resolution, settings.seed, **job.get("rig_options", {}))
    out = render_object(job["path"], rig, settings, job["depth_scale"], rng=object_rng("lighting", job["uid"],
                                                                                       settings.seed),
                        allow_missing_textures=job.get("allow_missing_textures", False))
    import bpy

    meta = {
        "uid": job["uid"], "source": job["source"], "licence": job["licence"], "sha256": job["sha256"],
        "normalization": out["normalization"], "depth_scale": job["depth_scale"],
        "render": {"engine": settings.engine, "samples": settings.samples, "resolution": settings.resolution,
                   "rig": rig.name, "rig_options": job.get("rig_options", {}), "seed": settings.seed,
                   "denoise": settings.denoise, "view_transform": "Standard", "lighting": out["lighting"],
                   "blender": bpy.app.version_string, "renderer": "bpy"},
        "view_roles": rig.roles,
        "faces": out["faces"],
        "source_metadata": job.get("metadata", {}),
    }
    if out["warnings"]:
        meta["warnings"] = out["warnings"]
    mesh = None
    if out["gt_mesh"] is not None:
        verts, faces, info = out["gt_mesh"]
        mesh = (verts, faces)
        meta["gt_mesh"] = {**info, "max_faces": settings.gt_mesh_faces, "frame": bpy.context.scene.frame_current}
    if "neighbours_of" in rig.extra:
        meta["neighbours_of"] = {str(k): v for k, v in rig.extra["neighbours_of"].items()}
    sample = encode_sample(job["uid"], out["views"], out["c2w"], out["K"], out["hw"], meta, mesh=mesh)
    seconds = time.time() - t0
    return {"sample": sample, "record": {"views": len(rig), "seconds": round(seconds, 3),
                                         "worker_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                         "faces": out["faces"]},
            "views_array_bytes": int(np.prod(out["hw"][0]) * len(rig))}


def serve(job_fd: int, result_fd: int) -> None:
    jobs, results = Connection(job_fd, writable=False), Connection(result_fd, readable=False)
    from render_farm.blender_scene import AssetError  # imports bpy once per worker

    results.send(("ready", os.getpid()))
    while True:
        try:
            job = jobs.recv()
        except EOFError:
            return
        if job is None:
            return
        print(f"=== lift3d job {job['uid']} ({job['path']}) pid {os.getpid()}", flush=True)
        try:
            results.send(("ok", job["uid"], render_job(job)))
        except AssetError as exc:
            results.send(("failed", job["uid"], str(exc), traceback.format_exc()))
        except Exception as exc:  # any other failure of one asset must not end the worker's loop
            results.send(("failed", job["uid"], f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        sys.stdout.flush()
        sys.stderr.flush()


def _set_pdeathsig() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux/glibc: workers are still killed explicitly by the pool


# ------------------------------------------------------------------------------------------------ parent side
@dataclass
class Worker:
    slot: int
    proc: subprocess.Popen
    jobs: Connection
    results: Connection
    log_path: str
    served: int = 0
    job: dict | None = None
    deadline: float = float("inf")
    log_offset: int = 0


class WorkerPool:
    """``num_workers`` Blender processes; :meth:`run` maps jobs to results with a hard timeout per job."""

    def __init__(self, num_workers: int, log_prefix: str, timeout_s: float = 600.0, max_jobs: int = 50,
                 blender_path: str | None = None, startup_timeout_s: float = 120.0):
        self.num_workers, self.log_prefix = max(1, num_workers), log_prefix
        self.timeout_s, self.max_jobs, self.blender_path = timeout_s, max(1, max_jobs), blender_path
        self.startup_timeout_s = startup_timeout_s
        self.workers: list[Worker] = []
        self.started_workers = 0

    def _command(self, job_fd: int, result_fd: int) -> list[str]:
        fds = ["--job-fd", str(job_fd), "--result-fd", str(result_fd)]
        if self.blender_path is None:
            return [sys.executable, "-m", "render_farm.worker", *fds]
        exe = self.blender_path
        if os.path.isdir(exe):
            exe = os.path.join(exe, "blender")
        if not os.access(exe, os.X_OK):
            raise FileNotFoundError(f"--custom-blender-path {self.blender_path!r}: no executable 'blender' there; "
                                    "point it at the unpacked portable Blender 4.2 directory")
        return [exe, "--background", "--factory-startup", "--python-exit-code", "1",
                "--python", os.path.join(PROJECT_ROOT, "render_farm", "worker.py"), "--", *fds]

    def _start(self, slot: int) -> Worker:
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        log_path = f"{self.log_prefix}-w{slot}.log"
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PROJECT_ROOT, os.environ.get("PYTHONPATH")])),
                   PYTHONUNBUFFERED="1")
        if self.blender_path is not None:  # Blender's bundled Python also needs the venv's packages (OpenEXR, cv2)
            import site
            env["LIFT3D_EXTRA_SITE"] = os.pathsep.join(site.getsitepackages())
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(self._command(job_r, res_w), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, pass_fds=(job_r, res_w), env=env, cwd=PROJECT_ROOT)
        os.close(job_r)
        os.close(res_w)
        w = Worker(slot, proc, Connection(job_w, readable=False), Connection(res_r, writable=False), log_path)
        if not w.results.poll(self.startup_timeout_s):
            self._kill(w)
            raise RuntimeError(f"render worker did not start within {self.startup_timeout_s:.0f}s; see {log_path}:\n"
                               + self.log_excerpt(w, 0))
        try:
            w.results.recv()
        except EOFError:
            raise RuntimeError(f"render worker exited during start-up (is bpy 4.2 installed? run `make setup`); "
                               f"see {log_path}:\n" + self.log_excerpt(w, 0)) from None
        self.started_workers += 1
        return w

    @staticmethod
    def _kill(w: Worker) -> None:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait()
        w.jobs.close()
        w.results.close()

    @staticmethod
    def log_excerpt(w: Worker, offset: int, limit: int = 3000) -> str:
        try:
            with open(w.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("Fra:", "Saved:", " Time:"))]
        return "\n".join(lines)[-limit:]

    def _assign(self, w: Worker, job: dict) -> None:
        w.job, w.deadline = job, time.time() + self.timeout_s
        w.log_offset = os.path.getsize(w.log_path) if os.path.exists(w.log_path) else 0
        w.jobs.send(job)

    def _replace(self, w: Worker) -> None:
        self._kill(w)
        self.workers[self.workers.index(w)] = self._start(w.slot)

    def run(self, jobs):
        """Yield ``(job, status, payload)``: ("ok", result) or ("failed", (reason, log excerpt)), in completion
        order."""
        pending = iter(jobs)
        exhausted = False
        if not self.workers:
            self.workers = [self._start(i) for i in range(self.num_workers)]
        while True:
            for w in self.workers:
                if w.job is None and not exhausted:
                    job = next(pending, None)
                    if job is None:
                        exhausted = True
                    else:
                        self._assign(w, job)
            busy = [w for w in self.workers if w.job is not None]
            if not busy:
                return
            timeout = max(0.0, min(w.deadline for w in busy) - time.time())
            ready = wait([w.results for w in busy], timeout=timeout)
            for w in busy:
                if w.results in ready:
                    yield from self._collect(w)
                elif time.time() >= w.deadline:
                    job = w.job
                    excerpt = self.log_excerpt(w, w.log_offset)
                    w.job = None
                    self._replace(w)
                    yield job, "failed", (f"timeout: no result within {self.timeout_s:.0f}s (worker killed)",
                                          excerpt)

    def _collect(self, w: Worker):
        job = w.job
        try:
            msg = pickle.loads(w.results.recv_bytes())
        except (EOFError, OSError):
            code = w.proc.wait()
            excerpt = self.log_excerpt(w, w.log_offset)
            w.job = None
            self._replace(w)
            yield job, "failed", (f"render worker died (exit code {code}) while rendering", excerpt)
            return
        w.job, w.served = None, w.served + 1
        if msg[0] == "ok":
            out = (job, "ok", msg[2])
        else:
            out = (job, "failed", (msg[2], msg[3] + "\n" + self.log_excerpt(w, w.log_offset)))
        if w.served >= self.max_jobs:
            self._replace(w)  # Blender leaks memory over many objects: start fresh
        yield out

    def close(self) -> None:
        for w in self.workers:
            try:
                w.jobs.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.time() + 10
        for w in self.workers:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            self._kill(w)
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv=None) -> None:
    if "--" in sys.argv:  # inside a Blender binary: our arguments follow "--"
        argv = sys.argv[sys.argv.index("--") + 1:]
        sys.path.insert(0, PROJECT_ROOT)
        sys.path.extend(p for p in os.environ.get("LIFT3D_EXTRA_SITE", "").split(os.pathsep) if p)
    p = argparse.ArgumentParser(description="lift3d render worker (started by the render farm, not by users)")
    p.add_argument("--job-fd", type=int, required=True)
    p.add_argument("--result-fd", type=int, required=True)
    a = p.parse_args(argv)
    _set_pdeathsig()
    serve(a.job_fd, a.result_fd)


if __name__ == "__main__":
    main()
