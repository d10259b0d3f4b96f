"""The bookkeeping of `lift3d evaluate`: categories, summaries, tables, the HTML page, ground-truth helpers."""

import json

import cv2
import numpy as np
import pytest
import torch
import trimesh

from geometry.cameras import intrinsics_from_fov, look_at
from lightning_modules.evaluation.cli import main, parser, read_categories
from lightning_modules.evaluation.report import _html, summarise, summary_table, write_reports
from lightning_modules.evaluation.scoring import depth_points, merged

RECORDS = [
    {"key": "a", "category": "chair", "psnr": 20.0, "chamfer": 0.1, "volume_iou": None},
    {"key": "b", "category": "chair", "psnr": 24.0, "chamfer": 0.3, "volume_iou": 0.5},
    {"key": "c", "category": "mug", "psnr": 18.0, "chamfer": 0.2, "volume_iou": 0.7},
]


def test_categories_from_json_and_csv(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"a": "chair", "b": "mug"}))
    assert read_categories(str(tmp_path / "c.json")) == {"a": "chair", "b": "mug"}
    (tmp_path / "c.csv").write_text("key,category\na,chair\n# comment\nb, mug\n")
    assert read_categories(str(tmp_path / "c.csv")) == {"a": "chair", "b": "mug"}
    assert read_categories(None) == {}


