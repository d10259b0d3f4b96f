"""Running on a SLURM cluster: the launch check, pre-emption (checkpoint + requeue) and resuming a run directory.

* :func:`check_launch` — before anything is built: the SLURM allocation (nodes, tasks per node) must be the
  Trainer's ``num_nodes`` × ``devices`` (under ``srun`` a mismatch gives a silently wrong world size, Lightning
  #20391), and ``batch_size × devices × num_nodes × accumulate_grad_batches`` must be the config's
  ``global_batch_size`` when one is set. Errors name the setting and the fix.
* :class:`Preemption` — ``sbatch --signal=USR1@90 --requeue`` delivers SIGUSR1 to every task before the time
  limit. The handler only sets a flag; at the next step boundary every rank agrees on it (one small all-reduce),
  all ranks save ``<default_root_dir>/hpc_ckpt_<n>.ckpt`` (Lightning's pre-emption checkpoint name), training stops
  and, once the process has shut down cleanly, rank 0 runs ``scontrol requeue`` (:func:`requeue`, called by the
  ``lift3d`` CLI). Lightning's own SLURM handler saves inside the signal handler, which can meet the other ranks
  inside a gradient all-reduce; this one never does.
* :func:`find_resume_checkpoint` — what ``--ckpt_path auto`` resumes: the checkpoint of the run directory that is
  furthest along, of any name the run writes (pre-emption, ``last``, ``epoch=…-step=…``, ZeRO directories), each read
  as tensors only; None (a fresh start) only when the run has none: checkpoints that all fail to read stop the
  launch with a :class:`ResumeError` listing them.
"""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
from typing import Any, Optional

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment

from lightning_modules.launch.signals import install_signal_flag, signal_received

HPC_PREFIX = "hpc_ckpt_"


class LaunchError(ValueError):
    """The allocation, the Trainer and the batch size disagree (raised before any process group exists)."""


def in_slurm_job(env=None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("SLURM_JOB_ID"))


def is_rank_zero_process(env=None) -> bool:
    """Whether this process will be global rank 0, read from the launcher's environment before any process group
    exists: torchrun (RANK), srun (SLURM_PROCID) or Lightning's own launcher (NODE_RANK, LOCAL_RANK)."""
    env = os.environ if env is None else env
    for key in ("RANK", "SLURM_PROCID"):
        if env.get(key, "").isdigit():
            return int(env[key]) == 0
    return int(env.get("NODE_RANK", 0) or 0) == 0 and int(env.get("LOCAL_RANK", 0) or 0) == 0


def _tasks_per_node(env) -> list[int]:
    """``SLURM_TASKS_PER_NODE`` ("8(x16)", "2,1") -> one count per node."""
    counts: list[int] = []
    for part in (env.get("SLURM_TASKS_PER_NODE") or "").split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m:
            counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def _device_count(devices) -> Optional[int]:
    if isinstance(devices, int):
        return devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        s = devices.strip()
        if s.isdigit():
            return int(s)
        if "," in s:
            return len([d for d in s.split(",") if d.strip()])
    return None  # "auto", -1: whatever the machine has


def check_launch(num_nodes: int, devices, batch_size: Optional[int], accumulate_grad_batches: int = 1,
                 global_batch_size: Optional[int] = None, env=None) -> dict:
    """Raise :class:`LaunchError` when the allocation, the Trainer and the batch size disagree; else the figures."""
    env = os.environ if env is None else env
    errors: list[str] = []
    per_node = _device_count(devices)
    plan: dict[str, Any] = {"num_nodes": num_nodes, "devices": per_node, "batch_size": batch_size,
                            "accumulate_grad_batches": accumulate_grad_batches, "slurm": in_slurm_job(env)}
    if plan["slurm"] and env.get("SLURM_NTASKS"):
        nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
        ntasks = int(env["SLURM_NTASKS"])
        tasks = _tasks_per_node(env)
        plan.update(slurm_nodes=nodes, slurm_tasks=ntasks, slurm_tasks_per_node=tasks)
        if per_node is None:
            errors.append(f"trainer.devices={devices!r} cannot be checked against the allocation: set it to the "
                          f"tasks per node (--trainer.devices={tasks[0] if tasks else ntasks // nodes})")
        else:
            if nodes != num_nodes:
                errors.append(f"the job has {nodes} node(s) but trainer.num_nodes={num_nodes}: submit with "
                              f"--nodes={num_nodes} or pass --trainer.num_nodes={nodes}")
            if tasks and any(t != per_node for t in tasks):
                errors.append(f"the job runs {env.get('SLURM_TASKS_PER_NODE')} task(s) per node but "
                              f"trainer.devices={per_node}: one task per device, so submit with "
                              f"--ntasks-per-node={per_node} or pass --trainer.devices={tasks[0]}")
            elif ntasks != num_nodes * per_node:
                errors.append(f"the job has {ntasks} task(s) but trainer.num_nodes × devices = {num_nodes} × "
                              f"{per_node} = {num_nodes * per_node}: submit with --ntasks-per-node={per_node}")
    world = num_nodes * per_node if per_node else None
    plan["world_size"] = world
    if batch_size is not None and world:
        plan["global_batch_size"] = batch_size * world * accumulate_grad_batches
        if global_batch_size is not None and plan["global_batch_size"] != global_batch_size:
            errors.append(f"global batch = {batch_size} per device × {per_node} device(s) × {num_nodes} node(s) × "
                          f"{accumulate_grad_batches} accumulation = {plan['global_batch_size']}, but the config "
                          f"says global_batch_size: {global_batch_size}; change data.init_args.batch_size, "
                          f"trainer.accumulate_grad_batches or global_batch_size so they agree")
    elif global_batch_size is not None and world is None:
        errors.append(f"global_batch_size: {global_batch_size} cannot be checked with trainer.devices={devices!r}: "
                      "set trainer.devices to a number")
    if errors:
        raise LaunchError("launch check failed:\n  - " + "\n  - ".join(errors))
    return plan


