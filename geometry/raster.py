"""A small software rasterizer for triangle meshes with per-vertex colours (torch, CPU or GPU), and turntables.

Used for the turntable previews of predicted meshes (``lift3d predict``); numpy + torch only, no Lightning.

Conventions (``geometry.cameras`` states them): ``c2w`` is an OpenCV camera-to-world (x right, y down, z forward),
``K`` is in pixels, pixel (u, v) covers [u, u+1) × [v, v+1) and is *sampled at its centre* (u + 0.5, v + 0.5); depth
is z-depth along the camera's +z axis. World +Z is up.

How :func:`render_mesh` works — set-up (``_scene``), projection, visibility (``_visibility``), shading (``_shade``)

1. Vertices go to the camera frame and are projected with ``K`` (float64, ``geometry.rays.project``).
2. **Near-plane culling**: a face with any vertex at camera z ≤ ``near`` is dropped whole (no clipping). Meshes
   seen from outside, as in a turntable, lose nothing; a face that crosses the camera plane would otherwise
   project to a nonsensical, inverted triangle.
3. **No backface culling**: both windings are drawn (marching-cubes meshes of a noisy field are not always closed
   or consistently wound), and shading is two-sided.
4. **Coverage**: a pixel is covered by a face when its centre lies inside the projected triangle, edges included
   (a tolerance of 1e-6 in barycentric units, so faces sharing an edge leave no cracks). Faces are bucketed by the
   power-of-two size (width and height separately) of the pixel-centre bounding box of their projection; each
   bucket enumerates, for all its faces at once, the candidate pixels of that box, chunked to bound memory
   (``max_candidates``). The only Python loops are over buckets and chunks, never over faces.
5. **Visibility** (z-buffer): every covered (pixel, face) fragment carries a 64-bit key
   ``float32 bits of its depth << 32 | face index``; positive floats order like their bit patterns, so one
   ``scatter_reduce(amin)`` leaves the nearest face per pixel (the lower face index on an exact depth tie), in any
   face order, deterministically, on CPU and GPU.
6. **Attributes**: for each pixel's winning face, barycentrics are recomputed in float64 at the pixel centre and
   made perspective-correct (screen-space weights divided by vertex depth, renormalised; depth = the harmonic
   interpolation, exact for a planar triangle).
7. **Shading**: ``"lambert"`` — interpolated vertex colour × (ambient + (1 − ambient)·|n·l|) with the face's
   geometric normal n (two-sided: |n·l|) and a directional light l, by default a *headlight* (from the camera
   towards the scene, so faces seen head-on keep their colour); ``"flat"`` — the same lighting on one colour per
   face (the mean of its vertex colours): a faceted look; ``"none"`` — interpolated vertex colours, unlit.

Turntables: :func:`turntable_cameras` is one ring of the ``orbit`` rig (``geometry.rigs``) about the world Z axis
through ``target`` at a fixed elevation, starting at azimuth 0 (the front view, on −Y, as
``geometry.cameras.spherical_to_cartesian``); :func:`render_turntable` frames a mesh automatically (bounding-box
centre, a radius that fits its bounding sphere in the field of view). ``geometry.image.write_turntable`` writes the
frames as a looping GIF or an MP4.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from geometry.rays import project
from geometry.rigs import framing_distance, orbit

SHADINGS = ("lambert", "flat", "none")
DEFAULT_COLOUR = 0.8  # light grey for meshes without vertex colours
AMBIENT = 0.3
_EMPTY = torch.iinfo(torch.int64).max
_EDGE_EPS = 1e-6  # coverage tolerance, barycentric units

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]


def _tensor(x, dtype, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def _colours(colors, n: int, device) -> torch.Tensor:
    """(V, 3) float64 colours in [0, 1] from None, floats in [0, 1] or uint8; an alpha column is dropped."""
    if colors is None:
        return torch.full((n, 3), DEFAULT_COLOUR, dtype=torch.float64, device=device)
    raw = colors if isinstance(colors, torch.Tensor) else torch.as_tensor(np.asarray(colors))
    if raw.ndim != 2 or raw.shape[0] != n or raw.shape[1] not in (3, 4):
        raise ValueError(f"colors must have shape (V, 3) or (V, 4) with V={n} (one colour per vertex), "
                         f"got {tuple(raw.shape)}")
    c = raw.detach().to(device=device)[:, :3]
    if c.dtype == torch.uint8:
        return c.to(torch.float64) / 255.0
    c = c.to(torch.float64)
    if c.numel() and (not torch.isfinite(c).all() or c.min() < 0.0 or c.max() > 1.0):
        raise ValueError(f"float colors must lie in [0, 1], got range [{float(c.min()):.4g}, {float(c.max()):.4g}]; "
                         f"pass uint8 for 0-255 colours")
    return c


def _affine_barycentrics(uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Screen-space barycentrics of triangles (n, 3, 2) as affine functions of the pixel position.

    Returns ``coef`` (n, 3, 3) with ``l_i(u, v) = coef[:, i, 0]·u + coef[:, i, 1]·v + coef[:, i, 2]`` and the
    doubled signed area (n,). l_i is 1 at vertex i and 0 on the opposite edge, whatever the winding.
    """
    a, b, c = uv[:, 0], uv[:, 1], uv[:, 2]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    coefs = []
    for p, q in ((b, c), (c, a), (a, b)):  # l_i ∝ edge function of the edge opposite vertex i
        # edge(p, q; x) = (q - p) × (x - p) = -(q_y - p_y)·x_u + (q_u - p_u)·x_v + (q_y - p_y)·p_u - (q_u - p_u)·p_v
        du, dv = q[:, 0] - p[:, 0], q[:, 1] - p[:, 1]
        coefs.append(torch.stack([-dv, du, dv * p[:, 0] - du * p[:, 1]], dim=-1))
    coef = torch.stack(coefs, dim=1) / area2[:, None, None]
    return coef, area2


