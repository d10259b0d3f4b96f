"""MVImgNet → shard format v1, on a tiny COLMAP model written with pycolmap.

The synthetic video: a box (known corners) at an arbitrary rotation/offset/scale in COLMAP's world, seven cameras
on a ring around an arbitrary "gravity" axis, alternating SIMPLE_RADIAL and OPENCV cameras with real distortion.
Images and masks are rasterised through COLMAP's own distorted projection (``Camera.img_from_cam``), so the
converter's undistortion is checked against an independent implementation.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil
import subprocess
import tarfile

import cv2
import numpy as np
import pycolmap
import pytest
import webdataset as wds

from geometry.cameras import invert_rigid, look_at, pixel_grid, project_points, scale_intrinsics
from render_farm import mvimgnet

W, H = 320, 240
HALF = np.array([0.6, 0.4, 0.3])  # box half extents in the object frame
OBJ_SCALE, OBJ_OFFSET = 2.5, np.array([3.0, -2.0, 5.0])
GRAVITY = np.array([0.3, -0.8, 0.5]) / np.linalg.norm([0.3, -0.8, 0.5])
CAMERAS = [("SIMPLE_RADIAL", [260.0, 161.0, 119.0, 0.12]),
           ("OPENCV", [250.0, 256.0, 158.5, 122.0, -0.10, 0.02, 0.002, -0.0015])]
FACES = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5)]


def _rotation(seed: int = 3) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


R_OBJ = _rotation()


def to_world(p_obj: np.ndarray) -> np.ndarray:
    return OBJ_SCALE * p_obj @ R_OBJ.T + OBJ_OFFSET


def box_corners() -> np.ndarray:
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    return to_world(signs * HALF)


def box_surface(n: int = 12, shrink: float = 1.0) -> np.ndarray:
    t = np.linspace(-1, 1, n)
    a, b = [g.ravel() for g in np.meshgrid(t, t)]
    pts = []
    for axis in range(3):
        for s in (-1.0, 1.0):
            p = np.zeros((len(a), 3))
            p[:, axis] = s
            p[:, (axis + 1) % 3], p[:, (axis + 2) % 3] = a, b
            pts.append(p)
    return to_world(np.unique(np.concatenate(pts), axis=0) * HALF * shrink)


def ring_c2w(n: int = 7, dist: float = 7.0, elevation: float = 25.0) -> list[np.ndarray]:
    e1 = np.cross(GRAVITY, [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(GRAVITY, e1)
    out = []
    for i in range(n):
        az, el = 2 * np.pi * i / n, np.radians(elevation)
        eye = OBJ_OFFSET + dist * (np.cos(el) * (np.cos(az) * e1 + np.sin(az) * e2) + np.sin(el) * GRAVITY)
        out.append(look_at(eye, OBJ_OFFSET, up=GRAVITY))
    return out


def rasterise(project, corners: np.ndarray, c2w: np.ndarray, hw) -> tuple[np.ndarray, np.ndarray]:
    """(RGB, mask) of the box; ``project`` maps camera points (N, 3) to pixels with centres at +0.5."""
    w2c = invert_rigid(c2w)
    cam_corners = corners @ w2c[:3, :3].T + w2c[:3, 3]
    rgb = np.full((*hw, 3), (40, 60, 80), np.uint8)
    mask = np.zeros(hw, np.uint8)
    order = sorted(range(6), key=lambda f: -cam_corners[list(FACES[f])].mean(0)[2])  # painter's order
    t = np.linspace(0.0, 1.0, 40, endpoint=False)[:, None]
    for f in order:
        quad = cam_corners[list(FACES[f])]
        boundary = np.concatenate([quad[i] + t * (quad[(i + 1) % 4] - quad[i]) for i in range(4)])
        poly = np.round((project(boundary) - 0.5) * 16).astype(np.int32)
        cv2.fillPoly(rgb, [poly], tuple(int(c) for c in (60 + 30 * f, 200 - 25 * f, 120)), cv2.LINE_8, shift=4)
        cv2.fillPoly(mask, [poly], 255, cv2.LINE_8, shift=4)
    return rgb, mask


def write_video(vdir: str, mask_dir: str | None = None, models=CAMERAS) -> dict:
    """A COLMAP 3.x-style video folder (images/, masks/, sparse/0 without rigs/frames); returns ground truth."""
    os.makedirs(os.path.join(vdir, "images"))
    mask_dir = mask_dir or os.path.join(vdir, "masks")
    os.makedirs(mask_dir, exist_ok=True)
    rec = pycolmap.Reconstruction()
    truth: dict[str, list[np.ndarray]] = {"c2w": [], "K": []}
    for i, c2w in enumerate(ring_c2w()):
        model, params = models[i % len(models)]
        cam = pycolmap.Camera.create_from_model_name(i + 1, model, 1.0, W, H)
        cam.params = params
        rec.add_camera_with_trivial_rig(cam)
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{i:03d}.jpg", camera_id=i + 1, image_id=i + 1),
                                         pycolmap.Rigid3d(invert_rigid(c2w)[:3]))
        rgb, mask = rasterise(cam.img_from_cam, box_corners(), c2w, (H, W))
        cv2.imwrite(os.path.join(vdir, "images", f"{i:03d}.jpg"), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(os.path.join(mask_dir, f"{i:03d}.png"), mask)
        fx, fy, cx, cy = mvimgnet.MODELS[model](params)[:4] if model in mvimgnet.MODELS else (0, 0, 0, 0)
        truth["c2w"].append(c2w)
        truth["K"].append(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64))
    rng = np.random.default_rng(0)
    background = rng.normal(size=(300, 3))
    background = OBJ_OFFSET + 20.0 * background / np.linalg.norm(background, axis=1, keepdims=True)
    for p in np.concatenate([box_surface(), background]):
        rec.add_point3D(p, pycolmap.Track())
    sparse = os.path.join(vdir, "sparse", "0")
    os.makedirs(sparse)
    rec.write(sparse)
    for extra in ("rigs.bin", "frames.bin"):  # MVImgNet ships COLMAP 3.x models: three files
        if os.path.exists(os.path.join(sparse, extra)):
            os.remove(os.path.join(sparse, extra))
    return truth


def make_args(root, out, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    mvimgnet.add_arguments(parser)
    argv = ["--root", str(root), "--out", str(out), "--resolution", "160", "--max-views", "5"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvimgnet")
    truth = write_video(str(root / "7" / "a1b2.c3"))
    write_video(str(root / "12" / "vid_02"))
    broken = root / "12" / "vid_03"
    write_video(str(broken))
    with open(broken / "sparse" / "0" / "cameras.bin", "wb") as f:
        f.write(b"\x07 definitely not a COLMAP model")
    write_video(str(root / "12" / "vid_04"))
    os.remove(root / "12" / "vid_04" / "images" / "003.jpg")  # a frame the model lists is missing
    return root, truth


@pytest.fixture(scope="module")
def converted(dataset, tmp_path_factory):
    root, _ = dataset
    out = tmp_path_factory.mktemp("shards")
    assert mvimgnet.run(make_args(root, out, shard_maxcount=1)) == 0
    return out


def read_samples(out) -> list[dict]:
    urls = sorted(glob.glob(os.path.join(out, "*.tar")))
    return list(wds.WebDataset(urls, shardshuffle=False))


def decode(png: bytes, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), flags)


def test_key_is_shard_safe():
    assert mvimgnet.video_key("7", "a1b2.c3 x") == "mvimgnet-7-a1b2_c3_x"


@pytest.mark.parametrize("model,params", CAMERAS)
def test_undistort_matches_colmap(model, params):
    """A smooth pattern seen through COLMAP's distortion, undistorted, equals the pattern seen by the pinhole K."""
    cam = pycolmap.Camera.create_from_model_name(1, model, 1.0, W, H)
    cam.params = params
    pattern = lambda xy: 127 + 100 * np.sin(9 * xy[..., 0]) * np.cos(7 * xy[..., 1])  # noqa: E731
    uv = pixel_grid(H, W).reshape(-1, 2)
    distorted = pattern(cam.cam_from_img(uv)).reshape(H, W).astype(np.float32)  # COLMAP: centres at +0.5
    K, dist = mvimgnet.camera_intrinsics(cam, W, H, "test")
    rgb, fg = mvimgnet.undistort(np.repeat(distorted[..., None], 3, -1), np.ones((H, W), bool), K, dist)
    ref = pattern(np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0], (uv[:, 1] - K[1, 2]) / K[1, 1]], -1)).reshape(H, W)
    inner = (slice(20, -20), slice(20, -20))
    assert np.abs(rgb[..., 0] - ref)[inner].mean() < 0.05  # vs ≈ 2.4 without undistortion
    assert np.abs(distorted - ref)[inner].mean() > 1.0
    assert fg[inner].all()
    if dist[0] > 0:  # pincushion (k1 > 0): the corners map outside the source frame, alpha 0 there
        assert not fg.all()


