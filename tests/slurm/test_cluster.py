"""The local SLURM cluster itself: jobs run with several tasks, impossible requests fail fast, waits never hang."""

from __future__ import annotations

import time

import pytest

from tests.slurm.cluster import SlurmError

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]


def test_srun_job_runs_two_tasks(slurm_cluster, tmp_path):
    out = tmp_path / "srun-%j.out"
    script = "#!/bin/bash\nsrun bash -c 'echo \"task $SLURM_PROCID of $SLURM_NTASKS on $(hostname)\"'\n"
    job = slurm_cluster.sbatch(["--ntasks=2", "--cpus-per-task=1", f"--output={out}", "--time=2"], script)
    result = slurm_cluster.wait(job, timeout=60)
    text = result.output()
    assert result.ok, f"job {job} ended {result.state} exit {result.exit_code}:\n{text}"
    lines = sorted(line.split(" on ")[0] for line in text.splitlines() if line.startswith("task "))
    assert lines == ["task 0 of 2", "task 1 of 2"], text


def test_exit_code_of_a_failed_job_is_reported(slurm_cluster, tmp_path):
    job = slurm_cluster.sbatch([f"--output={tmp_path / 'fail-%j.out'}", "--time=1"],
                               "#!/bin/bash\necho about to fail\nexit 3\n")
    result = slurm_cluster.wait(job, timeout=60)
    assert (result.state, result.exit_code) == ("FAILED", 3), result.record
    assert "about to fail" in result.output()


def test_too_many_cpus_is_rejected_at_submission(slurm_cluster):
    start = time.monotonic()
    with pytest.raises(SlurmError, match="More processors requested than permitted"):
        slurm_cluster.sbatch([f"--cpus-per-task={slurm_cluster.cpus + 1}"], "#!/bin/bash\ntrue\n")
    assert time.monotonic() - start < 20, "EnforcePartLimits=ALL should reject at once, not leave the job pending"
    assert slurm_cluster.run(["squeue", "-h"]).stdout.strip() == "", "the rejected job must not be queued"


def test_wait_times_out_with_the_jobs_output(slurm_cluster, tmp_path):
    job = slurm_cluster.sbatch([f"--output={tmp_path / 'slow-%j.out'}", "--time=2"],
                               "#!/bin/bash\necho started-and-sleeping\nsleep 120\n")
    try:
        # wait until it runs and has written its line, then a short wait must raise (and show that line)
        log, deadline = tmp_path / f"slow-{job}.out", time.monotonic() + 30
        while not (log.exists() and "started-and-sleeping" in log.read_text()):
            assert time.monotonic() < deadline, f"the sleeping job never started: {slurm_cluster.diagnostics()}"
            time.sleep(0.2)
        with pytest.raises(SlurmError, match=r"(?s)did not finish within 1 s.*RUNNING.*started-and-sleeping"):
            slurm_cluster.wait(job, timeout=1)
    finally:
        slurm_cluster.run(["scancel", job])
    result = slurm_cluster.wait(job, timeout=60)
    assert result.state == "CANCELLED", result.record
