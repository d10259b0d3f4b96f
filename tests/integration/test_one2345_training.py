"""One-2-3-45's reconstruction module trained on real Blender renders of the ``one2345`` rig (CPU, tiny config).

The overfitting run trains ``one2345_tiny`` on the multi-material box + cylinder with rendered neighbours (the stage
without predictions); the mixed path trains on the same object after the Zero123 pass of the tiny random pipeline
(``zero123_shards``); `lift3d fit` runs over DDP/gloo with 2 processes and `lift3d predict` exports a mesh.
"""

import glob
import json
import os
import subprocess
import sys
import tarfile

import lightning as L
import numpy as np
import pytest
import torch

from configs import MODEL_DIR, ROOT, load_model_block
from datamodules.one2345 import One2345DataModule
from datamodules.views import finalize
from geometry.mesh import chamfer_distance, load_mesh, sample_surface
from lightning_modules.one2345 import One2345Module
from tests.integration.lrm_helpers import LossRecorder, trainer

pytestmark = pytest.mark.slow

TINY = load_model_block(MODEL_DIR / "one2345_tiny.yaml").init_args
# 250 steps on the framed one2345 rig (issue 15), where the object is drawn at half its former size: 150 steps
# left its silhouette soft (mask IoU 0.686); doubling the rays per step (256) at 150 steps did not help (0.688),
# more optimisation did (0.766 at 250), so the steps are what a smaller object needs, not more pixels per step
OVERFIT_STEPS = 250
CHAMFER_BOUND = 0.12  # symmetric mean L2 Chamfer in the shard's frame (the object spans 2 units along x)


def datamodule(shards, neighbours="ground_truth", **kw) -> One2345DataModule:
    return One2345DataModule(str(shards), val_shards=str(shards), batch_size=1, num_workers=0, shuffle_buffer=0,
                             resampled=False, neighbours=neighbours, source_size=64, **kw)


def one_batch(shards, neighbours="ground_truth") -> dict:
    dm = datamodule(shards, neighbours)
    return finalize(next(iter(dm.predict_dataloader())))


def chamfer_to_asset(module, shards, asset) -> float:
    """Chamfer between the module's mesh of the (only) object and the asset, both in the shard's world frame."""
    batch = one_batch(shards)
    (tar,) = glob.glob(str(shards / "*.tar"))
    with tarfile.open(tar) as t:
        member = t.extractfile(next(m for m in t.getmembers() if m.name.endswith("meta.json")))
        assert member is not None, f"meta.json in {tar} is not a regular file"
        meta = json.load(member)
    with torch.no_grad():
        scene = module.encode(batch)
    verts, faces, _ = module.extract_mesh(scene, resolution=64)
    gt_v, gt_f = load_mesh(asset.path, normalization=meta["normalization"])
    return chamfer_distance(sample_surface(verts, faces, 10000), sample_surface(gt_v, gt_f, 10000, seed=1))


@pytest.fixture(scope="module")
def overfit(one2345_shards, tmp_path_factory):
    L.seed_everything(0)
    module = One2345Module(**TINY)
    before = chamfer_to_asset(module.eval(), one2345_shards["dir"], one2345_shards["asset"])
    rec = LossRecorder()
    run = trainer(tmp_path_factory.mktemp("one2345"), OVERFIT_STEPS, [rec], enable_checkpointing=False,
                  limit_val_batches=0)  # an epoch is one object: validation is run once, by the test below
    run.fit(module.train(), datamodule(one2345_shards["dir"]))
    return {"module": module.eval(), "losses": rec.losses, "before": before}


def test_tiny_one2345_overfits_a_rendered_object(overfit, one2345_shards):
    losses = overfit["losses"]
    assert len(losses) == OVERFIT_STEPS and all(np.isfinite(losses))
    first, last = np.mean(losses[:10]), np.mean(losses[-20:])
    print(f"loss: first 10 steps {first:.4f}, last 20 {last:.4f}")
    assert last < 0.4 * first
    # validation renders the whole target view under Lightning's inference mode (NeuS still takes SDF gradients)
    validator = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = validator.validate(overfit["module"], datamodule(one2345_shards["dir"]), verbose=False)[0]
    print({k: round(v, 4) for k, v in metrics.items()})
    # framed one2345 rig (issue 15), 250 steps, 2026-12-05: mask IoU 0.766, PSNR 31.1 dB, depth L1 0.059 (150 steps:
    # 0.686, 26.4 dB, 0.104); the 0.7 bound is kept
    assert metrics["val/psnr"] > 20.0 and metrics["val/mask_iou"] > 0.7
    assert metrics["val/depth_l1"] < 0.2


