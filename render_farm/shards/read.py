"""Reading shard format v1 samples — only the views a sample needs.

A sample is a mapping of raw bytes keyed by member suffix (``__key__``, ``__url__``, ``000.rgba.png``,
``000.depth.png``, optional ``000.normal.png``, ``cameras.npz``, ``meta.json``), as webdataset yields it or as a
:class:`~render_farm.shards.tar_index.LazySample` that reads a member only when asked. The cheap members
(``meta.json``, ``cameras.npz``: :func:`read_header`) are parsed first so the caller can pick view indices; then
only the PNGs of those views are decoded. Every problem with the data raises :class:`CorruptSampleError` naming
the sample key, the member and the reason, so a reader can report and skip the sample.

Decoded arrays (H, W = the stored image size, ``hw`` in cameras.npz)::

    rgba    (H, W, 4) uint8, RGBA order, straight (un-premultiplied) alpha
    depth   (H, W)    float32 metres of z-depth, 0 = no surface   (stored uint16 / meta ``depth_scale``)
    normal  (H, W, 3) float32 world-space unit normals in [-1, 1], 0 where no surface

meta.json carries the view roles as ``view_roles`` (one string per view; ``roles`` is accepted too); a sample
without them has no ``source`` view.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from render_farm.shards.spec import CAMERAS, FORMAT, GT_MESH, META, check_key, view_member

#: How far a stored rotation may be from orthonormal (max |RᵀR - I|, |det R - 1|) and K's / c2w's fixed rows from
#: their values; float32 renders and COLMAP-converted poses are within ~1e-6.
ROTATION_TOL = 1e-3

#: Error kinds used for the loader's counters (``ShardDataModule.errors``).
KINDS = ("shard_read", "truncated_shard", "missing_member", "bad_png", "bad_cameras", "bad_meta", "bad_views",
         "decode_error", "bad_key", "bad_mesh")


class CorruptSampleError(ValueError):
    """A sample whose member ``member`` cannot be used; ``kind`` is one of :data:`KINDS`."""

    def __init__(self, key: str, member: str, reason: str, kind: str = "decode_error"):
        self.key, self.member, self.reason = key, member, reason
        self.kind = kind if kind in KINDS else "decode_error"
        super().__init__(f"sample {key!r}, member {member!r}: {reason}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return CorruptSampleError, (self.key, self.member, self.reason, self.kind)


def sample_key(sample: Mapping[str, Any]) -> str:
    return str(sample.get("__key__", "?"))


def _member(sample: Mapping[str, Any], name: str) -> bytes:
    data = sample.get(name)
    if data is None:
        present = sorted(k for k in sample if not k.startswith("__"))
        raise CorruptSampleError(sample_key(sample), name,
                                 f"member is missing (the sample has {len(present)} members; a truncated shard, "
                                 f"or a writer that is not format v1)", kind="missing_member")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptSampleError(sample_key(sample), name, f"expected raw bytes, got {type(data).__name__}; "
                                 "do not put a webdataset .decode() stage before this decoder", kind="decode_error")
    return bytes(data)


def read_meta(sample: Mapping[str, Any]) -> dict:
    """Parsed ``meta.json``; checks the format tag and ``depth_scale``."""
    key = sample_key(sample)
    try:
        meta = json.loads(_member(sample, META))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptSampleError(key, META, f"not valid JSON ({exc})", kind="bad_meta") from exc
    if not isinstance(meta, dict):
        raise CorruptSampleError(key, META, f"expected a JSON object, got {type(meta).__name__}", "bad_meta")
    if meta.get("format") != FORMAT:
        raise CorruptSampleError(key, META, f"format is {meta.get('format')!r}, expected {FORMAT!r}",
                                 kind="bad_meta")
    scale = meta.get("depth_scale")
    if not isinstance(scale, (int, float)) or not scale > 0:
        raise CorruptSampleError(key, META, f"depth_scale must be a positive number, got {scale!r}",
                                 kind="bad_meta")
    return meta


def read_cameras(sample: Mapping[str, Any], num_views: int | None = None) -> dict[str, np.ndarray]:
    """``c2w`` (V,4,4) float32, ``K`` (V,3,3) float32, ``hw`` (V,2) int32 from ``cameras.npz``, shape-checked and
    each camera checked to be usable (:func:`camera_problem`)."""
    key = sample_key(sample)
    raw = _member(sample, CAMERAS)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            cams = {name: np.asarray(npz[name]) for name in ("c2w", "K", "hw")}
    except KeyError as exc:
        raise CorruptSampleError(key, CAMERAS, f"array {exc} is missing; expected c2w, K and hw",
                                 kind="bad_cameras") from exc
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CorruptSampleError(key, CAMERAS, f"not a readable .npz ({exc})", kind="bad_cameras") from exc
    v = len(cams["c2w"])
    expected = {"c2w": (v, 4, 4), "K": (v, 3, 3), "hw": (v, 2)}
    for name, shape in expected.items():
        if cams[name].shape != shape:
            raise CorruptSampleError(key, CAMERAS, f"{name} has shape {cams[name].shape}, expected {shape}",
                                     kind="bad_cameras")
    if num_views is not None and v != num_views:
        raise CorruptSampleError(key, CAMERAS, f"{v} cameras but meta.json num_views is {num_views}",
                                 kind="bad_cameras")
    out = {"c2w": cams["c2w"].astype(np.float32), "K": cams["K"].astype(np.float32),
           "hw": cams["hw"].astype(np.int32)}
    problem = camera_problem(out["c2w"], out["K"], out["hw"]) if v else None
    if problem is not None:
        raise CorruptSampleError(key, CAMERAS, problem, kind="bad_cameras")
    return out


def camera_problem(c2w: np.ndarray, K: np.ndarray, hw: np.ndarray) -> str | None:
    """What is wrong with the first bad camera of (V,4,4) ``c2w``, (V,3,3) ``K``, (V,2) ``hw``, or None.

    A camera is usable when ``K`` is finite with fx, fy > 0, the rows (0, fy, cy) and (0, 0, 1) and the principal
    point inside the ``hw`` image, and ``c2w`` is finite with an orthonormal rotation of determinant +1 (within
    :data:`ROTATION_TOL`: float32 renders are ~1e-6 off) and the last row (0, 0, 0, 1). Anything else makes NaN or
    meaningless rays (an all-zero K divides by zero), so the sample is skipped. Checked for all views at once (tens
    of microseconds for 32 views: it runs on every sample the loaders read)."""
    k, m, hw = K.astype(np.float64), c2w.astype(np.float64), hw.astype(np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        r = m[:, :3, :3]
        ortho = np.abs(np.einsum("vji,vjk->vik", r, r) - np.eye(3)).max(axis=(1, 2))
        det = np.linalg.det(np.where(np.isfinite(r), r, 0.0))
        fixed_k = np.abs(k[:, 2] - (0.0, 0.0, 1.0)).max(axis=1)
        fixed_m = np.abs(m[:, 3] - (0.0, 0.0, 0.0, 1.0)).max(axis=1)
        # (bad views, what is wrong with view i), in the order a view's faults are reported
        checks = [
            (~np.isfinite(k).all(axis=(1, 2)), lambda i: "K holds NaN/inf"),
            (~np.isfinite(m).all(axis=(1, 2)), lambda i: "c2w holds NaN/inf"),
            ((hw <= 0).any(axis=1), lambda i: f"hw is {hw[i, 0]}x{hw[i, 1]}, expected a positive image size"),
            (~((k[:, 0, 0] > 0) & (k[:, 1, 1] > 0)),
             lambda i: f"K has fx = {k[i, 0, 0]:g}, fy = {k[i, 1, 1]:g}; both must be > 0 (focal lengths in pixels)"),
            ((fixed_k > ROTATION_TOL) | (np.abs(k[:, 1, 0]) > ROTATION_TOL * k[:, 1, 1]),
             lambda i: f"K is not an intrinsics matrix (rows 2 and 3 are {k[i, 1].tolist()}, {k[i, 2].tolist()}; "
                       "expected [0, fy, cy] and [0, 0, 1])"),
            (~((k[:, 0, 2] >= 0) & (k[:, 0, 2] <= hw[:, 1]) & (k[:, 1, 2] >= 0) & (k[:, 1, 2] <= hw[:, 0])),
             lambda i: f"K's principal point ({k[i, 0, 2]:g}, {k[i, 1, 2]:g}) is outside the {hw[i, 1]}x{hw[i, 0]} "
                       f"image (hw = {hw[i, 0]}, {hw[i, 1]})"),
            (fixed_m > ROTATION_TOL, lambda i: f"c2w's last row is {m[i, 3].tolist()}, expected [0, 0, 0, 1]"),
            (~(ortho <= ROTATION_TOL),
             lambda i: f"c2w's rotation is not orthonormal (|RᵀR - I| reaches {ortho[i]:.3g}, tolerance "
                       f"{ROTATION_TOL:g}): a scaled, sheared or all-zero rotation"),
            (~(np.abs(det - 1.0) <= ROTATION_TOL),
             lambda i: f"c2w's rotation has determinant {det[i]:.4g}, expected +1 (a reflection, not a camera pose)"),
        ]
        bad = np.stack([b for b, _ in checks])  # (checks, V)
    if not bad.any():
        return None
    view = int(np.flatnonzero(bad.any(axis=0))[0])
    return f"view {view}: " + checks[int(np.flatnonzero(bad[:, view])[0])][1](view)


def view_roles(meta: dict, num_views: int, key: str = "?") -> list[str]:
    """One role string per view (``view_roles`` or ``roles`` in meta.json); ``gt`` for all when absent."""
    roles = meta.get("view_roles", meta.get("roles"))
    if roles is None:
        return ["gt"] * num_views
    if not isinstance(roles, list) or len(roles) != num_views:
        got = len(roles) if isinstance(roles, list) else type(roles).__name__
        raise CorruptSampleError(key, META, f"view_roles must list {num_views} roles, got {got}",
                                 kind="bad_meta")
    return [str(r) for r in roles]


def read_header(sample: Mapping[str, Any]) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """(meta, cameras, view roles) of a sample, checked against each other: the cheap members a caller reads
    before it picks views (``num_views`` cameras when meta.json gives it, one role per camera). The sample's key
    must follow the format's key rule (:func:`~render_farm.shards.spec.check_key`): readers name output files after
    it, so a tar member such as ``../../x.rgba.png`` is a corrupt sample, never a path."""
    key = sample_key(sample)
    try:
        check_key(key)
    except ValueError as exc:
        raise CorruptSampleError(key, "__key__", f"{exc}; the sample is not format v1 (a hand-made or hostile tar?)",
                                 kind="bad_key") from None
    meta = read_meta(sample)
    cams = read_cameras(sample, meta.get("num_views"))
    return meta, cams, view_roles(meta, len(cams["c2w"]), sample_key(sample))


def _decode_png(sample: Mapping[str, Any], name: str, channels: int, dtype, hw) -> np.ndarray:
    key = sample_key(sample)
    buf = np.frombuffer(_member(sample, name), dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise CorruptSampleError(key, name, f"PNG decoding failed ({exc})", kind="bad_png") from exc
    if img is None:
        raise CorruptSampleError(key, name, f"not a decodable PNG ({len(buf)} bytes)", kind="bad_png")
    got_c = 1 if img.ndim == 2 else img.shape[2]
    if got_c != channels or img.dtype != dtype:
        raise CorruptSampleError(key, name, f"decoded as {img.dtype} with {got_c} channels, expected "
                                 f"{np.dtype(dtype)} with {channels}", kind="bad_png")
    if hw is not None and tuple(img.shape[:2]) != tuple(int(x) for x in hw):
        raise CorruptSampleError(key, name, f"image is {img.shape[0]}x{img.shape[1]} but cameras.npz hw says "
                                 f"{int(hw[0])}x{int(hw[1])}", kind="bad_png")
    return img


def decode_bgra(sample: Mapping[str, Any], view: int, hw=None) -> np.ndarray:
    """(H, W, 4) uint8 in OpenCV's BGRA order, straight alpha (what cv2 decodes; no conversion)."""
    return _decode_png(sample, view_member(view, "rgba"), 4, np.uint8, hw)


