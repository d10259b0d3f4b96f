"""The real ``slurm/train_lrm.sh`` on the local SLURM cluster: 1 node, 2 tasks, CPU DDP over gloo, the tiny LRM.

One uninterrupted job is the reference. A second job is pre-empted for real — SIGUSR1 delivered by Slurm to the
job's tasks, as ``#SBATCH --signal`` does — checkpoints, requeues itself, is started again by Slurm and finishes;
its loss at every step must equal the reference's (same step, optimiser, scheduler, data position and ray noise
after the requeue). A third is pre-empted by ``--signal=USR1@N`` before its time limit, sent by Slurm itself. A
fourth asks for more tasks than the trainer has devices and must stop at the launch check.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import time

import pytest

from configs import ROOT
from lightning_modules.launch.cluster import checkpoint_step
from tests.slurm.cluster import SlurmError
from tests.wandb_records import config_keys, run_records

# Idle (2-core CI machine, estimated from the runs below): the slowest test is the time-limit one, ~170 s (first step
# ~20 s, a 3-minute limit signals ~100-130 s in, the requeued run starts ~30 s later); at load 11 on 2 cores
# (2026-12-05) the reference job took 203 s and the pre-emption test 379 s. Hang guard: 4 × 170 s.
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(720)]

SCRIPT = os.path.join(ROOT, "slurm", "train_lrm.sh")
STEPS = 40
STEP_LINE = re.compile(r"^lift3d: step (\d+) epoch \d+ loss ([0-9.]+)", re.M)


def cpu_args(shards, steps=STEPS, devices=2) -> list[str]:
    """The command-line overrides that turn the paper run into this machine's: tiny config, CPU, 2 ranks."""
    return ["--config", "configs/experiments/lrm_tiny.yaml", "--trainer.accelerator=cpu",
            f"--trainer.devices={devices}", "--trainer.num_nodes=1", "--trainer.strategy=ddp",
            f"--data.init_args.train_shards={shards}", "--data.init_args.val_shards=null",
            "--data.init_args.batch_size=1", "--data.init_args.target_crop_size=16", f"--trainer.max_steps={steps}",
            "--trainer.log_every_n_steps=1", f"--global_batch_size={devices}"]


def submit(cluster, tmp_path, shards, sbatch=(), **kw) -> tuple[str, str, str]:
    """sbatch the real script; (job id, its output file, the run directory)."""
    site_env = tmp_path / "site.env"  # the site settings a user copies from slurm/site.env.example
    site_env.write_text(f"LIFT3D_VENV={os.path.join(ROOT, '.venv')}\nLIFT3D_RUNS={tmp_path / 'runs'}\n"
                        "HF_HUB_OFFLINE=1\nunset WANDB_MODE WANDB_API_KEY\n")  # no key: W&B must go offline
    out = tmp_path / "train-%j.out"
    job = cluster.sbatch(["--nodes=1", "--ntasks-per-node=2", "--gres=none", "--cpus-per-task=1", "--mem=4G",
                          "--time=10", f"--output={out}", f"--chdir={tmp_path}", *sbatch],
                         SCRIPT, *cpu_args(shards, **kw),
                         env={"LIFT3D_SITE_ENV": str(site_env), "OMP_NUM_THREADS": "1"})  # 1 CPU, 1 thread per rank
    return job, str(out).replace("%j", job), str(tmp_path / "runs" / "lrm_tiny")


def step_losses(text: str) -> dict[int, list[float]]:
    losses: dict[int, list[float]] = {}
    for step, loss in STEP_LINE.findall(text):
        losses.setdefault(int(step), []).append(float(loss))
    return losses


