"""Which ground truth `lift3d evaluate` scores each object against, how asset files are found, and how the summary
keeps ground-truth sources and geometry failures apart."""

import hashlib
import json

import cv2
import numpy as np
import pytest
import trimesh

from geometry.cameras import intrinsics_from_fov, look_at
from lightning_modules.evaluation.report import metric_failures, summarise, summary_table, write_reports
from lightning_modules.evaluation.scoring import AssetIndex, ground_truth
from render_farm.shards import encode_mesh


def _plane_sample(key="plane", mesh=None):
    """A sample seeing the plane z = 0 from above (2 depth maps), optionally with a stored mesh.npz."""
    K = intrinsics_from_fov(40.0, 16, 16)
    c2w = np.stack([look_at((0.0, -0.01, 2.0)), look_at((0.3, -0.01, 2.0))]).astype(np.float32)
    sample = {"__key__": key}
    for i in range(2):
        v, u = np.meshgrid(np.arange(16) + 0.5, np.arange(16) + 0.5, indexing="ij")
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1) @ \
            c2w[i, :3, :3].T.astype(np.float64)
        depth = -c2w[i, 2, 3] / rays[..., 2]
        sample[f"{i:03d}.depth.png"] = cv2.imencode(".png", np.round(depth * 10000).astype(np.uint16))[1].tobytes()
    if mesh is not None:
        sample["mesh.npz"] = encode_mesh(*mesh)
    cams = {"c2w": c2w, "K": np.stack([K, K]).astype(np.float32), "hw": np.array([[16, 16]] * 2)}
    return sample, cams


def _asset(path, scale=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box(extents=(scale, scale, scale)).export(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_stored_mesh_wins_then_the_asset_file_then_the_depth_points(tmp_path):
    sha = _asset(tmp_path / "assets" / "batch2" / "chair.ply")
    meta = {"depth_scale": 10000.0, "uid": "chair-1a2b3c4d", "sha256": sha,
            "source_metadata": {"relpath": "batch2/chair.ply"}, "normalization": {"scale": 2.0, "offset": [0, 0, 0]}}
    tetra = (np.eye(4, 3), np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]))
    assets = AssetIndex(str(tmp_path / "assets"))

    stored, cams = _plane_sample("chair-1a2b3c4d", mesh=tetra)
    (verts, faces), source, note = ground_truth(stored, meta, cams, assets)
    assert source == "shard_mesh" and len(faces) == 4 and "mesh.npz" in note

    plain, cams = _plane_sample("chair-1a2b3c4d")
    (verts, faces), source, note = ground_truth(plain, meta, cams, assets)
    assert source == "asset_file" and note.startswith(str(tmp_path / "assets" / "batch2" / "chair.ply"))
    assert "relpath" in note
    np.testing.assert_allclose(np.abs(verts).max(), 1.0)  # normalised with meta.json's normalization

    points, source, note = ground_truth(plain, meta, cams, None)
    assert source == "depth_points" and points.ndim == 2 and np.abs(points[:, 2]).max() < 1e-3
    assert "no --gt-meshes" in note


def test_assets_are_found_recursively_through_the_recorded_source_path_not_the_key(tmp_path):
    _asset(tmp_path / "a" / "deep" / "x" / "my chair.v2.glb")
    other = _asset(tmp_path / "b" / "my chair.v2.glb", scale=2.0)  # same name elsewhere: the relpath decides
    index = AssetIndex(str(tmp_path))
    path, how = index.find("my_chair_v2-0badc0de", {"source_metadata": {"relpath": "deep/x/my chair.v2.glb"}})
    assert path == str(tmp_path / "a" / "deep" / "x" / "my chair.v2.glb") and "relpath" in how
    # Objaverse records object_path; the file found by name, checked against the rendered file's sha256
    uid = "8476c4170df24cf5bbe6967222d1a42d"
    sha = _asset(tmp_path / "objaverse" / "glbs" / "000-023" / f"{uid}.glb", scale=3.0)
    recorded = {"uid": uid, "sha256": sha, "source_metadata": {"object_path": f"glbs/000-023/{uid}.glb"}}
    path, _ = index.find(uid, recorded)
    assert path is None  # the index was built before the file existed
    path, how = AssetIndex(str(tmp_path)).find(uid, recorded)
    assert path.endswith(f"glbs/000-023/{uid}.glb")
    # a file of the same name that is not what was rendered is refused, with the reason
    path, why = index.find("my_chair_v2", {"sha256": other[::-1], "source_metadata": {"relpath": "b/my chair.v2.glb"}})
    assert path is None and "sha256 differs" in why
    path, why = index.find("nothing", {"uid": "nothing"})
    assert path is None and "nothing matches uid 'nothing'" in why
    with pytest.raises(FileNotFoundError, match="--gt-meshes"):
        AssetIndex(str(tmp_path / "missing"))


RECORDS = [
    {"key": "a", "category": "chair", "gt": "shard_mesh", "psnr": 20.0, "chamfer": 0.1, "align_rotation_deg": 158.0},
    {"key": "b", "category": "chair", "gt": "shard_mesh", "psnr": 24.0, "chamfer": 0.3, "align_rotation_deg": 2.0},
    {"key": "c", "category": "mug", "gt": "depth_points", "psnr": 18.0, "chamfer": 0.9, "align_rotation_deg": 0.0},
    {"key": "d", "category": "mug", "gt": None, "psnr": 16.0,
     "geometry_error": "no ground truth: no depth in any view: the object is not visible"},
]


def test_geometry_is_summarised_per_source_and_unscored_objects_are_failures(tmp_path):
    failures = [{"key": "x", "shard": "s.tar", "stage": "read", "reason": "truncated"}] + metric_failures(RECORDS)
    s = summarise(RECORDS, failures, seconds=60.0)
    assert s["objects"] == 4 and s["failures"] == 2
    assert {"key": "d", "stage": "geometry", "reason": RECORDS[3]["geometry_error"]} in s["failed"]
    assert s["overall"]["psnr"]["n"] == 4  # appearance pools every object
    assert "chamfer" not in s["overall"] and "chamfer" not in s["categories"]["mug"]  # never mixed sources
    assert s["gt_sources"]["shard_mesh"]["overall"]["chamfer"]["mean"] == pytest.approx(0.2)
    assert s["gt_sources"]["depth_points"]["overall"]["chamfer"]["mean"] == pytest.approx(0.9)
    assert s["gt_sources"]["shard_mesh"]["objects"] == 2
    table = summary_table(s)
    assert "| all, gt shard_mesh | 2 | – | 0.2 |" in table and "| all, gt depth_points | 1 | – | 0.9 |" in table
    settings = {"ckpt": "m.ckpt", "shards": "s/*.tar", "world_size": 1, "input_view": "auto", "gt": "stored",
                "align": "yaw"}
    write_reports(str(tmp_path), RECORDS, failures, s, settings)
    report = (tmp_path / "report.md").read_text()
    assert "Alignment `yaw`" in report and "largest 158.0° (a)" in report
    assert "| a | chair | shard_mesh | 158 |" in report
    assert "no depth in any view" in report
    assert [json.loads(line)["key"] for line in (tmp_path / "failures.jsonl").read_text().splitlines()] == ["x", "d"]


def test_one_source_keeps_the_pooled_summary():
    rows = [r for r in RECORDS if r["gt"] == "shard_mesh"]
    s = summarise(rows, [], 1.0)
    assert s["overall"]["chamfer"]["mean"] == pytest.approx(0.2) and list(s["gt_sources"]) == ["shard_mesh"]
    assert "gt shard_mesh" not in summary_table(s)