def decode_rgba(sample: Mapping[str, Any], view: int, hw=None) -> np.ndarray:
    """(H, W, 4) uint8 RGBA, straight alpha, of view ``view``."""
    return cv2.cvtColor(decode_bgra(sample, view, hw), cv2.COLOR_BGRA2RGBA)


def decode_depth_raw(sample: Mapping[str, Any], view: int, hw=None) -> np.ndarray:
    """(H, W) uint16 as stored (depth × depth_scale)."""
    return _decode_png(sample, view_member(view, "depth"), 1, np.uint16, hw)


def decode_depth(sample: Mapping[str, Any], view: int, depth_scale: float, hw=None) -> np.ndarray:
    """(H, W) float32 z-depth in metres; 0 = no surface."""
    return decode_depth_raw(sample, view, hw).astype(np.float32) * np.float32(1.0 / depth_scale)


def decode_normal(sample: Mapping[str, Any], view: int, hw=None) -> np.ndarray:
    """(H, W, 3) float32 world-space normals in [-1, 1]; 0 where the stored pixel is (0, 0, 0)."""
    bgr = _decode_png(sample, view_member(view, "normal"), 3, np.uint8, hw)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    n = rgb.astype(np.float32) * np.float32(2.0 / 255.0) - 1.0
    n[(rgb == 0).all(axis=-1)] = 0.0
    return n