def test_robust_bounds_ignore_outliers():
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.uniform(-1, 1, size=(500, 3)), [[9.0, 0.0, 0.0], [0.0, -7.0, 0.0]]])
    lo, hi = mvimgnet.robust_bounds(pts)
    assert np.all(lo > -1.001) and np.all(hi < 1.001) and np.all(hi - lo > 1.9)


def test_shards_listing_and_failure_manifest(converted):
    tars = sorted(glob.glob(os.path.join(converted, "*.tar")))
    assert len(tars) == 2 and not glob.glob(os.path.join(converted, "*.tmp"))
    names = [m for t in tars for m in tarfile.open(t).getnames()]
    key = "mvimgnet-7-a1b2_c3"
    assert {f"{key}.{i:03d}.{kind}.png" for i in range(5) for kind in ("rgba", "depth")} <= set(names)
    assert f"{key}.cameras.npz" in names and f"{key}.meta.json" in names
    assert all(n.split(".", 1)[0] in (key, "mvimgnet-12-vid_02") for n in names)
    index = json.load(open(os.path.join(converted, "index.json")))
    assert index["total_samples"] == 2
    failures = [json.loads(line) for line in open(os.path.join(converted, "_state", "task-00000.failures.jsonl"))]
    assert [f["key"] for f in failures] == ["mvimgnet-12-vid_03", "mvimgnet-12-vid_04"]
    assert "cannot read the COLMAP model" in failures[0]["reason"] and "vid_03" in failures[0]["reason"]
    assert "cannot read image" in failures[1]["reason"] and "003.jpg" in failures[1]["reason"]
    assert "Traceback" in failures[1]["log_excerpt"]
    if shutil.which("tar"):  # the plain `tar tf` listing agrees
        listed = subprocess.run(["tar", "tf", tars[0]], check=True, capture_output=True, text=True).stdout.split()
        assert listed == tarfile.open(tars[0]).getnames()


