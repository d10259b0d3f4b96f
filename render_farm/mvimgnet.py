"""MVImgNet videos (COLMAP sparse models) → shard format v1 (docs/DESIGN.md), one sample per video.

Input layout::

    <root>/<category>/<video>/images/*.jpg
    <root>/<category>/<video>/sparse/0/{cameras,images,points3D}.bin      COLMAP 3.x (read with pycolmap)
    <root>/<category>/<video>/masks/<stem>.png                          MVImgNet2.0 / masks release (default)
    <mask_root>/<category>/<video>/[masks/]<stem>.png                    with --mask-root
    (``<image name>.png``, e.g. ``000.jpg.png``, is accepted as well)

Conventions (what this module does to the data)
    Poses: COLMAP's ``cam_from_world`` is world→camera and its camera frame is already OpenCV (x right, y down,
    z forward), so ``c2w`` is its rigid inverse; nothing is flipped.
    Pixels: COLMAP and lift3d both put pixel centres at integer + 0.5. OpenCV's ``remap`` indexes pixel centres
    at integers, so the undistortion maps are built with principal points shifted by −0.5.
    Distortion: each image is undistorted (bilinear; masks nearest) to the pinhole ``K`` made of the camera's own
    focal lengths and principal point, at the same size; pixels whose source lies outside the frame get alpha 0.
    COLMAP's SIMPLE_RADIAL / RADIAL / OPENCV distortion is OpenCV's (k1, k2, p1, p2) model. meta.json keeps the
    original model, params and size per view (``source_cameras``). Other models are refused with a clear error.
    Resize: the longer side becomes ``resolution`` (``geometry.image.resize``; the mask nearest); ``K`` follows
    via ``geometry.cameras.scale_intrinsics``.
    World frame: COLMAP's world is arbitrary. It is turned by the minimal rotation ``world_rotation`` (R, in
    meta) that takes the mean camera up (the cameras' −y axis, over every registered frame) to +Z:
    ``world = R · colmap_world`` (hand-held videos are shot upright, so this is gravity up; yaw stays COLMAP's).
    Normalisation: the object is the set of sparse points that project inside the foreground mask (grown by
    ``MASK_DILATION`` of the image size, for points on the silhouette edge) in at least ``MASK_FRACTION`` of the
    sampled views that see them. Outliers are dropped with the ``bounds_percentile``
    (2nd–98th) percentile box (:func:`robust_bounds`) and the min/max of the rest, in the rotated world, gives
    ``normalised = (world + offset) × scale`` (``geometry.normalization``); meta ``normalization``. Hence
    ``colmap_world = Rᵀ · (normalised / scale − offset)``; the rotations of ``c2w`` are only turned by R.
    Depth: MVImgNet has no dense depth. ``NNN.depth.png`` is all zeros (0 = no surface); meta ``depth: "none"``.
    RGBA: the undistorted image with alpha = 255 inside the mask, 0 outside.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import traceback
from dataclasses import dataclass

import cv2
import numpy as np
import pycolmap

from geometry.cameras import invert_rigid, scale_intrinsics
from geometry.image import resize, resize_nearest
from geometry.normalization import normalization_from_bounds
from render_farm.shards import ShardWriter, encode_sample, sanitise_key
from render_farm.tasks import resolve_task, task_slice

LICENCE = "MVImgNet Terms of Use (non-commercial research)"
DEPTH_SCALE = 1000.0  # nominal: every depth pixel is 0 (no surface), see meta "depth": "none"
MASK_FRACTION = 0.8  # a point is on the object if it projects into the mask in this share of the views seeing it
MASK_DILATION = 0.01  # masks are grown by this share of the longer image side for that test (edge points)
MIN_OBJECT_POINTS = 8

#: COLMAP model → (fx, fy, cx, cy, k1, k2, p1, p2) from its params (OpenCV's distortion model)
MODELS = {
    "SIMPLE_PINHOLE": lambda p: (p[0], p[0], p[1], p[2], 0.0, 0.0, 0.0, 0.0),
    "PINHOLE": lambda p: (p[0], p[1], p[2], p[3], 0.0, 0.0, 0.0, 0.0),
    "SIMPLE_RADIAL": lambda p: (p[0], p[0], p[1], p[2], p[3], 0.0, 0.0, 0.0),
    "RADIAL": lambda p: (p[0], p[0], p[1], p[2], p[3], p[4], 0.0, 0.0),
    "OPENCV": lambda p: tuple(p[:8]),
}


class VideoError(Exception):
    """A video that cannot be converted (recorded in the failure manifest; the run goes on)."""


@dataclass(frozen=True)
class Video:
    category: str
    name: str
    path: str
    key: str


def video_key(category: str, name: str) -> str:
    return sanitise_key(f"mvimgnet-{category}-{name}")


def list_videos(root: str) -> list[Video]:
    """Every ``<root>/<category>/<video>`` holding ``images/`` or ``sparse/``, sorted; keys made unique."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--root {root!r} is not a directory; pass the MVImgNet root "
                                "(<root>/<category>/<video>/images and sparse/0)")
    videos, seen = [], set()
    for cat in sorted(os.listdir(root)):
        cdir = os.path.join(root, cat)
        if cat.startswith((".", "_")) or not os.path.isdir(cdir):
            continue
        for name in sorted(os.listdir(cdir)):
            vdir = os.path.join(cdir, name)
            if not any(os.path.isdir(os.path.join(vdir, d)) for d in ("images", "sparse")):
                continue
            key = video_key(cat, name)
            if key in seen:  # two names that differ only in unsafe characters
                key += "-" + hashlib.sha1(f"{cat}/{name}".encode()).hexdigest()[:8]
            seen.add(key)
            videos.append(Video(cat, name, vdir, key))
    return videos