def _check_camera(c2w: torch.Tensor, K: torch.Tensor, height, width) -> None:
    if c2w.shape != (4, 4):
        raise ValueError(f"c2w must be one (4, 4) OpenCV camera-to-world matrix, got shape {tuple(c2w.shape)}")
    if K.shape != (3, 3):
        raise ValueError(f"K must be one (3, 3) intrinsics matrix in pixels, got shape {tuple(K.shape)}")
    for name, n in (("height", height), ("width", width)):
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"{name} must be a positive number of pixels, got {n!r}")


class _Scene(NamedTuple):
    """render_mesh's inputs, checked and on one device: float64 geometry, int64 faces, (V, 3) colours in [0, 1]."""

    verts: torch.Tensor
    faces: torch.Tensor
    colours: torch.Tensor
    c2w: torch.Tensor
    K: torch.Tensor
    background: torch.Tensor
    height: int
    width: int


def _scene(verts, faces, colors, c2w, K, height, width, background, shading: str, near: float) -> _Scene:
    """Check render_mesh's arguments (errors name the bad value) and bring them to the vertices' device."""
    if shading not in SHADINGS:
        raise ValueError(f"shading {shading!r}: expected one of {', '.join(SHADINGS)}")
    if not near > 0:
        raise ValueError(f"near must be a positive camera-space depth, got {near!r}")
    device = verts.device if isinstance(verts, torch.Tensor) else torch.device("cpu")
    v = _tensor(verts, torch.float64, device)
    f = _tensor(faces, torch.int64, device)
    cam2world, intrinsics = _tensor(c2w, torch.float64, device), _tensor(K, torch.float64, device)
    _check_camera(cam2world, intrinsics, height, width)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"verts must have shape (V, 3), got {tuple(v.shape)}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3) (triangles), got {tuple(f.shape)}")
    if f.numel() and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"faces index vertices {int(f.min())}..{int(f.max())} but there are {len(v)} vertices")
    col = _colours(colors, len(v), device)
    bg = _tensor(background, torch.float64, device).reshape(-1)
    if bg.shape != (3,):
        raise ValueError(f"background must be an RGB triple in [0, 1], got {background!r}")
    return _Scene(v, f, col, cam2world, intrinsics, bg, int(height), int(width))