def describe(plan: dict) -> str:
    s = (f"{plan['num_nodes']} node(s) × {plan['devices']} device(s) = world size {plan['world_size']}; "
         f"global batch {plan.get('global_batch_size')} = {plan['batch_size']} per device × "
         f"{plan['accumulate_grad_batches']} accumulation")
    if plan.get("slurm_tasks") is not None:
        s += f"; SLURM: {plan['slurm_nodes']} node(s), {plan['slurm_tasks']} task(s)"
    return s


# ---------------------------------------------------------------------------------------------- pre-emption
def _signum(value) -> int:
    if isinstance(value, int):
        return value
    name = str(value).upper()
    return int(getattr(signal, name if name.startswith("SIG") else "SIG" + name))


class Preemption(L.Callback):
    """Checkpoint and stop at the next step boundary after ``signal`` (default SIGUSR1) reaches any rank; the CLI
    then requeues the SLURM job (``requeue``). The checkpoint is ``<default_root_dir>/hpc_ckpt_<n>.ckpt``; older
    pre-emption checkpoints of the run are removed once the new one is complete (``keep`` newest kept)."""

    def __init__(self, signal: str = "SIGUSR1", requeue: bool = True, keep: int = 1):
        self.signum = _signum(signal)
        self.requeue, self.keep = requeue, keep
        self.saved_path: Optional[str] = None
        self.saved_step: Optional[int] = None

    @property
    def preempted(self) -> bool:
        return self.saved_path is not None

    def setup(self, trainer, pl_module, stage: str) -> None:
        install_signal_flag(self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.preempted:
            return
        # every rank must take the same branch: "any rank got the signal"
        if not trainer.strategy.reduce_boolean_decision(signal_received(self.signum), all=False):
            return
        root = str(trainer.default_root_dir)
        path = _next_hpc_path(root)
        path = trainer.strategy.broadcast(path)
        trainer.save_checkpoint(path)  # collective: every rank writes its part (DeepSpeed) or waits (DDP)
        self.saved_path, self.saved_step = path, trainer.global_step
        if trainer.is_global_zero:
            for old in sorted(_hpc_checkpoints(root), key=_hpc_number)[:-max(1, self.keep)]:
                _remove(old)
            print(f"lift3d: pre-empted at step {trainer.global_step} (epoch {trainer.current_epoch}): saved {path}",
                  flush=True)
        trainer.should_stop = True


def _hpc_number(path: str) -> int:
    m = re.search(rf"{HPC_PREFIX}(\d+)\.ckpt$", path)
    return int(m.group(1)) if m else -1


def _hpc_checkpoints(root: str) -> list[str]:
    return [p for p in glob.glob(os.path.join(root, f"{HPC_PREFIX}*.ckpt")) if _hpc_number(p) >= 0]


def _next_hpc_path(root: str) -> str:
    numbers = [_hpc_number(p) for p in _hpc_checkpoints(root)]
    return os.path.join(root, f"{HPC_PREFIX}{max(numbers, default=0) + 1}.ckpt")


def _remove(path: str) -> None:
    import shutil

    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)  # a DeepSpeed checkpoint is a directory
    else:
        try:
            os.remove(path)
        except OSError:
            pass


