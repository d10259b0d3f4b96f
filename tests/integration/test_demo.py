"""`make demo` end to end (smaller images): Blender renders → shards → a datamodule batch → preview."""

import json

import pytest
from PIL import Image

from lightning_modules.launch import demo

pytestmark = pytest.mark.slow


def test_demo_renders_reads_back_and_previews(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--resolution", "64", "--samples", "4", "--train-steps", "0"]) == 0
    out = capsys.readouterr().out
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["total_samples"] == 3  # three good objects; the truncated file is recorded, not rendered
    assert "recorded failure truncated" in out
    assert "batch['target_images']: (2, 2, 3, 32, 32)" in out  # tiny.yaml: 2 targets, 32² crops
    assert Image.open(tmp_path / "preview.png").size[0] > 0
    # running it again resumes: nothing is rendered twice
    assert demo.main(["--out", str(tmp_path), "--resolution", "64", "--samples", "4", "--train-steps", "0"]) == 0
    assert "0 ok, 0 failed, 4 already done" in capsys.readouterr().out


def test_demo_trains_the_tiny_lrm_and_exports_meshes(tmp_path, capsys):
    """The whole `make demo`, with fewer training steps: a W&B offline run, a checkpoint, one mesh per object."""
    import trimesh

    assert demo.main(["--out", str(tmp_path), "--resolution", "64", "--samples", "4", "--train-steps", "12"]) == 0
    assert (tmp_path / "lrm" / "checkpoints" / "last.ckpt").exists()
    assert list((tmp_path / "lrm").glob("wandb/offline-run-*")), "no W&B offline run"
    meshes = sorted((tmp_path / "meshes").glob("*.glb"))
    assert [m.stem for m in meshes] == ["multi_material", "textured_box", "vertex_coloured_sphere"]
    for m in meshes:
        mesh = trimesh.load(m, force="mesh")
        assert len(mesh.faces) > 0 and mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)
        assert Image.open(m.with_suffix(".gif")).n_frames > 1  # the turntable
    # the held-out objects are scored and reported
    records = [json.loads(line) for line in (tmp_path / "evaluation" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in records) == ["held_out_box", "held_out_sphere"]
    assert all(r["held_out_views"] == 23 and "psnr" in r for r in records)
    assert (tmp_path / "evaluation" / "report.html").exists()
    assert list((tmp_path / "evaluation").glob("wandb/offline-run-*")), "evaluation logged into another W&B run"