def _mask_path(video: Video, image_name: str, mask_root: str | None) -> str:
    stem = os.path.splitext(image_name)[0]
    if mask_root is None:
        dirs = [os.path.join(video.path, "masks")]
    else:
        base = os.path.join(mask_root, video.category, video.name)
        dirs = [base, os.path.join(base, "masks")]
    candidates = [os.path.join(d, n) for d in dirs for n in (stem + ".png", image_name + ".png", image_name)]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise VideoError(f"no mask for frame {image_name!r}: looked for {candidates[:2]} (and .jpg.png names); "
                     "pass --mask-root <masks release root> if the masks live elsewhere")


def _load_view(video: Video, image_name: str, mask_root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (H, W, 3), foreground bool (H, W)) at the image's own resolution."""
    path = os.path.join(video.path, "images", image_name)
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise VideoError(f"cannot read image {path} (missing or corrupt), listed in the COLMAP model")
    mpath = _mask_path(video, image_name, mask_root)
    m = cv2.imread(mpath, cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise VideoError(f"cannot read mask {mpath} (corrupt?)")
    if m.shape != bgr.shape[:2]:
        m = resize_nearest(m, bgr.shape[0], bgr.shape[1])  # nearest pixel centre, never blended
    fg = m > (127 if m.max() > 1 else 0)  # 0/255 masks and 0/1 label maps
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), fg