def read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def wait_for(predicate, what: str, cluster, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SlurmError(f"timed out after {timeout:.0f} s waiting for {what}\n{cluster.diagnostics()}")
        time.sleep(0.25)


def job_field(cluster, job: str, field: str) -> str:
    r = cluster.run(["scontrol", "show", "job", "-o", job], check=False)
    m = re.search(rf"\b{field}=(\S*)", r.stdout)
    return m.group(1) if m else ""


def release_requeued(cluster, job: str, timeout: float = 120) -> None:
    """Slurm holds a requeued job back for a while (EligibleTime ~2 min on): make it eligible a few seconds from now.

    Not ``StartTime=now``: requeueing revokes the job's credential, and slurmd keeps the revocation time in whole
    seconds, so a restart within the same second as the requeue is killed as "Job credential revoked" and never comes
    back (seen on CI: requeued at 20:34:28.263, restarted at 28.499, killed). The hold Slurm sets itself exists for
    this; three seconds is past the revocation's second whatever the scheduler's tick."""
    wait_for(lambda: job_field(cluster, job, "Restarts") == "1" and job_field(cluster, job, "JobState") == "PENDING",
             f"job {job} to be requeued", cluster, timeout=timeout)
    cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now+3"])


@pytest.fixture(scope="module")
def reference(slurm_cluster, lrm_shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train-reference")
    job, out, run_dir = submit(slurm_cluster, tmp, lrm_shards["dir"])
    result = slurm_cluster.wait(job, timeout=300)
    text = read(out)
    assert result.ok, f"job {job} ended {result.state} exit {result.exit_code}:\n{text[-6000:]}"
    return {"job": job, "text": text, "run_dir": run_dir, "losses": step_losses(text)}


def test_train_lrm_script_trains_on_two_ranks_and_writes_a_checkpoint(reference):
    text, run_dir = reference["text"], reference["run_dir"]
    assert "lift3d: preflight ok: 1 node(s) × 2 device(s) = world size 2; global batch 2" in text
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    assert "distributed_backend=gloo" in text and "world size 2 (1 node(s) × 2 device(s), DDPStrategy)" in text
    losses = reference["losses"]
    assert sorted(losses) == list(range(1, STEPS + 1)) and all(len(v) == 1 for v in losses.values())
    curve = [losses[s][0] for s in range(1, STEPS + 1)]
    first, last = sum(curve[:10]) / 10, sum(curve[-10:]) / 10
    print(f"loss: mean of steps 1-10 {first:.5f}, of steps {STEPS - 9}-{STEPS} {last:.5f}")
    # it trains: on the framed rigs (objects at about half the size, most pixels background learnt in the first steps)
    # lrm_tiny's loss starts lower and falls slower over 40 steps: measured 0.0391 → 0.0376 (0.96×; 0.9× was the
    # bound on the old rigs, where the mean of steps 1-10 was ~0.09)
    assert last < 0.98 * first, curve
    assert checkpoint_step(os.path.join(run_dir, "checkpoints", "last.ckpt")) == STEPS
    assert "train: finished with status 0" in text


def test_training_logs_to_an_offline_wandb_run_with_config_and_commit(reference):
    text, run_dir = reference["text"], reference["run_dir"]
    assert "W&B runs offline: no W&B API key" in text
    run_id = open(os.path.join(run_dir, "wandb_run_id")).read().strip()
    dirs = glob.glob(os.path.join(run_dir, "wandb", f"offline-run-*-{run_id}"))
    assert len(dirs) == 1, os.listdir(os.path.join(run_dir, "wandb"))
    assert f"wandb sync {dirs[0]}" in text  # the sync command, printed at the end
    records = run_records(dirs[0])
    assert records["run"][0].run.run_id == run_id
    keys = config_keys(records)
    assert "lift3d" in keys and "lr" in keys  # the resolved config (lift3d: config, git, slurm) and the hparams
    lift3d = next(r for r in records["config"] for i in r.config.update if i.key == "lift3d")
    logged = json.loads(next(i.value_json for i in lift3d.config.update if i.key == "lift3d"))
    commit = os.popen(f"git -C {ROOT} rev-parse HEAD").read().strip()
    assert logged["git"]["commit"] == commit and logged["slurm"]["job_id"] == reference["job"]
    assert logged["config"]["trainer"]["max_steps"] == STEPS and logged["launch"]["world_size"] == 2
    assert records.get("stats"), "no system metrics were recorded"
    history = {i.key or "/".join(i.nested_key) for r in records.get("history", []) for i in r.history.item}
    assert {"train/loss", "perf/samples_per_s"} <= history, history


def test_preempted_job_requeues_and_resumes_where_it_stopped(slurm_cluster, lrm_shards, reference, tmp_path):
    job, out, run_dir = submit(slurm_cluster, tmp_path, lrm_shards["dir"])
    wait_for(lambda: os.path.exists(out) and 10 in step_losses(read(out)), "step 10", slurm_cluster)
    slurm_cluster.run(["scancel", "--signal=USR1", job])  # to the job's tasks, as `#SBATCH --signal` does
    release_requeued(slurm_cluster, job)
    result = slurm_cluster.wait(job, timeout=300)
    text = read(out)
    assert result.ok, f"job {job} ended {result.state} exit {result.exit_code}:\n{text[-6000:]}"
    first, _, second = text.partition(f"job {job} restart 1 ")
    assert second, f"the job never ran a second time:\n{text[-6000:]}"

    saved = re.search(r"lift3d: pre-empted at step (\d+) \(epoch \d+\): saved (\S+)", first)
    assert saved, first[-4000:]
    step, path = int(saved.group(1)), saved.group(2)
    assert step >= 10 and path == os.path.join(run_dir, "hpc_ckpt_1.ckpt") and checkpoint_step(path) == step
    assert f"lift3d: requeued SLURM job {job}" in first
    assert f"--ckpt_path auto: resuming from {path}" in second
    assert f"lift3d: fit starts at step {step} epoch" in second

    before, after = step_losses(first), step_losses(second)
    assert sorted(before) == list(range(1, step + 1)) and sorted(after) == list(range(step + 1, STEPS + 1))
    resumed = {s: v[0] for part in (before, after) for s, v in part.items()}
    expected = {s: v[0] for s, v in reference["losses"].items()}
    mismatched = {s: (resumed[s], expected[s]) for s in expected if abs(resumed[s] - expected[s]) > 1e-5}
    assert not mismatched, f"the loss curve across the requeue differs from the uninterrupted run: {mismatched}"

    run_id = open(os.path.join(run_dir, "wandb_run_id")).read().strip()
    assert f"W&B run {run_id} (continued" in second  # the same W&B run, resumed
    dirs = sorted(glob.glob(os.path.join(run_dir, "wandb", f"offline-run-*-{run_id}")))
    assert len(dirs) == 2 and f"wandb sync {' '.join(dirs)}" in second
    assert checkpoint_step(os.path.join(run_dir, "checkpoints", "last.ckpt")) == STEPS


def minutes(run_time: str) -> float:
    """Slurm's ``RunTime`` ([D-]HH:MM:SS or MM:SS) in minutes."""
    days, _, clock = run_time.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    h, m, sec = ([0] * (3 - len(parts)) + parts)[-3:]
    return (int(days or 0) * 24 + h) * 60 + m + sec / 60


def test_sbatch_signal_before_the_time_limit_preempts_and_requeues(slurm_cluster, lrm_shards, tmp_path):
    """``--signal=USR1@80``: Slurm itself signals 80 s before the time limit (its timer runs every few tens of seconds;
    the margin leaves time to checkpoint); the run checkpoints, requeues and the next start resumes at the saved step
    (then the test cancels it: it would be signalled again). The limit is set to 2 minutes past the run time once the
    run trains (``scontrol update TimeLimit``), so a slow start on a busy machine cannot use up the time before the
    signal: the signal comes 40–70 s into training, whatever the start cost."""
    job, out, run_dir = submit(slurm_cluster, tmp_path, lrm_shards["dir"], sbatch=["--time=30", "--signal=USR1@80"],
                               steps=100000)
    try:
        wait_for(lambda: os.path.exists(out) and 1 in step_losses(read(out)), "the first training step",
                 slurm_cluster, timeout=300)
        limit = math.ceil(minutes(job_field(slurm_cluster, job, "RunTime"))) + 2
        slurm_cluster.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={limit}"])
        release_requeued(slurm_cluster, job, timeout=300)
        wait_for(lambda: "fit starts at step" in read(out).partition(f"job {job} restart 1 ")[2],
                 "the requeued run to start training", slurm_cluster, timeout=300)
    finally:
        slurm_cluster.run(["scancel", job], check=False)
    first, _, second = read(out).partition(f"job {job} restart 1 ")
    saved = re.search(r"lift3d: pre-empted at step (\d+) \(epoch \d+\): saved (\S+)", first)
    assert saved and f"lift3d: requeued SLURM job {job}" in first, first[-4000:]
    assert f"lift3d: fit starts at step {saved.group(1)} epoch" in second, second[-4000:]


def test_launch_check_stops_a_job_whose_tasks_do_not_match_the_trainer(slurm_cluster, lrm_shards, tmp_path):
    job, out, _ = submit(slurm_cluster, tmp_path, lrm_shards["dir"], devices=1)  # 2 tasks per node, 1 device
    result = slurm_cluster.wait(job, timeout=120)
    text = read(out)
    assert (result.state, result.exit_code) == ("FAILED", 2), text
    assert "launch check failed" in text and "--ntasks-per-node=1 or pass --trainer.devices=2" in text
    assert "no training process was started" in text and "Initializing distributed" not in text
