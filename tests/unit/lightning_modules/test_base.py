"""ReconstructionModule: run-time settings kept out of checkpoints and validated, per-step reseeding, the shared
training logs and val/test dispatch — on a small subclass, and the split of both systems' arguments."""

import inspect

import lightning as L
import pytest
import torch

from configs import MODEL_DIR, load_model_block
from lightning_modules.base import ReconstructionModule
from lightning_modules.lrm import LRMModule
from lightning_modules.one2345 import One2345Module


class Line(ReconstructionModule):
    """y = w·x + b fitted to noisy samples it draws itself (the draws follow seed_step)."""

    RUNTIME = (*ReconstructionModule.RUNTIME, "note")

    def __init__(self, width: int = 3, lr: float = 0.1, seed: int = 0, mesh_resolution: int = 8,
                 mesh_format: str = "glb", predict_dir: str = "predictions", note: str = "run"):
        super().__init__()
        self.save_settings()
        self.net = torch.nn.Linear(width, 1)
        self.evaluated: list[str] = []

    def training_step(self, batch, batch_idx):
        self.seed_step()
        x = torch.randn(8, self.hparams.width)
        loss = (self.net(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        return self.log_train_terms({"loss": loss, "scale": loss.detach() * 0 + 1}, batch_size=8)

    def evaluate_batch(self, batch, stage):
        self.evaluated.append(stage)
        self.log(f"{stage}/zero", 0.0, batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=self.hparams.lr)


def test_runtime_settings_are_attributes_not_hparams():
    module = Line(width=2, predict_dir="out", note="mine")
    assert dict(module.hparams) == {"width": 2, "lr": 0.1, "seed": 0}
    assert (module.mesh_resolution, module.mesh_format, module.predict_dir, module.note) == (8, "glb", "out", "mine")


@pytest.mark.parametrize("cls, config", [(LRMModule, "lrm_tiny.yaml"), (One2345Module, "one2345_tiny.yaml")])
def test_each_system_argument_is_either_checkpointed_or_runtime(cls, config):
    """Every __init__ argument of a system is in its hparams (the checkpoint) or in RUNTIME (an attribute), never both:
    `lift3d predict --ckpt_path ... --model.init_args.predict_dir X` is obeyed because predict_dir is not restored."""
    torch.manual_seed(0)
    module = cls(**load_model_block(MODEL_DIR / config).init_args)
    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert set(module.hparams) | set(cls.RUNTIME) == names
    assert not set(module.hparams) & set(cls.RUNTIME)
    assert {"mesh_resolution", "mesh_format", "predict_dir"} <= set(cls.RUNTIME)
    assert module.mesh_resolution == 64  # the tiny configs' value, as an attribute


def test_set_runtime_validates_and_refuses_model_settings():
    module = Line()
    module.set_runtime(mesh_resolution=16, mesh_format="ply")
    assert (module.mesh_resolution, module.mesh_format) == (16, "ply")
    with pytest.raises(ValueError, match=r"\['lr'\] are not run-time settings of Line; those are \['mesh_resolution'"):
        module.set_runtime(lr=1.0)
    with pytest.raises(ValueError, match="mesh_format 'stl': expected glb, obj or ply"):
        module.set_runtime(mesh_format="stl")
    with pytest.raises(ValueError, match="mesh_resolution must be an integer >= 2, got 1.5"):
        Line(mesh_resolution=1.5)


def test_runtime_settings_picks_them_from_a_model_config():
    init = load_model_block(MODEL_DIR / "lrm_tiny.yaml").init_args
    assert LRMModule.runtime_settings(init) == {"mesh_resolution": 64, "mesh_level": None}
    assert LRMModule.runtime_settings({"lr": 1.0, "turntable": "mp4"}) == {"turntable": "mp4"}


def test_runtime_must_name_init_arguments():
    class Broken(Line):
        RUNTIME = (*Line.RUNTIME, "colour")

        def __init__(self, width: int = 3, lr: float = 0.1, seed: int = 0, mesh_resolution: int = 8,
                     mesh_format: str = "glb", predict_dir: str = "predictions", note: str = "run"):
            ReconstructionModule.__init__(self)
            self.save_settings()

    with pytest.raises(TypeError, match=r"Broken.RUNTIME names \['colour'\], which are not arguments of its __init__"):
        Broken()


def test_seed_step_depends_on_seed_step_and_rank_only():
    """The RNG after seed_step is torch.manual_seed(seed·1000003 + step·1009 + rank): the stored loss curves and the
    resumed runs' ray samples rest on this formula."""
    module = Line(seed=3)
    torch.manual_seed(123)
    module.seed_step()
    drawn = torch.rand(4)
    torch.manual_seed(3 * 1_000_003)
    assert torch.equal(drawn, torch.rand(4))
    Line(seed=4).seed_step()
    assert not torch.equal(drawn, torch.rand(4))


class Metrics(L.Callback):
    def __init__(self):
        self.seen: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def test_training_logs_and_validation_dispatch(tmp_path):
    """train/loss, the other terms, train/grad_norm and train/lr every step; validation and test run evaluate_batch
    under their stage's name; two fits from the same seed give the same losses whatever the global RNG."""
    losses = []
    for global_seed in (0, 1):
        torch.manual_seed(0)
        module, metrics = Line(), Metrics()  # the same initial weights
        L.seed_everything(global_seed)  # a different global RNG: the steps' draws must not depend on it
        data = torch.utils.data.DataLoader([0, 1, 2], batch_size=None)
        trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            default_root_dir=str(tmp_path), callbacks=[metrics])
        trainer.fit(module, data, data)
        trainer.test(module, data, verbose=False)
        assert {"train/loss", "train/scale", "train/grad_norm", "train/lr"} <= set(metrics.seen[-1])
        assert metrics.seen[-1]["train/lr"] == pytest.approx(0.1)
        assert module.evaluated == ["val"] * 3 + ["test"] * 3
        losses.append([m["train/loss"] for m in metrics.seen])
    assert losses[0] == losses[1] and len(set(losses[0])) == 3
