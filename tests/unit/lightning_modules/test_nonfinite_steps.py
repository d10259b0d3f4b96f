"""Non-finite steps (issue 14): a training step whose loss or gradient norm is NaN/inf is dropped — no optimiser
update, with gradient clipping on — and counted (``train/skipped_steps``); ``max_nonfinite_steps`` of them in a row
stop the run with an error naming the step; DDP ranks take the same decision. Before, a NaN batch was applied: the
weights became NaN."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from configs import MODEL_DIR, load_model_block
from datamodules.shard_datamodule import ShardDataModule
from datamodules.views import finalize
from lightning_modules.base import NonFiniteTrainingError, ReconstructionModule
from lightning_modules.lrm import LRMModule
from tests.unit.datamodules.conftest import write_shards


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One lrm_tiny training batch (2 objects, 2 target views of 32², input 64²) from synthetic shards."""
    out = tmp_path_factory.mktemp("shards")
    write_shards(out, n_shards=1, per_shard=2)
    dm = ShardDataModule(str(out), batch_size=2, num_workers=0, shuffle_buffer=0, resampled=False,
                         num_target_views=2, include_input_in_targets=True, input_size=64, target_size=32)
    dm.setup("fit")
    return finalize(next(iter(dm.train_dataloader())))


def _nan_target(batch: dict) -> dict:
    bad = dict(batch)
    bad["target_images"] = torch.full_like(batch["target_images"], float("nan"))
    return bad


class Weights(L.Callback):
    """The network's weights before and after each batch, and what was logged."""

    def __init__(self):
        self.before, self.after, self.skipped = [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before.append([p.detach().clone() for p in pl_module.net.parameters()])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append([p.detach().clone() for p in pl_module.net.parameters()])
        self.skipped.append(float(trainer.callback_metrics["train/skipped_steps"]))


def _fit(module, batches, tmp_path, callbacks=()):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0, default_root_dir=str(tmp_path), callbacks=list(callbacks))
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b))
    return trainer


def _tiny(**settings) -> LRMModule:
    return LRMModule(**{**load_model_block(MODEL_DIR / "lrm_tiny.yaml").init_args, **settings})


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_nan_loss_step_is_skipped_weights_unchanged_and_counted(batch, tmp_path, caplog):
    module, seen = _tiny(), Weights()
    _fit(module, [batch, _nan_target(batch), batch], tmp_path, [seen])
    assert not _same(seen.before[0], seen.after[0])  # a good step moves the weights
    assert _same(seen.before[1], seen.after[1])  # the NaN step: no update at all (AdamW's weight decay included)
    assert not _same(seen.before[2], seen.after[2])  # and training goes on
    assert seen.skipped == [0.0, 1.0, 1.0]
    assert all(torch.isfinite(p).all() for p in module.net.parameters())
    assert any("optimiser step 1 skipped" in r.getMessage() for r in caplog.records)


class InfGradient(L.Callback):
    """An inf in one gradient on the given batches (the loss stays finite): the gradient-norm path."""

    def __init__(self, batches):
        self.batches, self.batch_idx = set(batches), -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_idx = batch_idx

    def on_after_backward(self, trainer, pl_module):
        if self.batch_idx in self.batches:
            next(p for p in pl_module.net.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")


def test_an_inf_gradient_norm_is_skipped_before_clipping(batch, tmp_path):
    module, seen = _tiny(), Weights()
    _fit(module, [batch, batch], tmp_path, [seen, InfGradient({0})])
    assert _same(seen.before[0], seen.after[0])
    assert not _same(seen.before[1], seen.after[1])
    assert seen.skipped == [1.0, 1.0]


def test_n_nonfinite_steps_in_a_row_stop_the_run_naming_the_step(batch, tmp_path):
    module = _tiny(max_nonfinite_steps=3)  # a run-time setting (model.init_args), kept out of checkpoints
    assert module.max_nonfinite_steps == 3 and "max_nonfinite_steps" not in module.hparams
    bad = _nan_target(batch)
    with pytest.raises(NonFiniteTrainingError, match=r"stopped at optimiser step 3: 3 steps in a row \(steps 1..3\)"):
        _fit(module, [batch, bad, bad, bad, batch], tmp_path)


def test_a_good_step_resets_the_run_of_nonfinite_steps(batch, tmp_path):
    module = _tiny(max_nonfinite_steps=2)
    bad = _nan_target(batch)
    trainer = _fit(module, [bad, batch, bad, batch], tmp_path)
    assert trainer.global_step == 4 and float(trainer.callback_metrics["train/skipped_steps"]) == 2.0


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_max_nonfinite_steps_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="max_nonfinite_steps must be an integer >= 1"):
        _tiny(max_nonfinite_steps=value)