def slurm_job_id(env=None) -> Optional[str]:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for an array task, else the job id."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue(env=None) -> bool:
    """``scontrol requeue`` this job (rank 0, after the run has shut down). False (with the manual command printed)
    when it could not be done."""
    job = slurm_job_id(env)
    if not job:
        print("lift3d: pre-empted outside a SLURM job: not requeued; resume with --ckpt_path auto", flush=True)
        return False
    cmd = ["scontrol", "requeue", job]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        ok, why = proc.returncode == 0, (proc.stderr or proc.stdout).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        ok, why = False, str(exc)
    if ok:
        print(f"lift3d: requeued SLURM job {job}; it resumes from the pre-emption checkpoint", flush=True)
    else:
        print(f"lift3d: `{' '.join(cmd)}` failed ({why}); requeue it by hand, or resubmit: the run resumes with "
              "--ckpt_path auto", file=sys.stderr, flush=True)
    return ok


def checkpoint_step(path: str) -> int:
    """``global_step`` recorded in a Lightning checkpoint file or DeepSpeed checkpoint directory, read as tensors and
    plain data only (:func:`lightning_modules.launch.checkpoints.check_checkpoint`; tensors memory-mapped, not
    loaded); -1 when it cannot be read that way."""
    from lightning_modules.launch.checkpoints import CheckpointError, check_checkpoint
    from lightning_modules.launch.checkpoints import checkpoint_step as step_of

    try:
        step = step_of(check_checkpoint(path))
    except CheckpointError:
        return -1
    return -1 if step is None else step


class ResumeError(RuntimeError):
    """``--ckpt_path auto`` found checkpoints of the run but none it can resume from (the message lists them)."""


def resume_candidates(run_dir: str, checkpoint_dirs: list[str]) -> list[tuple[str, int]]:
    """(path, kind) of every checkpoint the run writes: pre-emption checkpoints ``<run_dir>/hpc_ckpt_<n>.ckpt``
    (kind 1) and every ``*.ckpt`` (file or ZeRO directory) in the ModelCheckpoint directories — ``last*.ckpt``,
    ``epoch=…-step=….ckpt`` or the callback's own file names (kind 0)."""
    candidates = {p: 1 for p in _hpc_checkpoints(run_dir)}
    for d in checkpoint_dirs:
        for p in sorted(glob.glob(os.path.join(d, "*.ckpt"))):
            candidates.setdefault(p, 0)
    return [(p, kind) for p, kind in candidates.items() if os.path.exists(p)]


def _resumable(path: str) -> tuple[int, bool, Optional[str]]:
    """(global step, whether it holds the optimizer state, None) for a checkpoint a fit can continue from, else
    (-1, False, why not)."""
    from lightning_modules.launch.checkpoints import CheckpointError, check_checkpoint, zero_files
    from lightning_modules.launch.checkpoints import checkpoint_step as step_of

    try:
        state = check_checkpoint(path)
    except CheckpointError as exc:
        return -1, False, exc.reason
    step = step_of(state)
    if step is None:
        return -1, False, "has no global_step: not a Lightning training checkpoint"
    if os.path.isdir(path):  # ZeRO: one optimizer shard per data-parallel rank, or the save was cut short
        shards = sum(f.name.endswith("optim_states.pt") for f in zero_files(path))
        ranks = state.get("dp_world_size")
        if isinstance(ranks, int) and shards != ranks:
            return -1, False, f"incomplete DeepSpeed checkpoint: {shards} of {ranks} optimizer shard(s)"
        return step, True, None
    return step, "optimizer_states" in state, None


def find_resume_checkpoint(run_dir: str, checkpoint_dirs: list[str], report=None) -> Optional[str]:
    """The checkpoint of the run directory that is furthest along (:func:`resume_candidates`, each read as tensors
    only): the highest ``global_step``; at equal steps a pre-emption checkpoint (the exact state at the stop) wins
    over the others, then the newer file. None when the run has no checkpoint (a fresh start). Candidates that cannot
    be resumed from are skipped and named through ``report(message)``; when there are candidates and none can be
    resumed from, :class:`ResumeError` lists them (starting fresh would overwrite them)."""
    scored, skipped = [], []
    for path, kind in resume_candidates(run_dir, checkpoint_dirs):
        step, full, why = _resumable(path)
        if why is None:  # at one step: pre-emption over the others, a full state over weights only, then the newer
            scored.append((step, kind, full, os.path.getmtime(path), path))
        else:
            skipped.append(f"{path}: {why}")
    if not scored and skipped:
        raise ResumeError(f"--ckpt_path auto: the run directory {run_dir} has checkpoints but none can be resumed "
                          f"from, and starting fresh would overwrite them:\n  - " + "\n  - ".join(skipped) +
                          "\nmove them aside to start the run afresh, or pass --ckpt_path with a checkpoint to "
                          "resume from")
    if skipped and report is not None:
        report("--ckpt_path auto: skipped " + "; ".join(skipped))
    return max(scored)[-1] if scored else None


def slurm_detected() -> bool:
    """Lightning's own test: a SLURM job whose processes srun started (not an interactive allocation)."""
    return SLURMEnvironment.detect()
