"""The launch check, resume selection, pre-emption and W&B run bookkeeping of ``lift3d`` (no cluster needed here;
tests/slurm runs the same code under a real SLURM job)."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
import torch

from lightning_modules.launch import cluster, signals, tracking

SLURM_2x8 = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2", "SLURM_TASKS_PER_NODE": "8(x2)"}


def test_launch_check_accepts_a_matching_allocation_and_reports_the_global_batch():
    plan = cluster.check_launch(2, 8, 8, 1, 128, env=SLURM_2x8)
    assert (plan["world_size"], plan["global_batch_size"], plan["slurm_tasks_per_node"]) == (16, 128, [8, 8])
    assert cluster.check_launch(16, "8", 8, 1, 1024, env={})["global_batch_size"] == 1024  # outside SLURM


@pytest.mark.parametrize("devices,nodes,env,fix", [
    (4, 2, SLURM_2x8, "--ntasks-per-node=4"),  # the Lightning #20391 case: tasks per node != devices
    (8, 1, SLURM_2x8, "--trainer.num_nodes=2"),
    (2, 1, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "1", "SLURM_TASKS_PER_NODE": "1(x2)"},
     "--trainer.devices=1"),
    ("auto", 2, SLURM_2x8, "--trainer.devices=8"),
])
def test_launch_check_names_the_fix_for_a_mismatched_allocation(devices, nodes, env, fix):
    with pytest.raises(cluster.LaunchError) as err:
        cluster.check_launch(nodes, devices, 8, 1, None, env=env)
    assert fix in str(err.value)


def test_launch_check_rejects_a_global_batch_the_config_does_not_say():
    with pytest.raises(cluster.LaunchError, match=r"= 512, but the config says global_batch_size: 1024"):
        cluster.check_launch(8, 8, 8, 1, 1024, env={})
    assert cluster.check_launch(8, 8, 8, 2, 1024, env={})["global_batch_size"] == 1024  # accumulation counts


def test_rank_zero_is_read_from_each_launchers_environment():
    assert cluster.is_rank_zero_process({"SLURM_PROCID": "0"})
    assert not cluster.is_rank_zero_process({"SLURM_PROCID": "3"})
    assert not cluster.is_rank_zero_process({"RANK": "1", "SLURM_PROCID": "0"})
    assert not cluster.is_rank_zero_process({"LOCAL_RANK": "1"})
    assert cluster.is_rank_zero_process({})


def test_requeue_targets_the_array_task_not_the_whole_array():
    array_task = {"SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "2"}
    assert cluster.slurm_job_id(array_task) == "10_2"
    assert cluster.slurm_job_id({"SLURM_JOB_ID": "12"}) == "12"


def _save(path, step):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.zeros(2)}}, path)


def test_resume_picks_the_furthest_checkpoint_and_prefers_the_preemption_one_at_a_tie(tmp_path):
    run, ckpts = str(tmp_path), str(tmp_path / "checkpoints")
    assert cluster.find_resume_checkpoint(run, [ckpts]) is None
    _save(f"{ckpts}/last.ckpt", 10)
    _save(f"{run}/hpc_ckpt_1.ckpt", 7)
    assert cluster.find_resume_checkpoint(run, [ckpts]) == f"{ckpts}/last.ckpt"
    _save(f"{run}/hpc_ckpt_2.ckpt", 10)  # pre-empted at the step last.ckpt was also written at
    os.utime(f"{run}/hpc_ckpt_2.ckpt", (1, 1))  # even when older on disk
    assert cluster.find_resume_checkpoint(run, [ckpts]) == f"{run}/hpc_ckpt_2.ckpt"
    with open(f"{ckpts}/last-v1.ckpt", "wb") as f:  # a truncated file is not a candidate
        f.write(b"PK\x03\x04 truncated")
    _save(f"{ckpts}/last-v2.ckpt", 11)
    assert cluster.find_resume_checkpoint(run, [ckpts]) == f"{ckpts}/last-v2.ckpt"


@pytest.mark.parametrize("states", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"])
def test_the_step_of_a_deepspeed_checkpoint_directory_is_read_for_zero2_and_zero3(tmp_path, states):
    ckpt = tmp_path / "hpc_ckpt_1.ckpt"  # the layout Lightning's DeepSpeedStrategy writes (tag "checkpoint")
    _save(str(ckpt / "checkpoint" / states), 12)
    (ckpt / "latest").write_text("checkpoint")
    assert cluster.checkpoint_step(str(ckpt)) == 12
    assert cluster.find_resume_checkpoint(str(tmp_path), []) == str(ckpt)
    (ckpt / "latest").unlink()
    assert cluster.checkpoint_step(str(ckpt)) == -1


class _Steps(L.LightningModule):
    def __init__(self, signal_at: int):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.signal_at = signal_at

    def training_step(self, batch, batch_idx):
        if self.global_step == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)  # what `sbatch --signal=USR1@N` / `scancel -s USR1` deliver
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_preemption_checkpoints_at_the_step_boundary_and_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(signals, "_received", {})
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        callback = cluster.Preemption(requeue=False)
        _save(str(tmp_path / "hpc_ckpt_1.ckpt"), 0)  # an older pre-emption checkpoint of the same run
        trainer = L.Trainer(max_steps=50, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            default_root_dir=str(tmp_path), callbacks=[callback], accelerator="cpu")
        data = torch.utils.data.DataLoader(torch.randn(64, 2), batch_size=4)
        trainer.fit(_Steps(signal_at=5), data)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert callback.preempted and trainer.global_step == 6 == callback.saved_step  # stopped after that step
    assert callback.saved_path == str(tmp_path / "hpc_ckpt_2.ckpt")
    assert not (tmp_path / "hpc_ckpt_1.ckpt").exists(), "the older pre-emption checkpoint is removed"
    assert cluster.checkpoint_step(callback.saved_path) == 6
    assert cluster.find_resume_checkpoint(str(tmp_path), []) == callback.saved_path


def test_wandb_goes_offline_only_without_a_key(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.org login a password b\n")
    env = {"NETRC": str(netrc)}
    mode, reason = tracking.wandb_mode(env)
    assert mode == "offline" and "no W&B API key" in reason
    assert tracking.wandb_mode({**env, "WANDB_API_KEY": "x" * 40}) == ("online", None)
    assert tracking.wandb_mode({**env, "WANDB_MODE": "offline", "WANDB_API_KEY": "x" * 40}) == ("offline", None)
    assert tracking.wandb_mode({**env, "WANDB_MODE": "online"}) == ("online", None)  # an explicit choice is kept
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert tracking.wandb_mode(env) == ("online", None)


def test_a_wandb_login_netrc_entry_puts_training_and_evaluation_online(tmp_path, monkeypatch):
    """`wandb login` writes ~/.netrc, not WANDB_API_KEY: `lift3d fit` and `lift3d evaluate` both go online with it
    (evaluation used to look at the key only and stayed offline), and both go offline without it."""
    from lightning_modules.evaluation.cli import parse_args

    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(netrc))
    command = ["--ckpt", "last.ckpt", "--shards", "eval24"]
    assert tracking.wandb_mode() == ("online", None)  # what LightningCLI's _prepare_wandb asks
    assert parse_args(command).wandb_mode == "online"
    assert parse_args([*command, "--wandb-mode", "disabled"]).wandb_mode == "disabled"  # the flag wins
    netrc.write_text("machine example.org login a password b\n")
    assert tracking.wandb_mode()[0] == "offline" and parse_args(command).wandb_mode == "offline"


def test_the_wandb_run_id_is_kept_for_a_resumed_run_only(tmp_path):
    first, reused = tracking.run_id(str(tmp_path), resuming=False, write=True)
    assert not reused and (tmp_path / tracking.RUN_ID_FILE).read_text().strip() == first
    assert tracking.run_id(str(tmp_path), resuming=True, write=True) == (first, True)
    other, reused = tracking.run_id(str(tmp_path), resuming=False, write=False)  # not rank 0: nothing written
    assert not reused and other != first and (tmp_path / tracking.RUN_ID_FILE).read_text().strip() == first
    fresh, _ = tracking.run_id(str(tmp_path), resuming=False, write=True)  # a fresh start gets a new run
    assert fresh != first and tracking.run_id(str(tmp_path), True, False) == (fresh, True)


def test_git_state_names_the_commit_of_this_checkout():
    state = tracking.git_state()
    if state["commit"] == "unknown":
        pytest.skip("not running from a git checkout")
    assert len(state["commit"]) == 40 and int(state["commit"], 16) >= 0
