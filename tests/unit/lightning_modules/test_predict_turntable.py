"""`lift3d predict`'s step: an RGB photo on a plain background → extracted mask → the tiny LRM → a mesh and its
turntable GIF / MP4 in predict_dir; the turntable settings are validated and stay out of the checkpoint."""

import cv2
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from datamodules.images import ImageDataModule
from lightning_modules.lrm import LRMModule
from lightning_modules.prediction import PredictionWriter
from tests.unit.lightning_modules.conftest import field_median, tiny_lrm_args


def tiny(tmp_path, **kw) -> LRMModule:
    """lrm_tiny with random weights (its field is fog, with no rendered surface: :func:`predict` meshes it at its
    median density unless ``mesh_level`` is given)."""
    torch.manual_seed(0)
    args = dict(tiny_lrm_args(), lpips_weight=0.0, mesh_resolution=24, mesh_level=None,
                predict_dir=str(tmp_path))
    return LRMModule(**{**args, **kw}).eval()


def predict(module: LRMModule, batch: dict) -> list[str]:
    """`lift3d predict` on one batch: the module's step, then the writer into its predict_dir; the meshes' paths."""
    if module.mesh_level is None:
        module.set_runtime(mesh_level=field_median(module, batch))
    return PredictionWriter().write(module.predict_step(batch, 0), module.predict_dir)


def photo_batch(tmp_path) -> dict:
    """One predict batch from a plain-background RGB photo (a red disc on light grey), foreground extracted."""
    a = np.full((96, 128, 3), 200, np.uint8)
    cv2.circle(a, (60, 50), 30, (220, 40, 40), thickness=-1)
    path = tmp_path / "inputs" / "red ball.jpg"
    path.parent.mkdir()
    Image.fromarray(a, "RGB").save(path, quality=95)
    dm = ImageDataModule(str(path), input_size=64, foreground="extract")
    (batch,) = list(dm.predict_dataloader())
    assert 0.1 < batch["input_mask"].mean() < 0.9  # the disc was found: neither empty nor the whole image
    return batch


def test_predict_step_writes_a_mesh_and_a_turntable_gif(tmp_path):
    out = tmp_path / "predictions"
    module = tiny(out, turntable="gif", turntable_frames=5, turntable_size=48)
    paths = predict(module, photo_batch(tmp_path))
    assert paths == [str(out / "red_ball.glb")]
    mesh = trimesh.load(paths[0], force="mesh")
    assert len(mesh.faces) > 0 and mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)
    with Image.open(out / "red_ball.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (48, 48) and gif.info.get("loop") == 0
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB"), dtype=np.int32))
    assert (frames[0] < 250).any(axis=-1).mean() > 0.02  # the mesh shows over the white background
    assert np.abs(frames[0] - frames[2]).mean() > 0.5  # it turns


def test_predict_step_mp4_and_none(tmp_path):
    batch = photo_batch(tmp_path)
    predict(tiny(tmp_path / "mp4", turntable="mp4", turntable_frames=4, turntable_size=32), batch)
    cap = cv2.VideoCapture(str(tmp_path / "mp4" / "red_ball.mp4"))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == 4
    for off in (None, "none"):
        predict(tiny(tmp_path / f"off-{off}", turntable=off), batch)
        assert sorted(p.name for p in (tmp_path / f"off-{off}").iterdir()) == ["red_ball.glb"]


def test_extract_mesh_runs_once_per_object(tmp_path, monkeypatch):
    module = tiny(tmp_path, turntable_frames=2, turntable_size=16)
    calls = []
    original = module.extract_mesh
    monkeypatch.setattr(module, "extract_mesh", lambda *a, **k: calls.append(1) or original(*a, **k))
    predict(module, photo_batch(tmp_path))
    assert len(calls) == 1


@pytest.mark.parametrize("kwargs, match", [({"turntable": "avi"}, "turntable 'avi': expected gif, mp4, or none"),
                                           ({"turntable_frames": 0}, "turntable_frames must be an integer >= 1"),
                                           ({"turntable_size": 2.5}, "turntable_size must be an integer >= 8")])
def test_rejects_bad_turntable_settings(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(tmp_path, **kwargs)


def test_turntable_settings_stay_out_of_the_checkpoint_hparams(tmp_path):
    module = tiny(tmp_path, turntable="mp4", turntable_frames=7, turntable_size=64)
    for name in ("turntable", "turntable_frames", "turntable_size", "predict_dir"):
        assert name not in module.hparams
    assert (module.turntable, module.turntable_frames, module.turntable_size) == ("mp4", 7, 64)