@torch.no_grad()
def render_mesh(verts: ArrayLike, faces: ArrayLike, colors: Optional[ArrayLike], c2w: ArrayLike, K: ArrayLike,
                height: int, width: int, background: Sequence[float] = (1.0, 1.0, 1.0), shading: str = "lambert",
                light_dir: Optional[ArrayLike] = None, *, near: float = 1e-2, ambient: float = AMBIENT,
                max_candidates: int = 1 << 20) -> dict[str, torch.Tensor]:
    """Rasterize a triangle mesh seen by one OpenCV pinhole camera (see the module docstring for the method).

    Args:
        verts: (V, 3) world-space vertices; a tensor's device is where the rendering runs (numpy: the CPU).
        faces: (F, 3) vertex indices.
        colors: (V, 3) or (V, 4) per-vertex RGB(A) in [0, 1] (or uint8), or None for light grey.
        c2w: (4, 4) OpenCV camera-to-world; K: (3, 3) intrinsics in pixels of the (height, width) image.
        background: RGB in [0, 1] of pixels that no face covers.
        shading: ``"lambert"`` (vertex colours, two-sided Lambert), ``"flat"`` (one colour per face, Lambert) or
            ``"none"`` (vertex colours, unlit).
        light_dir: world direction *towards* a directional light; None: a headlight (the camera's −z axis).
        near: faces with any vertex at camera z ≤ near are dropped (near-plane culling, no clipping).
        ambient: the unlit share of the Lambert term (faces edge-on to the light keep this much of their colour).
        max_candidates: bound on (face, candidate pixel) pairs held at once (≈ 100 bytes each; a quarter as
            many pixels at a time in the attribute pass, ≈ 400 bytes each): ~100 MB by default.

    Returns:
        dict of tensors on the vertices' device: ``rgb`` (H, W, 3) float32 in [0, 1], ``alpha`` (H, W) float32
        (1 where a face covers the pixel centre, else 0), ``depth`` (H, W) float32 z-depth (0 where empty) and
        ``face_id`` (H, W) int64 (the visible face's index into ``faces``, −1 where empty).
    """
    scene = _scene(verts, faces, colors, c2w, K, height, width, background, shading, near)
    # 1. camera frame and projection (steps 1–2 of the module docstring)
    uv, z = project(scene.verts, scene.c2w, scene.K, near)
    tri_uv, tri_z = uv[scene.faces], z[scene.faces]  # (F, 3, 2), (F, 3)
    coef, area2 = _affine_barycentrics(tri_uv)
    # 2. visibility: the nearest face at every covered pixel centre (steps 3–5)
    zbuf = _visibility(tri_uv, tri_z, coef, area2, near, scene.height, scene.width, max_candidates)
    # 3. shading: attributes of each pixel's winning face at its centre (steps 6–7)
    light = -scene.c2w[:3, 2] if light_dir is None else _tensor(light_dir, torch.float64, scene.verts.device)
    return _shade(scene, zbuf, coef, tri_z, shading, light.reshape(3), ambient, max(1, max_candidates // 4))


def _visibility(tri_uv: torch.Tensor, tri_z: torch.Tensor, coef: torch.Tensor, area2: torch.Tensor, near: float,
                H: int, W: int, max_candidates: int) -> torch.Tensor:
    """(H·W,) int64 z-buffer of fragment keys (depth bits << 32 | face index; ``_EMPTY`` where no face covers).

    Faces that can cover a pixel centre (in front of the near plane, not degenerate, box inside the image) are
    bucketed by the power-of-two size of their pixel box and rasterized bucket by bucket, chunk by chunk.
    """
    device = tri_uv.device
    lo = tri_uv.amin(dim=1).clamp(-2.0, max(H, W) + 2.0)
    hi = tri_uv.amax(dim=1).clamp(-2.0, max(H, W) + 2.0)
    x0 = torch.ceil(lo[:, 0] - 0.5).long().clamp(min=0)  # first pixel whose centre is ≥ the box's left side
    y0 = torch.ceil(lo[:, 1] - 0.5).long().clamp(min=0)
    x1 = torch.floor(hi[:, 0] - 0.5).long().clamp(max=W - 1)
    y1 = torch.floor(hi[:, 1] - 0.5).long().clamp(max=H - 1)
    keep = (tri_z > near).all(dim=1) & (area2.abs() > 1e-12) & torch.isfinite(area2) & (x1 >= x0) & (y1 >= y0)
    ids = torch.nonzero(keep).squeeze(1)
    zbuf = torch.full((H * W,), _EMPTY, dtype=torch.int64, device=device)
    if not len(ids):
        return zbuf
    x0, y0, x1, y1 = x0[ids], y0[ids], x1[ids], y1[ids]
    # barycentrics and inverse depth as affine functions of the offset (dx, dy) from the box's first pixel
    # centre, float32 (offsets are small integers, so the float32 rounding stays ~1e-7)
    c = coef[ids]  # (n, 3, 3)
    start = torch.stack([x0, y0], dim=-1).to(torch.float64) + 0.5  # (n, 2)
    lin = c[..., 0] * start[:, None, 0] + c[..., 1] * start[:, None, 1] + c[..., 2]  # l_i at the start
    inv_z = 1.0 / tri_z[ids]  # (n, 3)
    rows = torch.cat([torch.stack([c[..., 0], c[..., 1], lin], dim=-1),  # l_0..l_2: (n, 3, 3)
                      torch.stack([(c[..., 0] * inv_z).sum(1), (c[..., 1] * inv_z).sum(1),
                                   (lin * inv_z).sum(1)], dim=-1)[:, None]], dim=1)  # 1/z: (n, 1, 3)
    rows = rows.to(torch.float32)  # (n, 4, 3): [d/ddx, d/ddy, value at start] of l0, l1, l2, 1/z
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    bucket = _ceil_log2(bw) * 64 + _ceil_log2(bh)
    for key in torch.unique(bucket).tolist():
        sel = torch.nonzero(bucket == key).squeeze(1)
        pw, ph = 1 << (key // 64), 1 << (key % 64)
        per_chunk = max(1, max_candidates // (pw * ph))
        dy, dx = torch.meshgrid(torch.arange(ph, device=device), torch.arange(pw, device=device), indexing="ij")
        dx, dy = dx.reshape(-1), dy.reshape(-1)  # (P,)
        for chunk in sel.split(per_chunk):
            _rasterize_chunk(chunk, dx, dy, rows, x0, y0, bw, bh, ids, W, zbuf)
    return zbuf


def _shade(scene: _Scene, zbuf: torch.Tensor, coef: torch.Tensor, tri_z: torch.Tensor, shading: str,
           light: torch.Tensor, ambient: float, pixels_per_chunk: int) -> dict[str, torch.Tensor]:
    """render_mesh's images from its z-buffer: per covered pixel, perspective-correct barycentrics of the winning
    face at the pixel centre (float64), its depth, and its colour shaded as ``shading`` says."""
    H, W, f64 = scene.height, scene.width, torch.float64
    hit = zbuf != _EMPTY
    face_id = torch.where(hit, zbuf & 0xFFFFFFFF, torch.full_like(zbuf, -1))
    rgb = scene.background.to(torch.float32).expand(H * W, 3).clone()
    depth = torch.zeros(H * W, dtype=torch.float32, device=zbuf.device)
    light = light / light.norm().clamp(min=1e-30)
    for pix in torch.nonzero(hit).squeeze(1).split(pixels_per_chunk):  # ~400 bytes a pixel
        fid = face_id[pix]
        p = torch.stack([(pix % W).to(f64) + 0.5, (pix // W).to(f64) + 0.5], dim=-1)  # pixel centres (n, 2)
        cf = coef[fid]  # (n, 3, 3)
        lam = cf[..., 0] * p[:, None, 0] + cf[..., 1] * p[:, None, 1] + cf[..., 2]  # screen-space (n, 3)
        w = lam / tri_z[fid]
        inv_depth = w.sum(dim=1)
        bary = w / inv_depth[:, None]  # perspective-correct barycentrics
        depth[pix] = (1.0 / inv_depth).to(torch.float32)
        vid = scene.faces[fid]  # (n, 3)
        if shading == "flat":
            colour = scene.colours[vid].mean(dim=1)
        else:
            colour = (bary[..., None] * scene.colours[vid]).sum(dim=1)
        if shading != "none":
            tri = scene.verts[vid]  # (n, 3, 3) world
            normal = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
            normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-30)
            colour = colour * (ambient + (1.0 - ambient) * (normal @ light).abs())[:, None]
        rgb[pix] = colour.clamp(0.0, 1.0).to(torch.float32)
    return {"rgb": rgb.reshape(H, W, 3), "alpha": hit.to(torch.float32).reshape(H, W),
            "depth": depth.reshape(H, W), "face_id": face_id.reshape(H, W)}


def _ceil_log2(n: torch.Tensor) -> torch.Tensor:
    """⌈log2 n⌉ of positive integers, exact (float log2 corrected by one integer check)."""
    e = torch.ceil(torch.log2(n.to(torch.float64))).long().clamp(min=0)
    e = torch.where((1 << e) < n, e + 1, e)
    return torch.where((e > 0) & ((1 << (e - 1)) >= n), e - 1, e)


def _rasterize_chunk(chunk, dx, dy, rows, x0, y0, bw, bh, ids, width, zbuf) -> None:
    """Fragments of the faces ``chunk`` (indices into the kept faces) over their candidate pixels → z-buffer."""
    r = rows[chunk]  # (n, 4, 3)
    fdx, fdy = dx.to(torch.float32), dy.to(torch.float32)
    # value of l0, l1, l2, 1/z at every candidate: (n, 4, P)
    vals = r[..., 2:3] + r[..., 0:1] * fdx + r[..., 1:2] * fdy
    inside = (dx < bw[chunk, None]) & (dy < bh[chunk, None]) & (vals[:, :3] >= -_EDGE_EPS).all(dim=1)
    face, cand = torch.nonzero(inside, as_tuple=True)
    if not len(face):
        return
    depth = (1.0 / vals[face, 3, cand]).to(torch.float32)
    gid = chunk[face]
    pix = (y0[gid] + dy[cand]) * width + x0[gid] + dx[cand]
    key = (depth.view(torch.int32).to(torch.int64) << 32) | ids[gid]
    zbuf.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)


def turntable_cameras(n_frames: int = 36, elevation_deg: float = 20.0, radius: float = 2.5, fov_deg: float = 40.0,
                      size: int = 256, target: Sequence[float] | np.ndarray = (0.0, 0.0, 0.0)
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Cameras orbiting the world Z axis through ``target`` (``geometry.rigs.orbit``, one ring):
    ``(c2w (N, 4, 4), K (3, 3))``, float64 numpy, OpenCV.

    Frame i sits at azimuth 360°·i/N (0 = the front, on −Y; towards +X next), ``elevation_deg`` above the XY plane
    through ``target``, ``radius`` from it, looking at it with image-up towards +Z; ``K`` is a ``size``² pinhole
    with field of view ``fov_deg``.
    """
    if isinstance(n_frames, bool) or int(n_frames) != n_frames or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
    if not radius > 0:
        raise ValueError(f"radius must be a positive distance from the target, got {radius!r}")
    if not -90.0 < elevation_deg < 90.0:
        raise ValueError(f"elevation_deg must be in (-90, 90) (an orbit about Z), got {elevation_deg!r}")
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    rig = orbit("turntable", int(size), views_per_ring=int(n_frames), elevations=(float(elevation_deg),),
                radius=float(radius), fov_deg=fov_deg, target=np.asarray(target, dtype=np.float64).reshape(3))
    return rig.c2w, rig.K[0]


def framing(verts: ArrayLike, fov_deg: float = 40.0, margin: float = 1.1) -> tuple[np.ndarray, float]:
    """``(target, radius)`` that frames a mesh: its bounding-box centre, and the distance at which its bounding
    sphere (about that centre) fills the field of view, times ``margin`` (the framing rule of ``geometry.rigs``,
    with this mesh's bounding sphere instead of the normalised box's)."""
    v = verts.detach().cpu().double().numpy() if isinstance(verts, torch.Tensor) else np.asarray(verts, np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or not len(v):
        raise ValueError(f"verts must have shape (V, 3) with V > 0, got {v.shape}")
    centre = 0.5 * (v.min(axis=0) + v.max(axis=0))
    extent = max(float(np.linalg.norm(v - centre, axis=1).max()), 1e-6)
    return centre, framing_distance(fov_deg, margin=margin - 1.0, radius=extent)


def render_turntable(verts: ArrayLike, faces: ArrayLike, colors: Optional[ArrayLike] = None, *,
                     n_frames: int = 36, elevation_deg: float = 20.0, radius: Optional[float] = None,
                     fov_deg: float = 40.0, size: int = 256, target: Optional[Sequence[float]] = None,
                     background: Sequence[float] = (1.0, 1.0, 1.0), shading: str = "lambert",
                     device: Optional[Union[str, torch.device]] = None) -> np.ndarray:
    """(N, size, size, 3) uint8 frames of the mesh on a :func:`turntable_cameras` orbit.

    ``target`` / ``radius`` None: framed automatically by :func:`framing` (bounding-box centre; a distance that fits
    the bounding sphere in the view). Rendering runs on ``device`` (default: the vertices' device, else the CPU).
    """
    if device is None:
        device = verts.device if isinstance(verts, torch.Tensor) else "cpu"
    auto_target, auto_radius = framing(verts, fov_deg)
    c2w, K = turntable_cameras(n_frames, elevation_deg, auto_radius if radius is None else radius, fov_deg, size,
                               auto_target if target is None else target)
    v = _tensor(verts, torch.float64, device)
    frames = []
    for cam in c2w:
        rgb = render_mesh(v, faces, colors, cam, K, size, size, background, shading)["rgb"]
        frames.append((rgb * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy())
    return np.stack(frames)