class Line(ReconstructionModule):
    """A linear fit; on rank 1 the loss gets a constant +inf (its gradients stay finite), so only the all-reduced
    decision makes rank 0 skip the step too."""

    def __init__(self, out: str = "", seed: int = 0, mesh_resolution: int = 8, mesh_format: str = "glb",
                 predict_dir: str = "predictions"):
        super().__init__()
        self.save_settings()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        self.seed_step()
        x = torch.randn(8, 4)
        loss = (self.net(x) - x.sum(1, keepdim=True)).pow(2).mean()
        if self.global_rank == 1 and batch_idx == 0:
            loss = loss + torch.tensor(float("inf"))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        torch.save([p.detach().clone() for p in self.net.parameters()],
                   f"{self.hparams.out}/rank{self.global_rank}-batch{batch_idx}.pt")

    def evaluate_batch(self, batch, stage):
        pass

    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=1e-2)


def test_ddp_ranks_agree_to_skip(tmp_path):
    torch.manual_seed(0)
    module = Line(out=str(tmp_path))
    initial = [p.detach().clone() for p in module.net.parameters()]
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0, default_root_dir=str(tmp_path))
    trainer.fit(module, torch.utils.data.DataLoader(range(4), batch_size=None))
    w = {(r, b): torch.load(tmp_path / f"rank{r}-batch{b}.pt") for r in (0, 1) for b in (0, 1)}
    assert _same(w[0, 0], initial) and _same(w[1, 0], initial)  # both ranks skipped step 0
    assert _same(w[0, 1], w[1, 1]) and not _same(w[0, 1], initial)  # and stepped together on step 1


def test_fused_adamw_drops_the_step_itself_and_the_host_reads_it_at_its_cadence(batch, tmp_path, caplog):
    """With fused AdamW the drop costs no host sync (the flag goes to the optimiser as ``found_inf``); the count,
    the warning and the stop are read every ``nonfinite_check_every`` steps (on a GPU: ``log_every_n_steps``).
    Steps after ``max_nonfinite_steps`` in a row are dropped until that read, so the weights are those the error
    names: here steps 0 and 1 are NaN, step 2 is good but past the stop, and the read at step 3 stops the run."""
    module, seen = _tiny(max_nonfinite_steps=2), Weights()
    module.nonfinite_check_every = 4
    bad = _nan_target(batch)
    with pytest.raises(NonFiniteTrainingError, match=r"stopped at optimiser step 1: 2 steps in a row \(steps 0..1\)"):
        _fit(module, [bad, bad, batch, batch, batch], tmp_path, [seen])
    assert module.trainer.optimizers[0].defaults["fused"]
    assert len(seen.after) == 3 and all(_same(seen.before[0], after) for after in seen.after)
    assert seen.skipped == [1.0, 2.0, 3.0]  # the device-side count, logged every step without a host read
    assert not hasattr(module.trainer.optimizers[0], "found_inf")  # removed after each step


def test_fused_adamw_dropped_steps_between_reads_are_warned_about_at_the_read(batch, tmp_path, caplog):
    module, seen = _tiny(), Weights()
    module.nonfinite_check_every = 50  # no read during the run: the end of training reads
    _fit(module, [batch, _nan_target(batch), batch], tmp_path, [seen])
    assert _same(seen.before[1], seen.after[1]) and not _same(seen.before[2], seen.after[2])
    assert seen.skipped == [0.0, 1.0, 1.0]
    assert any("1 optimiser steps skipped among steps 0..2" in r.getMessage() for r in caplog.records)
