"""Resuming never silently throws work away (issue 14), with real `lift3d fit` runs of the tiny LRM on synthetic
shards (in-process, a few steps each, ModelCheckpoint every 3 steps with save_last):

* a fit that ends between two scheduled saves writes ``last.ckpt`` at its final step (it used to end with the last
  scheduled one: 150 steps saving every 100 kept step 100), and ``--ckpt_path auto`` continues from it exactly as
  an uninterrupted run would;
* a torn ``last.ckpt`` beside an intact ``epoch=…-step=….ckpt``: the resume continues from the intact one (it used to
  print "starting fresh" and overwrite both).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from configs import EXPERIMENT_DIR
from lightning_modules.launch.checkpoints import load_checkpoint
from lightning_modules.launch.cli import main
from tests.unit.datamodules.conftest import write_shards

EVERY = 3
CALLBACKS = ("[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: true, "
             f"enable_version_counter: false, every_n_train_steps: {EVERY}}}}}, "
             "{class_path: lightning_modules.callbacks.ProgressPrinter, init_args: {every_n_steps: 1}}]")


def fit(run, shards, steps: int, capsys=None, *extra) -> str:
    """`lift3d fit` of the tiny experiment for ``steps`` steps in run directory ``run``; what it printed."""
    main(["fit", "--config", str(EXPERIMENT_DIR / "lrm_tiny.yaml"), f"--data.init_args.train_shards={shards}",
          "--data.init_args.val_shards=null", "--data.init_args.target_size=16", "--model.init_args.lpips_weight=0",
          "--model.init_args.warmup_steps=2", "--model.init_args.total_steps=20",  # one schedule for every length
          f"--trainer.max_steps={steps}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={run}",
          f"--trainer.callbacks={CALLBACKS}", *extra])
    if capsys is None:
        return ""
    out = capsys.readouterr()
    return out.out + out.err


def step(path) -> int:
    return int(load_checkpoint(path)["global_step"])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume_shards") / "shards"
    write_shards(out, n_shards=1, per_shard=4)  # 4 objects, batch 2: two steps per epoch
    return out


@pytest.fixture(scope="module")
def five_steps(shards, tmp_path_factory):
    """A 5-step run (saves scheduled at step 3 only; it ends in the middle of its third epoch); kept read-only, tests
    copy it."""
    run = tmp_path_factory.mktemp("five") / "run"
    fit(run, shards, 5)
    return run


def test_last_ckpt_is_written_at_the_step_the_fit_ends_on(five_steps):
    ckpts = five_steps / "checkpoints"
    assert step(ckpts / "last.ckpt") == 5  # was 3: the two steps after the last scheduled save were lost
    (scheduled,) = ckpts.glob("epoch=*-step=3.ckpt")  # the schedule's own file is unchanged
    assert step(scheduled) == 3


def test_resume_from_the_final_last_ckpt_continues_as_an_uninterrupted_run(five_steps, shards, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(five_steps, run)
    said = fit(run, shards, 7, capsys, "--ckpt_path", "auto")
    assert f"--ckpt_path auto: resuming from {run / 'checkpoints' / 'last.ckpt'}" in said
    assert "lift3d: fit starts at step 5 " in said and step(run / "checkpoints" / "last.ckpt") == 7
    fit(tmp_path / "straight", shards, 7, capsys)  # the same 7 steps without a stop
    resumed = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")["state_dict"]
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], msg=key)


def test_a_torn_last_ckpt_resumes_from_the_intact_step_checkpoint(five_steps, shards, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(five_steps, run)
    last = run / "checkpoints" / "last.ckpt"
    with open(last, "r+b") as f:  # the node died while last.ckpt was written
        f.truncate(last.stat().st_size // 2)
    (scheduled,) = (run / "checkpoints").glob("epoch=*-step=3.ckpt")
    said = fit(run, shards, 7, capsys, "--ckpt_path", "auto")
    assert "starting fresh" not in said and f"--ckpt_path auto: resuming from {scheduled}" in said
    assert f"skipped {last}: cannot be read" in said
    assert "lift3d: fit starts at step 3 " in said and step(last) == 7


def test_a_fit_ending_at_max_epochs_resumes_as_an_uninterrupted_run(shards, tmp_path, capsys):
    """The end of a fit by epochs (``last.ckpt`` written when training ends, after the epoch closed): the resumed run
    starts the next epoch with that epoch's data, as the uninterrupted run does."""
    run, epochs = tmp_path / "run", ["--trainer.max_steps=-1"]
    fit(run, shards, -1, capsys, *epochs, "--trainer.max_epochs=2")  # 4 steps; the schedule saved step 3
    assert step(run / "checkpoints" / "last.ckpt") == 4
    said = fit(run, shards, -1, capsys, *epochs, "--trainer.max_epochs=3", "--ckpt_path", "auto")
    assert "lift3d: fit starts at step 4 epoch 2" in said and step(run / "checkpoints" / "last.ckpt") == 6
    fit(tmp_path / "straight", shards, -1, capsys, *epochs, "--trainer.max_epochs=3")
    resumed = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")["state_dict"]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], msg=key)