def test_cameras_reproject_known_points(dataset, converted):
    _, truth = dataset
    sample = next(s for s in read_samples(converted) if s["__key__"] == "mvimgnet-7-a1b2_c3")
    cams = np.load(io.BytesIO(sample["cameras.npz"]))
    meta = json.loads(sample["meta.json"])
    assert meta["format"] == "lift3d-shard-v1" and meta["depth"] == "none" and meta["num_views"] == 5
    assert meta["frames"] == ["000.jpg", "002.jpg", "003.jpg", "004.jpg", "006.jpg"]  # evenly spaced over 7
    assert [c["model"] for c in meta["source_cameras"]] == ["SIMPLE_RADIAL", "SIMPLE_RADIAL", "OPENCV",
                                                             "SIMPLE_RADIAL", "SIMPLE_RADIAL"]
    c2w, K, hw = cams["c2w"].astype(np.float64), cams["K"].astype(np.float64), cams["hw"]
    assert c2w.shape == (5, 4, 4) and K.shape == (5, 3, 3) and (hw == [120, 160]).all()
    np.testing.assert_allclose(np.einsum("vji,vjk->vik", c2w[:, :3, :3], c2w[:, :3, :3]),
                               np.broadcast_to(np.eye(3), (5, 3, 3)), atol=1e-5)
    R = np.array(meta["world_rotation"])
    scale, offset = meta["normalization"]["scale"], np.array(meta["normalization"]["offset"])
    to_norm = lambda p: (p @ R.T + offset) * scale  # noqa: E731
    assert np.degrees(np.arccos(np.clip(R @ GRAVITY, -1, 1)[2])) < 1.0  # gravity up → +Z
    surface = to_norm(box_surface(n=20, shrink=0.97))
    for v, frame in enumerate(meta["frames"]):
        i = int(frame[:3])
        rgba = decode(sample[f"{v:03d}.rgba.png"])
        depth = decode(sample[f"{v:03d}.depth.png"])
        assert rgba.shape == (120, 160, 4) and depth.dtype == np.uint16 and not depth.any()
        # the stored pinhole camera == the true (undistorted) camera, resized 320×240 → 160×120
        uv, z = project_points(surface, K[v], c2w[v])
        gt_K = scale_intrinsics(truth["K"][i], 0.5, 0.5)
        uv_gt, _ = project_points(box_surface(n=20, shrink=0.97), gt_K, truth["c2w"][i])
        assert (z > 0).all() and np.abs(uv - uv_gt).max() < 1e-3
        alpha = rgba[..., 3]
        assert set(np.unique(alpha)) <= {0, 255}
        inside = alpha[uv[:, 1].astype(int), uv[:, 0].astype(int)] == 255
        outside_by = cv2.distanceTransform((alpha == 0).astype(np.uint8), cv2.DIST_L2, 5)  # px to the mask
        assert inside.mean() > 0.99 and outside_by[uv[:, 1].astype(int), uv[:, 0].astype(int)].max() <= 1.5
        # the undistorted mask matches a pinhole rasterisation of the normalised box with the stored camera
        _, ref = rasterise(lambda p: np.stack([K[v][0, 0] * p[:, 0] / p[:, 2] + K[v][0, 2],
                                               K[v][1, 1] * p[:, 1] / p[:, 2] + K[v][1, 2]], -1),
                           to_norm(box_corners()), c2w[v], (120, 160))
        fg, ref = alpha > 0, ref > 0
        assert (fg & ref).sum() / (fg | ref).sum() > 0.97
        # RGB is the object's colour inside the mask, the background outside
        bgr_bg = rgba[..., :3][~fg & ~cv2.dilate(ref.astype(np.uint8), np.ones((5, 5))).astype(bool)]
        np.testing.assert_allclose(bgr_bg.mean(0), (80, 60, 40), atol=3)  # BGR: cv2 decodes BGRA


