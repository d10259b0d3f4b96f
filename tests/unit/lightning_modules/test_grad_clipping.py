"""One gradient norm a step: ReconstructionModule logs the pre-clipping total 2-norm as train/grad_norm and clips with
that same norm, exactly as Lightning's clipping (``clip_grad_norm_``) would; and the Adam implementation it picks."""

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

import lightning_modules.base
from lightning_modules.base import ReconstructionModule, total_grad_norm


class Steep(ReconstructionModule):
    """A linear fit whose gradients are large (norm ≫ 1), so clipping acts every step."""

    def __init__(self, seed: int = 0, clip_here: bool = True, mesh_resolution: int = 8, mesh_format: str = "glb",
                 predict_dir: str = "predictions"):
        super().__init__()
        self.save_settings()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.norms: list[float] = []
        self.clipped: list[list[torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        self.seed_step()
        x = torch.randn(32, 4)
        return self.log_train_terms({"loss": (self.net(x) - 100 * x.sum(1, keepdim=True)).pow(2).mean()}, 32)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.hparams.clip_here:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        else:  # Lightning's own: clip_grad_norm_ through the precision plugin
            self.norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in self.net.parameters()])))
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.clipped.append([p.grad.clone() for p in self.net.parameters()])

    def evaluate_batch(self, batch, stage):
        pass

    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=1e-2, **self.adam_implementation())


class Logged(L.Callback):
    def __init__(self):
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if "train/grad_norm" in trainer.callback_metrics:  # Lightning's own clipping (clip_here=False) logs none
            self.norms.append(float(trainer.callback_metrics["train/grad_norm"]))


def _fit(module, tmp_path, clip=1.0):
    logged = Logged()
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=clip,
                        default_root_dir=str(tmp_path), callbacks=[logged])
    trainer.fit(module, torch.utils.data.DataLoader(range(4), batch_size=None))
    return logged.norms


def test_the_logged_norm_is_the_one_clipping_uses_and_clipping_is_lightnings(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ours, lightnings = Steep(clip_here=True), Steep(clip_here=False)
    lightnings.load_state_dict(copy.deepcopy(ours.state_dict()))
    calls = {"n": 0}

    def counting(*args, **kwargs):
        calls["n"] += 1
        return total_grad_norm(*args, **kwargs)

    monkeypatch.setattr(lightning_modules.base, "total_grad_norm", counting)
    logged = _fit(ours, tmp_path)
    assert calls["n"] == 4  # one norm a step
    monkeypatch.setattr(lightning_modules.base, "total_grad_norm", total_grad_norm)
    _fit(lightnings, tmp_path)
    assert min(lightnings.norms) > 1.0  # the clipping acted every step
    assert logged == pytest.approx(lightnings.norms, rel=1e-6)
    for a, b in zip(ours.clipped, lightnings.clipped):
        for ga, gb in zip(a, b):
            torch.testing.assert_close(ga, gb)


def test_without_a_clip_value_the_norm_is_still_logged_and_gradients_are_untouched(tmp_path):
    torch.manual_seed(0)
    module = Steep()
    logged = _fit(module, tmp_path, clip=None)
    assert len(logged) == 4 and min(logged) > 1.0
    assert torch.nn.utils.get_total_norm(module.clipped[-1]) == pytest.approx(logged[-1], rel=1e-6)


def test_adam_implementation_is_fused_except_under_fp16_scaling():
    module = Steep()
    assert module.adam_implementation() == {"fused": True}  # no trainer: fp32
    module.trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, barebones=True)
    assert module.adam_implementation() == {"fused": True}  # bf16 needs no gradient scaler
    scaled = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    module.trainer = L.Trainer(accelerator="cpu", plugins=[scaled], logger=False, barebones=True)
    assert module.adam_implementation() == {"foreach": True}


def test_total_grad_norm_is_the_2_norm_at_least_as_close_to_fp64_as_torchs_and_keeps_nan_and_inf():
    torch.manual_seed(0)
    grads = [torch.randn(3072, 768) * 10, torch.randn(768), torch.randn(16, 4).t()]  # a transposed (strided) one too
    exact = float(torch.nn.utils.get_total_norm([g.double() for g in grads]))
    ours, torchs = float(total_grad_norm(grads)), float(torch.nn.utils.get_total_norm(grads))
    assert abs(ours - exact) <= max(abs(torchs - exact), 1e-6 * exact)
    assert total_grad_norm(grads).dtype == torch.float32
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = [g.clone() for g in grads]
        broken[1][5] = bad
        expected = torch.nn.utils.get_total_norm(broken)
        got = total_grad_norm(broken)
        assert torch.isnan(got) == torch.isnan(expected) and torch.isinf(got) == torch.isinf(expected)
    half = [g.bfloat16() for g in grads]  # other dtypes: torch's own
    assert torch.equal(total_grad_norm(half), torch.nn.utils.get_total_norm(half))
    assert float(total_grad_norm([torch.zeros(3)])) == 0.0
