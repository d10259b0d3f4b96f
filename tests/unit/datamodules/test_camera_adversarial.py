"""Unusable cameras are corrupt data (issue 14): the reader's ``read_header`` rejects each camera fault with a
CorruptSampleError naming the key, ``cameras.npz``, the view and the fault, and training skips and counts such a
sample instead of crashing (an all-zero K made NaN rays that segfaulted ``lift3d fit`` on the CPU)."""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import pytest
import torch

from configs import MODEL_DIR, load_model_block
from datamodules.shard_datamodule import ShardDataModule
from geometry.cameras import intrinsics_from_fov, look_at, spherical_to_cartesian
from lightning_modules.lrm import LRMModule
from render_farm.shards import CAMERAS, CorruptSampleError, encode_cameras, read_cameras, read_header
from tests.unit.datamodules.conftest import make_object, make_sample, write_shards


def _faulty(fault: str, view: int = 2, n_views: int = 6, size: int = 64):
    """(c2w, K, hw) of make_object's cameras with ``fault`` put into camera ``view``."""
    _, c2w, K, hw, _ = make_object("obj", n_views=n_views, size=size)
    c2w, K, hw = c2w.astype(np.float64).copy(), K.astype(np.float64).copy(), hw.copy()
    if fault == "zero_K":
        K[view] = 0.0
    elif fault == "negative_fx":
        K[view, 0, 0] = -K[view, 0, 0]
    elif fault == "zero_fy":
        K[view, 1, 1] = 0.0
    elif fault == "principal_point_outside":
        K[view, 0, 2] = size * 3.0
    elif fault == "K_last_row":
        K[view, 2] = 0.0
    elif fault == "K_inf":
        K[view, 0, 0] = np.inf
    elif fault == "c2w_nan":
        c2w[view, 0, 3] = np.nan
    elif fault == "scaled_rotation":
        c2w[view, :3, :3] *= 2.0
    elif fault == "zero_rotation":
        c2w[view, :3, :3] = 0.0
    elif fault == "reflection":
        c2w[view, :3, 0] = -c2w[view, :3, 0]
    elif fault == "c2w_last_row":
        c2w[view, 3] = (0.0, 0.0, 1.0, 1.0)
    elif fault == "empty_image":
        hw[view] = (0, size)
    else:
        raise AssertionError(fault)
    return c2w, K, hw


FAULTS = {"zero_K": "fx = 0", "negative_fx": "fx = -", "zero_fy": "fy = 0", "principal_point_outside": "outside",
          "K_last_row": "not an intrinsics matrix", "K_inf": "K holds NaN/inf", "c2w_nan": "c2w holds NaN/inf",
          "scaled_rotation": "not orthonormal", "zero_rotation": "not orthonormal", "reflection": "determinant",
          "c2w_last_row": "last row", "empty_image": "positive image size"}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_camera_fault_is_a_corrupt_sample_naming_key_member_view_and_fault(fault):
    sample = make_sample("obj007")
    sample[CAMERAS] = encode_cameras(*_faulty(fault, view=2))
    with pytest.raises(CorruptSampleError) as info:
        read_header(sample)
    exc = info.value
    assert (exc.key, exc.member, exc.kind) == ("obj007", CAMERAS, "bad_cameras")
    assert "view 2:" in exc.reason and FAULTS[fault] in exc.reason, exc.reason
    assert "obj007" in str(exc) and CAMERAS in str(exc)


def test_real_float32_cameras_pass():
    """The synthetic rig's float32 cameras and many float32 look-at poses (any azimuth, elevation up to ±89°) pass
    the orthonormality tolerance; principal points on the image's edge pass too."""
    sample = make_sample("obj001", n_views=8)
    _, cams, roles = read_header(sample)
    assert len(cams["c2w"]) == len(roles) == 8
    rng = np.random.default_rng(0)
    n = 500
    el, az, r = rng.uniform(-89, 89, n), rng.uniform(0, 360, n), rng.uniform(0.5, 5.0, n)
    c2w = np.stack([look_at(p) for p in spherical_to_cartesian(r, el, az)]).astype(np.float32)
    K = np.stack([intrinsics_from_fov(float(f), 512, 384) for f in rng.uniform(10, 120, n)]).astype(np.float32)
    K[0, 0, 2], K[1, 1, 2] = 0.0, 384.0  # principal point on the edge: inside
    hw = np.tile(np.array([384, 512], np.int32), (n, 1))
    sample[CAMERAS] = encode_cameras(c2w, K, hw)
    assert len(read_cameras(sample)["c2w"]) == n


def test_loader_skips_logs_and_counts_a_bad_camera_sample(tmp_path, caplog):
    corrupt = {"obj002": {CAMERAS: encode_cameras(*_faulty("zero_K", view=0))}}
    keys = write_shards(tmp_path / "shards", n_shards=1, per_shard=4, corrupt=corrupt)
    dm = ShardDataModule(str(tmp_path / "shards"), batch_size=1, num_workers=0, shuffle_buffer=0, resampled=False,
                         num_target_views=2, input_size=32, target_size=32)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="datamodules.shard_datamodule"):
        seen = [k for batch in dm.train_dataloader() for k in batch["key"]]
    assert sorted(seen) == sorted(set(keys) - {"obj002"})
    assert dm.errors == {"bad_cameras": 1}
    assert any("obj002" in r.getMessage() and CAMERAS in r.getMessage() and "fx = 0" in r.getMessage()
               for r in caplog.records)


def test_training_lrm_tiny_skips_a_bad_camera_sample_and_counts_it(tmp_path):
    """A few lrm_tiny steps through Lightning on the CPU over a shard with one all-zero-K sample among good ones:
    no crash (the old reader let it through: NaN rays, a segfault in grid_sample), finite weights, the sample
    counted."""
    c2w, K, hw = _faulty("zero_K", view=0)
    K[:] = 0.0  # every view: whichever the sampler picks
    write_shards(tmp_path / "shards", n_shards=1, per_shard=3,
                 corrupt={"obj001": {CAMERAS: encode_cameras(c2w, K, hw)}})
    dm = ShardDataModule(str(tmp_path / "shards"), batch_size=1, num_workers=0, shuffle_buffer=0, resampled=False,
                         num_target_views=2, include_input_in_targets=True, input_size=64, target_size=32,
                         background="white")
    module = LRMModule(**load_model_block(MODEL_DIR / "lrm_tiny.yaml").init_args)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        gradient_clip_val=1.0, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    assert dm.errors == {"bad_cameras": 1}
    assert all(torch.isfinite(p).all() for p in module.net.parameters())