def test_normalisation_fits_object_into_unit_cube(converted):
    for sample in read_samples(converted):
        meta = json.loads(sample["meta.json"])
        R = np.array(meta["world_rotation"])
        scale, offset = meta["normalization"]["scale"], np.array(meta["normalization"]["offset"])
        corners = (box_corners() @ R.T + offset) * scale
        extent = corners.max(0) - corners.min(0)
        # the masked sparse points include the box corners: their bounds are exactly the box, longest side 2
        assert np.abs(corners).max() < 1 + 1e-6 and abs(extent.max() - 2.0) < 1e-6
        np.testing.assert_allclose(corners.max(0), -corners.min(0), atol=1e-6)  # centred
        assert meta["num_object_points"] < meta["num_points"]  # the background points were left out


def test_rerun_resumes_without_duplicates(dataset, converted, capsys):
    root, _ = dataset
    before = sorted(os.listdir(converted))
    assert mvimgnet.run(make_args(root, converted, shard_maxcount=1)) == 0
    assert "0 videos ok" in capsys.readouterr().out
    assert sorted(os.listdir(converted)) == before
    keys = [s["__key__"] for s in read_samples(converted)]
    assert sorted(keys) == ["mvimgnet-12-vid_02", "mvimgnet-7-a1b2_c3"]


def test_resume_after_new_videos_and_slurm_slices(tmp_path, monkeypatch):
    root = tmp_path / "root"
    write_video(str(root / "1" / "v1"))
    out = tmp_path / "out"
    assert mvimgnet.run(make_args(root, out)) == 0
    write_video(str(root / "1" / "v2"))
    assert mvimgnet.run(make_args(root, out)) == 0
    keys = [s["__key__"] for s in read_samples(out)]
    assert sorted(keys) == ["mvimgnet-1-v1", "mvimgnet-1-v2"]
    # SLURM array slicing: two tasks take disjoint halves of the sorted video list
    out2 = tmp_path / "out2"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    for task in ("0", "1"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        assert mvimgnet.run(make_args(root, out2)) == 0
    assert sorted(os.path.basename(p)[:5] for p in glob.glob(os.path.join(out2, "*.tar"))) == ["00000", "00001"]
    assert sorted(s["__key__"] for s in read_samples(out2)) == ["mvimgnet-1-v1", "mvimgnet-1-v2"]


def test_mask_root_and_unsupported_model(tmp_path):
    root, masks = tmp_path / "root", tmp_path / "masks"
    write_video(str(root / "3" / "ok"), mask_dir=str(masks / "3" / "ok"))
    write_video(str(root / "3" / "fisheye"), models=[("OPENCV_FISHEYE", [250.0, 250.0, 160.0, 120.0, 0.01, 0, 0, 0])])
    out = tmp_path / "out"
    assert mvimgnet.run(make_args(root, out, mask_root=masks)) == 0
    assert [s["__key__"] for s in read_samples(out)] == ["mvimgnet-3-ok"]
    failures = {json.loads(line)["key"]: json.loads(line)["reason"]
                for line in open(out / "_state" / "task-00000.failures.jsonl")}
    assert "OPENCV_FISHEYE is not supported" in failures["mvimgnet-3-fisheye"]
    # without --mask-root the masks are not found: a clear failure naming where they were looked for
    out_b = tmp_path / "out_b"
    assert mvimgnet.run(make_args(root, out_b)) == 0
    reasons = [json.loads(line)["reason"] for line in open(out_b / "_state" / "task-00000.failures.jsonl")]
    assert any("no mask for frame" in r and "--mask-root" in r for r in reasons)


def test_missing_root_is_a_usage_error(tmp_path, capsys):
    assert mvimgnet.run(make_args(tmp_path / "nope", tmp_path / "out")) == 2
    assert "is not a directory" in capsys.readouterr().out
