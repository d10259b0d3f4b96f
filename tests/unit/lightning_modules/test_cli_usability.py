"""What a new user meets on the `lift3d` command line (issue 16): progress lines while training, `predict` preparing
images as the checkpoint's training inputs were and opening no W&B run, `--help` listing every command, and the
render CLI's offline Objaverse error as one line."""

import io
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from configs import ROOT
from lightning_modules.base import ReconstructionModule
from lightning_modules.launch.cli import Lift3dCLI, main
from tests.unit.datamodules.conftest import write_shards
from tests.unit.lightning_modules.conftest import field_median

TINY = str(ROOT / "configs" / "experiments" / "lrm_tiny.yaml")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Two steps of `lift3d fit` on lrm_tiny (64 px inputs, shards as rendered) → (checkpoint, fit's stdout)."""
    root = tmp_path_factory.mktemp("fit")
    write_shards(root / "shards", n_shards=1, per_shard=2)
    run = root / "run"
    capture = pytest.MonkeyPatch()  # module scope: no capsys
    out = io.StringIO()
    capture.setattr(sys, "stdout", out)
    try:
        main(["fit", "--config", TINY, f"--data.init_args.train_shards={root / 'shards'}",
              f"--data.init_args.val_shards={root / 'shards'}", "--trainer.max_steps=2", "--trainer.logger=false",
              f"--trainer.default_root_dir={run}", "--trainer.enable_progress_bar=false",
              "--trainer.callbacks=[{class_path: lightning_modules.callbacks.ProgressPrinter, "
              "init_args: {every_n_steps: 1}}, {class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
              "init_args: {save_last: true}}]"])
    finally:
        capture.undo()
    ckpts = sorted(run.rglob("*.ckpt"))
    assert ckpts, f"no checkpoint under {run}"
    return ckpts[-1], out.getvalue()


def test_progress_lines_show_step_of_max_steps_loss_elapsed_and_eta(fitted):
    _, said = fitted
    lines = re.findall(r"^lift3d: step (\d+) epoch \d+ loss [0-9.]+ .*\[(\d+)/(\d+), elapsed \d+s, ETA (\S+)\]$",
                       said, re.M)
    assert [(s, n, total) for s, n, total, _ in lines] == [("1", "1", "2"), ("2", "2", "2")], said
    assert re.fullmatch(r"\d+s", lines[0][3]) and lines[1][3] == "0s", lines


def test_checkpoint_records_the_training_inputs(fitted):
    ckpt, _ = fitted
    settings = torch.load(ckpt, weights_only=True, map_location="cpu")[ReconstructionModule.INPUT_SETTINGS_KEY]
    assert settings == {"input_size": 64, "foreground_ratio": 0.0, "background": "white"}


def _square(tmp_path):
    rgba = np.zeros((96, 96, 4), np.uint8)
    rgba[30:60, 20:70] = (200, 60, 60, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "square.png")
    return tmp_path / "square.png"


def _predict(ckpt, tmp_path, *extra):
    _square(tmp_path)
    return Lift3dCLI(args=["predict", "--config", TINY, f"--ckpt_path={ckpt}",
                           "--data=datamodules.images.ImageDataModule", f"--data.images={tmp_path / 'square.png'}",
                           f"--model.init_args.predict_dir={tmp_path / 'out'}", "--model.init_args.mesh_resolution=16",
                           "--model.init_args.turntable=null", "--trainer.callbacks=[]",
                           "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}", *extra])


def test_predict_prepares_images_as_the_checkpoint_was_trained_and_opens_no_wandb_run(fitted, tmp_path, capsys):
    ckpt, _ = fitted
    cli = _predict(ckpt, tmp_path, f"--model.init_args.mesh_level={field_median(ckpt, _square(tmp_path))}")
    dm = cli.datamodule
    assert (dm.input_size, dm.foreground_ratio) == (64, 0.0)  # not ImageDataModule's 0.85 re-framing
    assert next(iter(dm.predict_dataloader()))["input_image"].shape[-2:] == (64, 64)
    assert cli.trainer.loggers == []  # lrm_tiny.yaml's WandbLogger is dropped for predict
    assert not (tmp_path / "wandb").exists()
    assert "images prepared as the checkpoint's training inputs: foreground_ratio=0.0" in capsys.readouterr().out
    assert (tmp_path / "out" / "square.glb").exists()


def test_predict_told_otherwise_uses_the_command_line_and_warns(fitted, tmp_path, capsys):
    ckpt, _ = fitted
    cli = _predict(ckpt, tmp_path, "--data.input_size=64", "--data.foreground_ratio=0.5")
    assert (cli.datamodule.input_size, cli.datamodule.foreground_ratio) == (64, 0.5)
    err = capsys.readouterr().err
    assert "--data.foreground_ratio=0.5 while" in err and "foreground_ratio=0.0" in err
    assert "input_size" not in err  # told the checkpoint's own value: nothing to warn about


def test_lpips_follows_the_training_mode_and_computes_the_same_in_both():
    """No module held in eval mode (Lightning's warning at the start of training), and the loss is unchanged."""
    from lightning_modules.losses import LPIPSLoss

    torch.manual_seed(0)
    loss = LPIPSLoss(None, pretrained_backbone=False)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert all(m.training for m in loss.modules())  # as built: a LightningModule holding it starts training so
    trained = loss.distance(a, b)
    loss.eval()
    assert torch.equal(trained, loss.distance(a, b))


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    said = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "evaluate", "convert-checkpoint"):
        assert re.search(rf"^\s+{command}\s", said, re.M), (command, said)


def test_offline_objaverse_without_metadata_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from render_farm.cli import main as render

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = render(["objaverse", "--lvis-categories", "chair", "--cache-dir", str(tmp_path / "empty"),
                   "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "downloads are off" in err and "--cache-dir" in err