def check_views(sample: Mapping[str, Any], indices, num_views: int, normals: bool = False) -> None:
    """Raise if a selected view index is out of range or one of its members is absent (before any decoding)."""
    key = sample_key(sample)
    for i in indices:
        if not 0 <= int(i) < num_views:
            raise CorruptSampleError(key, view_member(i, "rgba"), f"view {int(i)} is outside 0..{num_views - 1}",
                                     kind="bad_views")
        kinds = ("rgba", "depth", "normal") if normals else ("rgba", "depth")
        for kind in kinds:
            _member(sample, view_member(i, kind))


def has_gt_mesh(sample: dict) -> bool:
    """Whether the sample carries the optional ``mesh.npz`` (the geometry as rendered)."""
    return sample.get(GT_MESH) is not None


def read_gt_mesh(sample: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The rendered geometry of the optional ``mesh.npz``: (vertices (V, 3) float32 in the normalised world,
    faces (F, 3) int64), or None when the sample has no such member (shards written before it, or with
    ``gt_mesh_faces: 0``). A member that is there but unusable raises :class:`CorruptSampleError`."""
    if not has_gt_mesh(sample):
        return None
    key, raw = sample_key(sample), _member(sample, GT_MESH)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            missing = [n for n in ("vertices", "faces") if n not in npz.files]
            if missing:
                raise CorruptSampleError(key, GT_MESH, f"array {missing[0]!r} is missing (it holds {npz.files}); "
                                         "expected vertices and faces", kind="bad_mesh")
            verts, faces = np.asarray(npz["vertices"]), np.asarray(npz["faces"])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CorruptSampleError(key, GT_MESH, f"not a readable .npz ({exc})", kind="bad_mesh") from exc
    if verts.ndim != 2 or verts.shape[1] != 3 or not np.issubdtype(verts.dtype, np.floating) \
            or not np.isfinite(verts).all():
        raise CorruptSampleError(key, GT_MESH, f"vertices must be finite floats of shape (V, 3), got {verts.dtype} "
                                 f"{verts.shape}", kind="bad_mesh")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0 or not np.issubdtype(faces.dtype, np.integer) \
            or faces.min() < 0 or faces.max() >= len(verts):
        raise CorruptSampleError(key, GT_MESH, f"faces must be a non-empty (F, 3) integer array of indices below "
                                 f"{len(verts)}, got {faces.dtype} {faces.shape}", kind="bad_mesh")
    return verts.astype(np.float32), faces.astype(np.int64)
