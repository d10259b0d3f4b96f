"""Mesh utilities — the one home for them: dense field queries, marching cubes, mesh export, surface metrics.

Coordinates are lift3d world coordinates (right-handed, +Z up) of the normalised object in [-1, 1]^3 unless a
``normalization`` is given, in which case :func:`save_mesh` maps vertices back to the original asset frame with
``geometry.normalization.denormalize`` (``normalised = (original + offset) × scale``). glTF files are written
+Y up (``(x, y, z) → (x, z, −y)``, see :func:`save_mesh`'s ``y_up``); OBJ/PLY keep +Z up.

Grid convention: a resolution-R grid over ``bbox = (lo, hi)`` samples the cell corners
``x_i = lo + i·(hi − lo)/(R − 1)``, i = 0 … R−1 (both ends included), on every axis, indexed ``grid[i, j, k]`` =
value at ``(x_i, y_j, z_k)`` (``indexing="ij"``).

numpy + torch only; no Lightning.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Optional

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage import measure

from geometry.normalization import denormalize, normalize

SUPPORTED_MESH_FORMATS = (".glb", ".gltf", ".obj", ".ply")
GLTF_FORMATS = (".glb", ".gltf")  # +Y up by the glTF standard: save_mesh turns lift3d's +Z-up world for them


def z_up_to_y_up(verts: np.ndarray) -> np.ndarray:
    """(…, 3) lift3d world (+Z up) → +Y up: ``(x, y, z) → (x, z, −y)``, the inverse of Blender's glTF import turn
    ``(x, y, z)_gltf → (x, −z, y)``."""
    verts = np.asarray(verts)
    return np.stack([verts[..., 0], verts[..., 2], -verts[..., 1]], axis=-1)


def y_up_to_z_up(verts: np.ndarray) -> np.ndarray:
    """(…, 3) +Y up → lift3d world (+Z up): ``(x, y, z) → (x, −z, y)``, the turn Blender's glTF importer applies (and
    its OBJ importer, whose defaults are forward −Z, up Y); the inverse of :func:`z_up_to_y_up`."""
    verts = np.asarray(verts)
    return np.stack([verts[..., 0], -verts[..., 2], verts[..., 1]], axis=-1)


Y_UP_FORMATS = (".glb", ".gltf", ".obj")  # formats Blender 4.2's default importers turn from +Y up to +Z up
LOADABLE_MESH_FORMATS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


def load_mesh(path, normalization=None) -> tuple[np.ndarray, np.ndarray]:
    """A mesh file as (verts (V, 3) float64, faces (F, 3) int64) in the frame the render farm rendered it in.

    Every geometry of the file (scene graph transforms applied) is concatenated. Vertices are turned into lift3d's
    +Z-up world exactly as Blender 4.2's default importer for the format does (glTF/GLB and OBJ: +Y up turned,
    :func:`y_up_to_z_up`; PLY/STL/OFF kept as they are), then, with ``normalization`` (a shard's meta.json
    ``{"scale", "offset"}``), normalised into the shard's [-1, 1]^3 frame: ``(v + offset) × scale``.
    FBX is rendered by the farm but cannot be read by trimesh: convert such ground truth to GLB first.
    """
    path = str(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in LOADABLE_MESH_FORMATS:
        raise ValueError(f"cannot load {path!r}: {ext or '(no extension)'!r} is not one of "
                         f"{', '.join(LOADABLE_MESH_FORMATS)} (convert FBX and others to GLB, e.g. with Blender)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mesh file {path!r} does not exist")
    try:
        loaded = trimesh.load(path, force="scene", process=False)
        mesh = loaded.to_geometry() if hasattr(loaded, "to_geometry") else loaded.dump(concatenate=True)
    except Exception as exc:  # trimesh raises many types on bad files; name the file whatever it was
        raise ValueError(f"cannot read mesh {path!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"mesh {path!r} has no triangles (a point cloud or an empty scene?)")
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    if ext in Y_UP_FORMATS:
        verts = y_up_to_z_up(verts)
    if normalization is not None:
        verts = normalize(verts, float(normalization["scale"]), normalization["offset"])
    return verts, np.asarray(mesh.faces, dtype=np.int64)


def _check_grid_args(resolution, bbox) -> tuple[int, float, float]:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2 (grid corners per axis), got {resolution!r}")
    lo, hi = (float(b) for b in bbox)
    if not lo < hi:
        raise ValueError(f"bbox must be (lo, hi) with lo < hi, got {tuple(bbox)!r}; the default is (-1.0, 1.0)")
    return int(resolution), lo, hi


def _axis(resolution: int, lo: float, hi: float, device=None) -> torch.Tensor:
    """(R,) float32 corner coordinates lo + i·(hi − lo)/(R − 1), computed in float64 then rounded once."""
    return torch.linspace(lo, hi, resolution, dtype=torch.float64).to(device=device, dtype=torch.float32)


def grid_points(resolution: int, bbox=(-1.0, 1.0), device=None) -> torch.Tensor:
    """(R, R, R, 3) float32 cell-corner coordinates with ``grid[i, j, k] = (x_i, y_j, z_k)`` (indexing "ij")."""
    resolution, lo, hi = _check_grid_args(resolution, bbox)
    axis = _axis(resolution, lo, hi, device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


@torch.no_grad()
def query_grid(fn: Callable[[torch.Tensor], torch.Tensor], resolution: int = 256, bbox=(-1.0, 1.0),
               chunk: int = 2 ** 18, device=None) -> torch.Tensor:
    """Evaluate ``fn(points (N, 3)) -> (N,)`` on the corners of a resolution³ grid, ``chunk`` points at a time.

    Points are float32 on ``device`` (they are generated per chunk, so the full grid is never held there); the
    result is an (R, R, R) float32 tensor on the CPU, laid out as :func:`grid_points`. Runs under ``no_grad``.
    """
    resolution, lo, hi = _check_grid_args(resolution, bbox)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer (points per call of fn), got {chunk!r}")
    axis = _axis(resolution, lo, hi, device)
    total = resolution ** 3
    out = torch.empty(total, dtype=torch.float32)
    for start in range(0, total, chunk):
        idx = torch.arange(start, min(start + chunk, total), device=axis.device)
        i, j, k = idx // resolution ** 2, (idx // resolution) % resolution, idx % resolution
        points = torch.stack([axis[i], axis[j], axis[k]], dim=-1)  # (n, 3)
        values = torch.as_tensor(fn(points))
        if values.shape not in ((len(idx),), (len(idx), 1)):
            raise ValueError(f"fn must map points (N, 3) to values (N,) or (N, 1); for N={len(idx)} it returned "
                             f"shape {tuple(values.shape)}")
        out[start:start + len(idx)] = values.reshape(-1).to(device="cpu", dtype=torch.float32)
    return out.reshape(resolution, resolution, resolution)


def _grid_array(grid, dtype) -> np.ndarray:
    """A field sampled as :func:`query_grid` does (numpy array or torch tensor) as a 3-D numpy array of ``dtype``."""
    if isinstance(grid, torch.Tensor):
        grid = grid.detach().to("cpu", torch.float32).numpy()
    grid = np.asarray(grid, dtype=dtype)
    if grid.ndim != 3 or min(grid.shape) < 2:
        raise ValueError(f"grid must be a 3-D array with at least 2 corners per axis, got shape {grid.shape}")
    return grid


def opacity_level(grid, bbox=(-1.0, 1.0)) -> float:
    """The density level where rays from outside a density grid turn half opaque: the automatic mesh level.

    Every grid line along each axis, in both directions, is a ray; its optical depth is the running sum of density ×
    corner spacing (the quadrature the renderers use). Where it first reaches ln 2 (transmittance 1/2: the rendered
    surface) the ray's level is the density there, interpolated linearly between the two corners around the crossing
    (as marching cubes interpolates); the result is the median over all rays that turn opaque. A sharp field's mesh
    lands at its jump, a soft one's where it renders as a surface, so the mesh sits where the images see it.
    Raises ``ValueError`` ("no surface") when no ray turns half opaque (an empty field), or when rays do so at a
    density not twice that of empty space (the grid's 10th percentile): fog, e.g. an untrained model's flat field.
    """
    grid = _grid_array(grid, np.float64)
    lo, hi = (float(b) for b in bbox)
    sigma = np.clip(np.nan_to_num(grid, nan=0.0, posinf=0.0), 0.0, None)
    levels = []
    for axis in range(3):
        step = (hi - lo) / (grid.shape[axis] - 1)
        lines = np.moveaxis(sigma, axis, -1).reshape(-1, grid.shape[axis])
        for ray in (lines, lines[:, ::-1]):
            depth = np.cumsum(ray * step, axis=1)
            hit = depth[:, -1] >= np.log(2.0)
            rows, depth = ray[hit], depth[hit]
            first = np.argmax(depth >= np.log(2.0), axis=1)
            inner = first > 0  # a ray already opaque at the boundary says nothing about where the surface is
            k, rows, before = first[inner], rows[inner], depth[inner]
            idx = np.arange(len(k))
            below, above = rows[idx, k - 1], rows[idx, k]
            f = (np.log(2.0) - before[idx, k - 1]) / (above * step)  # where in the step the depth reaches ln 2
            levels.append(below + f * (above - below))  # the density there, interpolated as marching cubes does
    found = np.concatenate(levels)
    if found.size == 0:
        deepest = max(float(sigma.sum(axis=a).max()) * (hi - lo) / (grid.shape[a] - 1) for a in range(3))
        raise ValueError(f"no surface: no ray through the {'×'.join(map(str, grid.shape))} grid turns half opaque "
                         f"(largest optical depth along a grid line {deepest:.3g} < ln 2); the model may be "
                         f"untrained or its density field empty")
    level = float(np.median(found))
    empty = float(np.quantile(sigma, 0.1))  # empty space: an object fills well under 90% of its grid
    if not level > 2.0 * empty:
        raise ValueError(f"no surface: rays turn half opaque at density {level:.3g}, not above the empty space's "
                         f"{empty:.3g} (10th percentile) by 2×: a nearly flat (foggy) field, e.g. an untrained model")
    return level


def marching_cubes(grid, level: float, bbox=(-1.0, 1.0), inside: str = "above", closed: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Extract the ``level`` isosurface of a field sampled as :func:`query_grid` does (skimage, Lewiner).

    Args:
        grid: (X, Y, Z) numpy array or torch tensor; ``grid[i, j, k]`` is the field at corner (x_i, y_j, z_k) of
            ``bbox`` (each axis spans ``bbox`` with its own number of corners).
        level: the iso value (e.g. a density threshold, or 0 for an SDF).
        inside: ``"above"`` when the object is where field > level (density, occupancy), ``"below"`` when it is
            where field < level (signed distance, negative inside).
        closed: cap the surface where the object reaches the grid's boundary (the grid is padded with an outside
            value and the cap vertices are clamped onto the bbox), so the mesh is closed (watertight) even then:
            what a volume measurement needs. Off by default: an open cut shows that the object left the grid.

    Returns:
        verts (V, 3) float32 in world coordinates, faces (F, 3) int64 wound counter-clockwise seen from outside,
        so face normals (right-hand rule) point out of the object.
    """
    if inside not in ("above", "below"):
        raise ValueError(f"inside must be 'above' (field > level inside, e.g. density) or 'below' (field < level "
                         f"inside, e.g. an SDF), got {inside!r}")
    grid = _grid_array(grid, np.float32)
    if not np.all(np.isfinite(grid)):
        raise ValueError(f"grid has {int(np.sum(~np.isfinite(grid)))} non-finite values; replace NaN/inf (e.g. "
                         f"torch.nan_to_num) before extracting a surface")
    lo, hi = (float(b) for b in bbox)
    if not lo < hi:
        raise ValueError(f"bbox must be (lo, hi) with lo < hi, got {tuple(bbox)!r}")
    fmin, fmax = float(grid.min()), float(grid.max())
    if not fmin < level < fmax:
        raise ValueError(f"no surface: the field ranges over [{fmin:.6g}, {fmax:.6g}], level {level:.6g} is outside "
                         f"it; the model may be untrained/empty or the level wrong")
    spacing = tuple((hi - lo) / (n - 1) for n in grid.shape)
    origin = np.full(3, lo)
    if closed:  # one layer of empty space around the grid
        grid = np.pad(grid, 1, constant_values=fmin - 1.0 if inside == "above" else fmax + 1.0)
        origin = origin - np.asarray(spacing)
    verts, faces, _, _ = measure.marching_cubes(grid, level=level, spacing=spacing)
    # skimage's default ('descent') winds faces so normals point towards higher values: inward for a field that is
    # high inside. Reverse the winding there so normals point outward in both cases.
    if inside == "above":
        faces = faces[:, ::-1]
    verts = verts + origin
    if closed:
        verts = np.clip(verts, lo, hi)  # caps onto the bbox faces (moving vertices keeps the mesh closed)
    return verts.astype(np.float32), np.ascontiguousarray(faces, dtype=np.int64)


def save_mesh(path, verts, faces, vertex_colors=None, normalization=None, *, y_up: Optional[bool] = None) -> str:
    """Write a triangle mesh with trimesh; the format follows the extension (.glb, .gltf, .obj, .ply).

    Args:
        verts: (V, 3) vertices in lift3d's world frame (right-handed, +Z up; normalised unless ``normalization``).
        faces: (F, 3) vertex indices.
        vertex_colors: optional (V, 3) or (V, 4) RGB(A), floats in [0, 1] or uint8.
        normalization: optional ``{"scale": s, "offset": [ox, oy, oz]}`` as in a shard's meta.json; vertices are
            then mapped back to the original asset frame, ``original = normalised / scale − offset``.
        y_up: turn the +Z-up world to +Y up on writing, ``(x, y, z) → (x, z, −y)`` (after any denormalisation): the
            inverse of the +Y-up → +Z-up turn Blender's glTF importer applies, so importing the file into Blender
            (or any glTF viewer) shows the object upright, in the frame the shards were rendered in. ``None``
            (default): True for .glb/.gltf (glTF is +Y up by its standard), False for .obj/.ply (written as
            they are, +Z up). The turn is a proper rotation, so face winding and normals stay outward.

    Vertex order and count are kept (``process=False``). Parent directories are created. Returns ``str(path)``.
    """
    path = str(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in SUPPORTED_MESH_FORMATS:
        raise ValueError(f"unsupported mesh extension {ext or '(none)'!r} in {path!r}; use one of "
                         f"{', '.join(SUPPORTED_MESH_FORMATS)}")
    verts = np.asarray(verts.detach().cpu() if isinstance(verts, torch.Tensor) else verts, dtype=np.float64)
    faces = np.asarray(faces.detach().cpu() if isinstance(faces, torch.Tensor) else faces, dtype=np.int64)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"verts must have shape (V, 3), got {verts.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3) (triangles), got {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(verts)):
        raise ValueError(f"faces index vertices {faces.min()}..{faces.max()} but there are {len(verts)} vertices")
    if normalization is not None:
        missing = {"scale", "offset"} - set(normalization)
        if missing:
            raise ValueError(f"normalization needs keys 'scale' and 'offset' (meta.json's normalization), "
                             f"missing {sorted(missing)} in {normalization!r}")
        scale = float(normalization["scale"])
        if not np.isfinite(scale) or scale == 0.0:
            raise ValueError(f"normalization scale must be finite and non-zero, got {normalization['scale']!r}")
        verts = denormalize(verts, scale, normalization["offset"])
    if y_up is None:
        y_up = ext in GLTF_FORMATS
    if y_up:
        verts = z_up_to_y_up(verts)
    colors = None
    if vertex_colors is not None:
        colors = np.asarray(vertex_colors.detach().cpu() if isinstance(vertex_colors, torch.Tensor)
                            else vertex_colors)
        if colors.ndim != 2 or colors.shape != (len(verts), colors.shape[1]) or colors.shape[1] not in (3, 4):
            raise ValueError(f"vertex_colors must have shape (V, 3) or (V, 4) with V={len(verts)}, "
                             f"got {colors.shape}")
        if colors.dtype != np.uint8:
            colors = colors.astype(np.float64)
            if colors.size and (not np.all(np.isfinite(colors)) or colors.min() < 0.0 or colors.max() > 1.0):
                raise ValueError(f"float vertex_colors must lie in [0, 1], got range [{np.nanmin(colors):.4g}, "
                                 f"{np.nanmax(colors):.4g}]; pass uint8 for 0-255 colours")
            colors = np.round(colors * 255.0).astype(np.uint8)
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, vertex_colors=colors, process=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    mesh.export(path)
    return path


def sample_surface(verts, faces, n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) float64 points drawn uniformly over the surface area (faces chosen ∝ area, uniform barycentrics).

    The same (mesh, n, seed) always gives the same points.
    """
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer number of points, got {n!r}")
    tri = verts[faces]  # (F, 3 corners, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    if len(faces) == 0 or not area.sum() > 0:
        raise ValueError(f"cannot sample a surface of zero area ({len(faces)} faces, total area {area.sum():.3g})")
    rng = np.random.default_rng(seed)
    face = rng.choice(len(faces), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1.0  # fold the unit square onto the triangle
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    t = tri[face]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def _nn_distances(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    for name, p in (("a", a), ("b", b)):
        if p.ndim != 2 or len(p) == 0:
            raise ValueError(f"point set {name} must have shape (N, D) with N > 0, got {p.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"point sets differ in dimension: a is {a.shape}, b is {b.shape}")
    return cKDTree(b).query(a)[0], cKDTree(a).query(b)[0]


def chamfer_distance(a, b) -> float:
    """Symmetric Chamfer distance (L2, not squared):
    ``0.5 · (mean_{p∈a} min_{q∈b} ‖p−q‖ + mean_{q∈b} min_{p∈a} ‖p−q‖)``."""
    d_ab, d_ba = _nn_distances(a, b)
    return float(0.5 * (d_ab.mean() + d_ba.mean()))


def fscore(a, b, tau: float) -> float:
    """F-score at threshold ``tau`` of predicted points ``a`` against reference points ``b``.

    precision = fraction of a with ``min_{q∈b} ‖p−q‖ < tau``; recall = fraction of b with ``min_{p∈a} ‖p−q‖ < tau``;
    F = 2·precision·recall / (precision + recall), and 0 when both are 0.
    """
    if not tau > 0:
        raise ValueError(f"tau must be a positive distance, got {tau!r}")
    d_ab, d_ba = _nn_distances(a, b)
    precision, recall = float(np.mean(d_ab < tau)), float(np.mean(d_ba < tau))
    return 0.0 if precision + recall == 0.0 else 2.0 * precision * recall / (precision + recall)
