"""Shard keys are file names (issue 14): a tar member named ``../../x.000.rgba.png`` or ``/abs/path/x.…`` made
``lift3d evaluate`` write its render and mesh outside ``--out``. Now the reader enforces the format's key rule (such a
sample is corrupt: skipped, counted, recorded) and every per-object file is named by ``safe_output_path``, which
refuses to leave its directory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import lightning as L
import numpy as np
import pytest
from PIL import Image

from configs import MODEL_DIR, ROOT, load_model_block
from datamodules.shard_datamodule import ShardDataModule
from lightning_modules.prediction import Prediction, write_prediction
from render_farm.shards import CAMERAS, CorruptSampleError, encode_cameras, read_header, safe_output_path, scan_samples
from tests.unit.datamodules.conftest import make_object, make_sample
from tests.unit.lightning_modules.conftest import field_median

# --- the helper ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "..", ".", "", "/abs/path/x", "a/b", "a\\b", "x\0y", "../out2/x"])
def test_safe_output_path_refuses_names_that_leave_the_directory(tmp_path, name):
    with pytest.raises(ValueError, match="refusing to write outside"):
        safe_output_path(str(tmp_path), name, ".png")


def test_safe_output_path_refuses_a_symlink_out_of_the_directory(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    os.symlink(outside / "x.png", out / "x.png")
    with pytest.raises(ValueError, match="resolves outside"):
        safe_output_path(str(out), "x", ".png")


def test_safe_output_path_keeps_valid_keys_in_place(tmp_path):
    assert safe_output_path(str(tmp_path), "obj-001_A", ".views.png") == os.path.join(str(tmp_path),
                                                                                      "obj-001_A.views.png")
    assert safe_output_path("relative/dir", "k", ".glb") == os.path.join("relative/dir", "k.glb")


# --- hostile shards ------------------------------------------------------------------------------------------------


def hostile_shard(path, escape_abs: str, bad_camera: bool = False) -> list[str]:
    """A tar shard written with tarfile (as a hostile or broken producer would): one good sample ``good``, and the
    same sample under the keys ``../../x`` and ``escape_abs`` (an absolute path); with ``bad_camera`` also a sample
    ``badcam`` whose K is all zero. Returns the keys in order."""
    keys = ["good", "../../x", escape_abs] + (["badcam"] if bad_camera else [])
    with tarfile.open(path, "w") as tar:
        for key in keys:
            sample = make_sample("good")
            if key == "badcam":
                _, c2w, K, hw, _ = make_object("badcam")
                sample[CAMERAS] = encode_cameras(c2w, np.zeros_like(K), hw)
            for member, data in sample.items():
                if member.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{key}.{member}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return keys


def _files_under(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files}


def test_reader_rejects_keys_outside_the_rule_as_corrupt_samples(tmp_path):
    hostile_shard(tmp_path / "evil.tar", str(tmp_path / "abs" / "x"))
    samples = list(scan_samples(str(tmp_path / "evil.tar")))
    assert [s.key for s in samples] == ["good", "../../x", str(tmp_path / "abs" / "x")]
    read_header(samples[0])
    for s in samples[1:]:
        with pytest.raises(CorruptSampleError) as info:
            read_header(s)
        assert (info.value.key, info.value.member, info.value.kind) == (s.key, "__key__", "bad_key")


def test_loader_skips_and_counts_hostile_keys(tmp_path):
    hostile_shard(tmp_path / "evil.tar", str(tmp_path / "abs" / "x"))
    dm = ShardDataModule(str(tmp_path / "evil.tar"), batch_size=1, num_workers=0, shuffle_buffer=0, resampled=False,
                         num_target_views=2, input_size=32, target_size=32)
    dm.setup("fit")
    assert [k for batch in dm.train_dataloader() for k in batch["key"]] == ["good"]
    assert dm.errors == {"bad_key": 2}


def test_prediction_writer_refuses_a_key_that_leaves_its_directory(tmp_path):
    out = tmp_path / "a" / "predictions"
    mesh = (np.eye(3, dtype=np.float32), np.array([[0, 1, 2]]), np.ones((3, 3), np.float32))
    for key in ("../../x", str(tmp_path / "abs" / "x")):
        with pytest.raises(ValueError, match="refusing to write outside"):
            write_prediction(Prediction(key, mesh, "glb", record={"elevation": 0.0}), str(out))
    assert _files_under(tmp_path) == set()
    write_prediction(Prediction("good", mesh, "glb", record={"elevation": 0.0}), str(out))
    assert _files_under(tmp_path) == {"a/predictions/good.glb", "a/predictions/good.json"}


def test_evaluate_writes_nothing_outside_out_and_records_the_hostile_samples(tmp_path):
    """lift3d evaluate (a subprocess, as a user runs it) of an untrained lrm_tiny checkpoint over the hostile shard:
    exit 0, the good object scored, the two hostile keys and an all-zero-K sample in failures.jsonl, and every file
    it wrote inside --out."""
    shards, work = tmp_path / "shards", tmp_path / "work"
    shards.mkdir()
    escape_abs = str(tmp_path / "abs" / "x")
    hostile_shard(shards / "evil-000000.tar", escape_abs, bad_camera=True)
    module = _tiny_module()
    trainer = L.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path / "run"))
    trainer.strategy.connect(module)
    ckpt = tmp_path / "untrained.ckpt"
    trainer.save_checkpoint(ckpt)
    square = np.zeros((64, 64, 4), np.uint8)
    square[16:48, 16:48] = (200, 60, 60, 255)
    Image.fromarray(square, "RGBA").save(tmp_path / "square.png")
    level = field_median(module, tmp_path / "square.png")  # an untrained field is fog: mesh it at its median
    before = _files_under(tmp_path)
    out = work / "a" / "out"
    cmd = [sys.executable, "-m", "lightning_modules.launch.cli", "evaluate", "--ckpt", str(ckpt), "--shards",
           str(shards), "--out", str(out), "--accelerator", "cpu", "--devices", "1", "--num-points", "500",
           "--mesh-resolution", "32", "--mesh-level", str(level), "--model-config", str(MODEL_DIR / "lrm_tiny.yaml"),
           "--save-meshes", "--wandb-mode", "disabled"]
    env = dict(os.environ, PL_DISABLE_FORK="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    written = _files_under(tmp_path) - before
    assert written and all(p.startswith("work/a/out/") for p in written), sorted(written)
    assert not os.path.exists(escape_abs + ".png") and not os.path.exists(escape_abs + ".glb")
    with open(out / "metrics.jsonl") as f:
        assert [json.loads(line)["key"] for line in f] == ["good"]
    with open(out / "failures.jsonl") as f:
        failures = {r["key"]: r["reason"] for r in map(json.loads, f)}
    assert set(failures) == {"../../x", escape_abs, "badcam"}
    assert "[A-Za-z0-9_-]" in failures["../../x"] and "fx = 0" in failures["badcam"]
    assert os.path.isfile(out / "renders" / "good.png") and os.path.isfile(out / "meshes" / "good.glb")


def _tiny_module():
    from lightning_modules.lrm import LRMModule

    return LRMModule(**load_model_block(MODEL_DIR / "lrm_tiny.yaml").init_args)