def test_exported_mesh_is_close_to_the_object(overfit, one2345_shards):
    after = chamfer_to_asset(overfit["module"], one2345_shards["dir"], one2345_shards["asset"])
    print(f"Chamfer to the asset: untrained {overfit['before']:.4f}, after {OVERFIT_STEPS} steps {after:.4f} "
          f"(bound {CHAMFER_BOUND})")
    assert after < CHAMFER_BOUND and after < 0.5 * overfit["before"]


class SourceRecorder(L.Callback):
    def __init__(self):
        self.sources, self.losses = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.sources.append(batch["source_views"][0].tolist())
        self.losses.append(float(outputs["loss"]))


def test_mixed_training_runs_on_zero123_predictions(zero123_shards, tmp_path):
    """Ground-truth–prediction mixed training: the sources are the 8 gt renders + the 32 views the (tiny, random)
    Zero123 pipeline predicted; the target stays a gt view."""
    torch.manual_seed(0)
    module = One2345Module(**TINY)
    rec = SourceRecorder()
    run = trainer(tmp_path, 3, [rec], enable_checkpointing=False, limit_val_batches=0)
    run.fit(module, datamodule(zero123_shards["dir"], neighbours="predicted"))
    assert rec.sources == [list(range(8)) + list(range(40, 72))] * 3
    assert all(np.isfinite(rec.losses))
    # the switch to the stage without predictions: the same shards, the rendered neighbours instead
    assert one_batch(zero123_shards["dir"], "ground_truth")["source_views"][0].tolist() == list(range(40))


def _lift3d(*args, timeout=900):
    env = dict(os.environ, PL_DISABLE_FORK="1", OMP_NUM_THREADS="1", WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "lightning_modules.launch.cli", *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def test_cli_fit_over_ddp_then_predict_a_mesh(one2345_shards, tmp_path):
    """`lift3d fit` with the tiny experiment over 2 CPU processes (gloo), then `lift3d predict` from its checkpoint:
    a mesh per object in predict_dir."""
    shards, out = one2345_shards["dir"], tmp_path / "run"
    log = _lift3d("fit", "--config", "configs/experiments/one2345_tiny.yaml",
                  f"--data.init_args.train_shards={shards}", "--data.init_args.val_shards=null",
                  "--data.init_args.resampled=true", "--data.init_args.samples_per_epoch=2",
                  "--trainer.max_steps=2", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.logger=false",
                  "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={out}",
                  '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
                  f'"init_args": {{"dirpath": "{out / "ckpt"}", "save_last": true}}}}]')
    assert "distributed_backend=gloo" in log and "All distributed processes registered" in log
    ckpt = out / "ckpt" / "last.ckpt"
    meshes = tmp_path / "meshes"
    _lift3d("predict", "--config", "configs/experiments/one2345_tiny.yaml", f"--ckpt_path={ckpt}",
            f"--data.init_args.train_shards={shards}", f"--data.init_args.val_shards={shards}",
            f"--model.init_args.predict_dir={meshes}", "--model.init_args.mesh_resolution=32",
            "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false")
    uid = one2345_shards["asset"].uid
    import trimesh

    mesh = trimesh.load(meshes / f"{uid}.glb", force="mesh")
    assert len(mesh.faces) > 100 and mesh.visual.kind == "vertex"


def test_cli_predict_from_a_single_image(zero123_shards, tmp_path):
    """`lift3d predict` on an RGBA image: Zero123 (tiny, random) makes the 40 source views, the elevation is
    estimated or falls back (random predictions match poorly), and a mesh, the views and the elevation are written.
    Then again with a given elevation."""
    import tarfile

    from PIL import Image

    (shard,) = glob.glob(str(zero123_shards["input"] / "*.tar"))
    with tarfile.open(shard) as t:  # the object's first gt render as a user's RGBA photo
        png = t.extractfile(next(m for m in t.getmembers() if m.name.endswith("000.rgba.png"))).read()
    photo = tmp_path / "photo.png"
    photo.write_bytes(png)
    for run, extra in (("estimated", []), ("given", ["--model.init_args.elevation_deg=20"])):
        out = tmp_path / run
        _lift3d("predict", "--config", "configs/experiments/one2345_tiny.yaml",
                "--data=datamodules.images.ImageDataModule", f"--data.images={photo}", "--data.input_size=64",
                f"--model.init_args.zero123_weights={zero123_shards['weights']}", "--model.init_args.zero123_steps=2",
                f"--model.init_args.predict_dir={out}", "--model.init_args.mesh_resolution=32",
                "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false", *extra)
        record = json.loads((out / "photo.json").read_text())
        assert (out / "photo.glb").stat().st_size > 1000 and record["mesh"].endswith("photo.glb")
        assert Image.open(out / "photo.views.png").size == (8 * 64, 5 * 64)  # 8 views + 32 neighbours at 64²
        if run == "given":
            assert (record["elevation"], record["elevation_deg"]) == ("given", 20.0)
        else:
            assert record["elevation"] in ("estimated", "fallback")
            assert -30.0 <= record["elevation_deg"] <= 60.0