def camera_intrinsics(cam, width: int, height: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(pinhole K (3, 3), OpenCV distortion (k1, k2, p1, p2)) of a COLMAP camera, for an image of this size.

    An image stored at another resolution than the camera's (same aspect) gets the camera scaled to it.
    """
    model = cam.model.name
    if model not in MODELS:
        raise VideoError(f"{where}: COLMAP camera model {model} is not supported; expected one of "
                         f"{sorted(MODELS)} (re-run COLMAP's image_undistorter or extend MODELS)")
    fx, fy, cx, cy, *dist = (float(v) for v in MODELS[model](list(cam.params)))
    sx, sy = width / cam.width, height / cam.height
    if abs(sx - sy) > 0.01 * max(sx, sy):
        raise VideoError(f"{where}: image is {width}×{height} but its COLMAP camera is {cam.width}×{cam.height} "
                         "(a different aspect ratio); the images do not belong to this sparse model")
    K = scale_intrinsics(np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), sx, sy)
    return K, np.array(dist, dtype=np.float64)


def undistort(rgb: np.ndarray, fg: np.ndarray, K: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image (bilinear) and mask (nearest) of the pinhole camera ``K``; outside the source frame the mask is 0."""
    if not np.any(dist):
        return rgb, fg
    h, w = fg.shape
    K_cv = K.copy()
    K_cv[:2, 2] -= 0.5  # OpenCV pixel centres are at integers
    mx, my = cv2.initUndistortRectifyMap(K_cv, dist, None, K_cv, (w, h), cv2.CV_32FC1)
    rgb = cv2.remap(rgb, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    fg = cv2.remap(fg.astype(np.uint8), mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return rgb, fg.astype(bool)


def resize_view(rgb, fg, K, resolution: int):
    """Longer side → ``resolution`` pixels; K scaled with the per-axis size ratios."""
    h, w = fg.shape
    if w >= h:
        nw, nh = resolution, max(1, round(h * resolution / w))
    else:
        nw, nh = max(1, round(w * resolution / h)), resolution
    if (nw, nh) == (w, h):
        return rgb, fg, K
    rgb = resize(rgb, nh, nw)
    fg = resize_nearest(fg.astype(np.uint8), nh, nw).astype(bool)
    return rgb, fg, scale_intrinsics(K, nw / w, nh / h)


def up_rotation(c2w: np.ndarray) -> np.ndarray:
    """Minimal rotation R taking the mean camera up (−y of the OpenCV cameras) to +Z."""
    up = -c2w[:, :3, 1].mean(axis=0)
    n = np.linalg.norm(up)
    if n < 1e-6:
        return np.eye(3)  # cameras disagree completely about up: keep COLMAP's frame
    a, b = up / n, np.array([0.0, 0.0, 1.0])
    v, c = np.cross(a, b), float(a @ b)
    if c < -1.0 + 1e-9:
        return np.diag([1.0, -1.0, -1.0])  # up is −Z: half turn about X
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def object_points(points: np.ndarray, c2w: np.ndarray, K: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """The sparse points inside the (slightly dilated) foreground mask in ≥ MASK_FRACTION of the views seeing them."""
    h, w = masks[0].shape
    r = max(1, round(MASK_DILATION * max(h, w)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    seen = np.zeros(len(points), dtype=int)
    inside = np.zeros(len(points), dtype=int)
    for c2w_i, K_i, fg in zip(c2w, K, masks):
        w2c = invert_rigid(c2w_i)
        cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        ok = z > 1e-9
        u = np.full(len(points), -1.0)
        v = np.full(len(points), -1.0)
        u[ok] = K_i[0, 0] * cam[ok, 0] / z[ok] + K_i[0, 2]
        v[ok] = K_i[1, 1] * cam[ok, 1] / z[ok] + K_i[1, 2]
        fg = cv2.dilate(fg.astype(np.uint8), kernel).astype(bool)
        h, w = fg.shape
        vis = ok & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        seen += vis
        hit = np.zeros(len(points), dtype=bool)
        hit[vis] = fg[v[vis].astype(int), u[vis].astype(int)]
        inside += hit
    keep = (seen >= min(2, len(masks))) & (inside >= MASK_FRACTION * np.maximum(seen, 1))
    return points[keep]


def robust_bounds(points: np.ndarray, percentile: float = 2.0, margin: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis bounds of the points after dropping outliers.

    The ``percentile``..100−p box flags outliers: points further than ``margin`` × its extent outside it are
    dropped; the bounds are the min/max of the rest, so a clean object keeps its true extremes (its corners).
    """
    lo, hi = np.percentile(points, [percentile, 100.0 - percentile], axis=0)
    pad = margin * float(np.max(hi - lo))
    keep = np.all((points >= lo - pad) & (points <= hi + pad), axis=1)
    return points[keep].min(axis=0), points[keep].max(axis=0)


def _sha256_model(sparse: str) -> str:
    h = hashlib.sha256()
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        path = os.path.join(sparse, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def convert_video(video: Video, max_views: int = 32, resolution: int = 512, mask_root: str | None = None,
                  bounds_percentile: float = 2.0) -> tuple[dict, dict]:
    """(format-v1 sample, done-list record) of one video; raises :class:`VideoError` for a bad video."""
    sparse = os.path.join(video.path, "sparse", "0")
    if not os.path.isdir(sparse):
        raise VideoError(f"no COLMAP model: {sparse} does not exist (expected cameras.bin, images.bin, points3D.bin)")
    try:
        rec = pycolmap.Reconstruction(sparse)
    except (ValueError, RuntimeError) as exc:
        raise VideoError(f"cannot read the COLMAP model in {sparse} (missing or corrupt .bin files): {exc}") from exc
    images = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
    if len(images) < 2:
        raise VideoError(f"{sparse} has {len(images)} registered image(s); a video needs at least 2")
    picks = np.unique(np.round(np.linspace(0, len(images) - 1, min(max_views, len(images)))).astype(int))
    chosen = [images[i] for i in picks]
    for im in chosen:  # refuse unsupported cameras before reading any pixels
        if rec.cameras[im.camera_id].model.name not in MODELS:
            raise VideoError(f"{sparse} camera {im.camera_id}: COLMAP camera model "
                             f"{rec.cameras[im.camera_id].model.name} is not supported; expected one of "
                             f"{sorted(MODELS)} (run COLMAP's image_undistorter first, or extend MODELS)")

    rgbs, masks, Ks, c2ws, source_cameras = [], [], [], [], []
    for im in chosen:
        cam = rec.cameras[im.camera_id]
        rgb, fg = _load_view(video, im.name, mask_root)
        K, dist = camera_intrinsics(cam, fg.shape[1], fg.shape[0], f"{sparse} camera {im.camera_id}")
        rgb, fg = undistort(rgb, fg, K, dist)
        rgb, fg, K = resize_view(rgb, fg, K, resolution)
        w2c = np.eye(4)
        w2c[:3] = np.asarray(im.cam_from_world().matrix(), dtype=np.float64)
        rgbs.append(rgb)
        masks.append(fg)
        Ks.append(K)
        c2ws.append(invert_rigid(w2c))
        source_cameras.append({"model": cam.model.name, "params": [float(p) for p in cam.params],
                               "width": int(cam.width), "height": int(cam.height)})
    c2w, K = np.stack(c2ws), np.stack(Ks)

    points = np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64).reshape(-1, 3)
    obj = object_points(points, c2w, K, masks)
    if len(obj) < MIN_OBJECT_POINTS:
        raise VideoError(f"only {len(obj)} of {len(points)} sparse points in {sparse} fall inside the object "
                         f"masks (need {MIN_OBJECT_POINTS}); the masks or the model are wrong for this video")
    all_w2c = np.tile(np.eye(4), (len(images), 1, 1))  # up from every registered frame, not only the sampled
    all_w2c[:, :3] = [np.asarray(im.cam_from_world().matrix(), dtype=np.float64) for im in images]
    R = up_rotation(invert_rigid(all_w2c))
    scale, offset = normalization_from_bounds(*robust_bounds(obj @ R.T, bounds_percentile))
    c2w[:, :3, :3] = np.einsum("ij,vjk->vik", R, c2w[:, :3, :3])
    c2w[:, :3, 3] = (c2w[:, :3, 3] @ R.T + offset) * scale

    views = []
    for rgb, fg in zip(rgbs, masks):
        alpha = np.where(fg, 255, 0).astype(np.uint8)[..., None]
        views.append({"rgba": np.concatenate([rgb, alpha], axis=-1),
                      "depth": np.zeros(fg.shape, dtype=np.uint16)})
    hw = np.array([fg.shape for fg in masks], dtype=np.int32)
    meta = {
        "uid": video.key, "source": "mvimgnet", "licence": LICENCE, "sha256": _sha256_model(sparse),
        "category": video.category, "video": video.name,
        "normalization": {"scale": float(scale), "offset": [float(o) for o in offset]},
        "world_rotation": R.tolist(), "depth": "none", "depth_scale": DEPTH_SCALE,
        "render": {"engine": "colmap-undistort", "resolution": resolution, "rig": "mvimgnet-video",
                   "max_views": max_views, "bounds_percentile": bounds_percentile, "undistorted": True},
        "view_roles": ["gt"] * len(views),
        "frames": [im.name for im in chosen], "source_cameras": source_cameras,
        "num_object_points": int(len(obj)), "num_points": int(len(points)),
    }
    sample = encode_sample(video.key, views, c2w, K, hw, meta)
    return sample, {"views": len(views), "object_points": int(len(obj))}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="MVImgNet root: <root>/<category>/<video>/{images,sparse/0}")
    parser.add_argument("--out", required=True, help="output directory for shards, index.json, _state/ and _logs/")
    parser.add_argument("--mask-root", default=None,
                        help="masks release root <mask-root>/<category>/<video>/<stem>.png "
                             "(default: <root>/<category>/<video>/masks/)")
    parser.add_argument("--max-views", type=int, default=32, help="frames per video, evenly spaced (default 32)")
    parser.add_argument("--resolution", type=int, default=512, help="longer image side in pixels (default 512)")
    parser.add_argument("--shard-maxcount", type=int, default=64, help="videos per shard (default 64)")
    parser.add_argument("--retry-failed", action="store_true", help="convert videos in the failure manifest again")
    parser.add_argument("--rank", type=int, default=None, help="this task's index (default: SLURM_ARRAY_TASK_ID or 0)")
    parser.add_argument("--world-size", type=int, default=None,
                        help="number of tasks (default: SLURM_ARRAY_TASK_COUNT or 1)")


def run(args: argparse.Namespace) -> int:
    """Convert this task's slice of the videos; prints one summary line. Returns 0, or 2 for unusable arguments."""
    if args.max_views < 1 or args.resolution < 8:
        print(f"mvimgnet: --max-views {args.max_views} and --resolution {args.resolution} must be ≥ 1 and ≥ 8")
        return 2
    try:
        task, count = resolve_task(args.rank, args.world_size)
        found = list_videos(args.root)
        videos = task_slice(found, task, count, key=lambda v: v.key)
    except (FileNotFoundError, ValueError) as exc:
        print(f"mvimgnet: {exc}")
        return 2
    if not found:
        print(f"mvimgnet: no videos under --root {args.root!r} (expected <root>/<category>/<video>/ holding images/ "
              f"and sparse/0/); point --root at the MVImgNet root", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    ok = failed = skipped = 0
    with ShardWriter(args.out, task=task, maxcount=args.shard_maxcount) as writer:
        skip = set(writer.done) | (set() if getattr(args, "retry_failed", False) else set(writer.failed))
        for video in videos:
            if video.key in skip:
                skipped += 1
                continue
            try:
                sample, record = convert_video(video, args.max_views, args.resolution, args.mask_root)
            except (VideoError, ValueError, OSError, cv2.error) as exc:
                writer.record_failure(video.key, f"{type(exc).__name__}: {exc}", traceback.format_exc(),
                                      path=video.path)
                failed += 1
                continue
            writer.write(sample, record)
            ok += 1
    print(f"mvimgnet task {task}/{count}: {ok} videos ok, {failed} failed, {skipped} already done/failed "
          f"→ {args.out}" + (f" (failure manifest: {writer.paths.failures})" if failed else ""), flush=True)
    return 0