def test_category_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_categories(str(tmp_path / "nope.csv"))
    (tmp_path / "bad.csv").write_text("a,chair\nonly_a_key\n")
    with pytest.raises(ValueError, match="bad.csv.*only_a_key"):
        read_categories(str(tmp_path / "bad.csv"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json"):
        read_categories(str(tmp_path / "list.json"))


def test_summary_statistics_overall_and_per_category():
    s = summarise(RECORDS, [{"key": "x"}], seconds=30.0)
    assert s["objects"] == 3 and s["failures"] == 1 and s["objects_per_min"] == pytest.approx(6.0)
    assert s["overall"]["psnr"] == {"mean": pytest.approx(62 / 3), "median": 20.0,
                                    "std": pytest.approx(np.std([20, 24, 18])), "n": 3}
    assert s["categories"]["chair"]["chamfer"]["mean"] == pytest.approx(0.2)
    assert s["overall"]["volume_iou"]["n"] == 2  # None (not watertight) is left out, not counted as 0
    assert s["categories"]["chair"]["volume_iou"]["mean"] == pytest.approx(0.5)
    assert s["objects_per_category"] == {"chair": 2, "mug": 1}
    table = summary_table(s)
    assert "| all | 3 | 20.67 | 0.2 | 0.6 |" in table and "| mug | 1 | 18 | 0.2 | 0.7 |" in table
    assert "psnr ↑" in table and "chamfer ↓" in table


def test_reports_are_written_and_the_html_shows_tables_and_images(tmp_path):
    s = summarise(RECORDS, [{"key": "x", "shard": "s.tar", "stage": "evaluate", "reason": "bad <npz>"}], 30.0)
    settings = {"ckpt": "m.ckpt", "shards": "s/*.tar", "world_size": 1, "input_view": "auto", "gt": "depth",
                "align": "yaw"}
    write_reports(str(tmp_path), RECORDS, [{"key": "x", "shard": "s.tar", "stage": "evaluate",
                                            "reason": "bad <npz>"}], s, settings)
    assert [json.loads(line)["key"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        ["a", "b", "c"]
    page = (tmp_path / "report.html").read_text()
    assert page.count("<table>") == 3  # summary, objects, failures
    assert '<img src="renders/b.png" alt="b">' in page and '<img src="histograms/psnr.png"' in page
    assert "bad &lt;npz&gt;" in page  # text is escaped
    assert (tmp_path / "histograms" / "chamfer.png").exists()


def test_markdown_to_html_keeps_code_and_headings():
    page = _html(["# Title", "", "a `code` b", "| x | y |", "|---|---|", "| 1 | 2 |"])
    assert "<h1>Title</h1>" in page and "<code>code</code>" in page
    assert "<tr><th>x</th><th>y</th></tr><tr><td>1</td><td>2</td></tr></table>" in page


def test_merged_closes_a_mesh_split_along_seams():
    box = trimesh.creation.box()
    split = box.vertices[box.faces].reshape(-1, 3), np.arange(36).reshape(12, 3)  # a vertex copy per face
    assert not trimesh.Trimesh(*split, process=False).is_watertight
    v, f = merged(*split)
    assert len(v) == 8 and trimesh.Trimesh(v, f, process=False).is_watertight


def test_depth_points_lie_on_the_seen_surface():
    """Depth maps of the plane z = 0 seen from above by 2 cameras, stored as a shard sample's uint16 PNGs."""
    K = intrinsics_from_fov(40.0, 32, 32)
    c2w = np.stack([look_at((0.0, -0.01, 2.0)), look_at((0.3, -0.01, 2.0))]).astype(np.float32)
    depth = {}
    for i in range(2):  # the z-depth of the plane z = 0 at each pixel centre, by ray intersection
        v, u = np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5, indexing="ij")
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1) @ \
            c2w[i, :3, :3].T.astype(np.float64)
        depth[i] = -c2w[i, 2, 3] / rays[..., 2]
    sample = {"__key__": "plane", **{f"{i:03d}.depth.png": cv2.imencode(".png", np.round(d * 10000).astype(
        np.uint16))[1].tobytes() for i, d in depth.items()}}
    cams = {"c2w": c2w, "K": np.stack([K, K]).astype(np.float32), "hw": np.array([[32, 32]] * 2)}
    pts = depth_points(sample, cams, 10000.0, voxel=0.01)
    assert len(pts) > 500 and np.abs(pts[:, 2]).max() < 1e-3  # depth is stored to 1e-4
    voxels = np.floor(pts / 0.01).astype(np.int64)
    assert len(np.unique(voxels, axis=0)) == len(pts)  # one point per voxel


def test_parser_defaults_follow_the_protocol():
    args = parser().parse_args(["--ckpt", "m.ckpt", "--shards", "a.tar", "b.tar"])
    assert args.num_points == 10_000 and args.align == "yaw" and args.input_view == "auto"
    assert args.shards == ["a.tar", "b.tar"]


def test_bad_inputs_stop_with_the_file_and_the_fix(tmp_path):
    shard = tmp_path / "a.tar"
    shard.write_bytes(b"")
    with pytest.raises(SystemExit, match=r"checkpoint .*missing.ckpt.* does not exist: point --ckpt"):
        main(["--ckpt", str(tmp_path / "missing.ckpt"), "--shards", str(shard), "--out", str(tmp_path / "o"),
              "--wandb-mode", "disabled", "--accelerator", "cpu"])
    ckpt = tmp_path / "lrm.ckpt"  # a readable LRM checkpoint: the checkpoint is checked before the shards
    torch.save({"global_step": 1, "state_dict": {}, "hyper_parameters": {
        "_class_path": "lightning_modules.lrm.LRMModule", "encoder": {}}}, ckpt)
    with pytest.raises(SystemExit, match=r"no shard matches .*nothing-\*\.tar"):
        main(["--ckpt", str(ckpt), "--shards", str(tmp_path / "nothing-*.tar"), "--out",
              str(tmp_path / "o"), "--wandb-mode", "disabled", "--accelerator", "cpu"])
    with pytest.raises(SystemExit, match="--mesh-level 'high'"):
        main(["--ckpt", "m.ckpt", "--shards", str(shard), "--mesh-level", "high"])


def test_the_old_module_path_is_the_command():
    """``lightning_modules.evaluate`` (the path before the evaluation package) is the module with ``main``."""
    import lightning_modules.evaluate as old

    assert old.main is main and old.parser is parser
