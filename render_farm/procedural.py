"""Procedural, licence-free training objects after LRM-Zero's "Zeroverse" (Xie et al., NeurIPS 2024).

Object ``index`` of ``seed`` is a composition of 1-9 textured primitives (box, sphere, cylinder, cone, torus,
capsule) with random non-uniform scales, rotations and placements, overlapping or not, each with its own procedural
texture (noise, stripes, checker, gradient) and material (roughness, metallic). As in the paper, parts may be
augmented:

* ``height_field``: the part's surface is displaced by a smooth random height field (sum of sinusoids) along the
  direction away from its centre (from its core circle for a torus), so seams and box edges stay closed;
* ``boolean_difference``: a cutter primitive is subtracted from the part. The difference is taken here, in numpy:
  both solids are signed-distance functions in the part's frame, the difference is ``max(d_part, -d_cutter)`` on a
  grid, and its surface is extracted with marching cubes (scikit-image), UV-mapped by box projection. The GLB holds
  the finished geometry, so the farm renders it like any other asset (no Blender modifier, no extra dependency);
* ``wireframe``: the part is replaced by thin tubes along the edges of its low-poly version (thin structures).

Two steps, both deterministic: :func:`make_recipe` turns (seed, index) into a JSON-able recipe (every number rounded
to 4 decimals, so the recipe itself is the specification), and :func:`build_glb` turns a recipe into GLB bytes
(identical bytes for an identical recipe). meta.json keeps the recipe (``source_metadata``), so ``build_glb`` of a
stored recipe regenerates the asset. :class:`ProceduralSource` is the farm's asset source (``lift3d-render
procedural``): it writes each object's GLB under ``<out>/_assets/`` when the object is fetched, and the farm
normalises, renders and shards it exactly as a ``--glb-dir`` asset.
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import trimesh
from PIL import Image

from render_farm.sources import Asset

GENERATOR = "lift3d-procedural"
GENERATOR_VERSION = 1
PRIMITIVES = ("box", "sphere", "cylinder", "cone", "torus", "capsule")
AUGMENTATIONS = ("none", "height_field", "boolean_difference", "wireframe")
AUGMENTATION_WEIGHTS = (0.45, 0.2, 0.2, 0.15)
TEXTURES = ("noise", "stripes", "checker", "gradient")
CUTTERS = ("box", "sphere", "cylinder")
MAX_PARTS = 9
TEXTURE_SIZE = 64
SDF_GRID = 32  # marching-cubes cells per side of a boolean part's local box
_SEED_DOMAIN = 0x5EED17  # keeps these streams apart from other uses of the same (seed, index)

# Unit primitives in their local frame (before the part's scale): about [-0.5, 0.5]^3, +Z the axis of revolution.
TORUS_MAJOR, TORUS_MINOR = 0.35, 0.15
CAPSULE_RADIUS = 0.25


# --------------------------------------------------------------------------------------------------------------------
# Recipe: (seed, index) -> JSON-able dict
# --------------------------------------------------------------------------------------------------------------------

def asset_uid(seed: int, index: int) -> str:
    """The object id (shard key) of object ``index`` of ``seed``: ``procedural-<seed>-<index:06d>``."""
    return f"procedural-{seed}-{index:06d}"


def _r(x) -> float:
    """A number rounded to 4 decimals: what the recipe stores and the builder reads."""
    return round(float(x), 4)


def _rs(x) -> list[float]:
    """Numbers rounded to 4 decimals, as a list."""
    return [_r(v) for v in np.ravel(x)]


def _colour(rng: np.random.Generator) -> list[int]:
    return [int(c) for c in rng.integers(0, 256, size=3)]


def _texture(rng: np.random.Generator) -> dict:
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    tex: dict = {"kind": kind, "colours": [_colour(rng), _colour(rng)]}
    if kind == "noise":
        tex.update(cells=int(rng.integers(3, 13)), octaves=int(rng.integers(1, 4)), noise_seed=int(rng.integers(2**31)))
    elif kind == "stripes":
        tex.update(frequency=_r(rng.uniform(1.5, 10.0)), angle=_r(rng.uniform(0.0, np.pi)),
                   duty=_r(rng.uniform(0.3, 0.7)))
    elif kind == "checker":
        tex.update(cells=int(rng.integers(2, 13)))
    else:
        tex.update(angle=_r(rng.uniform(0.0, 2 * np.pi)))
    return tex


def _random_rotation(rng: np.random.Generator) -> list[float]:
    """A uniformly random rotation as a unit quaternion (w, x, y, z)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    return _rs(q if q[0] >= 0 else -q)


def _part(rng: np.random.Generator) -> dict:
    kind = PRIMITIVES[int(rng.integers(len(PRIMITIVES)))]
    part: dict = {
        "kind": kind,
        "scale": _rs(rng.uniform(0.15, 0.9, size=3)),
        "rotation": _random_rotation(rng),
        "translation": _rs(rng.uniform(-0.45, 0.45, size=3)),
        "texture": _texture(rng),
        "material": {"roughness": _r(rng.uniform(0.3, 1.0)), "metallic": _r(rng.choice([0.0, rng.uniform(0, 0.6)]))},
    }
    aug = AUGMENTATIONS[int(rng.choice(len(AUGMENTATIONS), p=AUGMENTATION_WEIGHTS))]
    if aug == "height_field":
        waves = int(rng.integers(2, 6))
        part["height_field"] = {"amplitude": _r(rng.uniform(0.03, 0.1)),
                                "directions": [_rs(d / np.linalg.norm(d)) for d in rng.normal(size=(waves, 3))],
                                "frequencies": _rs(rng.uniform(4.0, 14.0, size=waves)),
                                "phases": _rs(rng.uniform(0.0, 2 * np.pi, size=waves))}
    elif aug == "boolean_difference":
        direction = rng.normal(size=3)
        part["boolean_difference"] = {"cutter": CUTTERS[int(rng.integers(len(CUTTERS)))],
                                      "centre": _rs(direction / np.linalg.norm(direction) * rng.uniform(0.2, 0.45)),
                                      "scale": _rs(rng.uniform(0.3, 0.6, size=3)),
                                      "rotation": _random_rotation(rng)}
    elif aug == "wireframe":
        part["wireframe"] = {"radius": _r(rng.uniform(0.012, 0.03))}
    return part


def make_recipe(seed: int, index: int) -> dict:
    """The recipe of object ``index`` of ``seed``: a JSON-able dict, a function of (seed, index) alone."""
    if int(seed) != seed or seed < 0 or int(index) != index or index < 0:
        raise ValueError(f"procedural seed and index must be non-negative integers, got seed={seed!r} "
                         f"index={index!r}")
    rng = np.random.default_rng(np.random.SeedSequence([_SEED_DOMAIN, int(seed), int(index)]))
    parts = [_part(rng) for _ in range(int(rng.integers(1, MAX_PARTS + 1)))]
    return {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": int(seed), "index": int(index),
            "parts": parts}


def augmentation_of(part: dict) -> str:
    """Which augmentation a recipe part carries ("none" if it has none)."""
    return next((a for a in AUGMENTATIONS[1:] if a in part), "none")


# --------------------------------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------------------------------

def texture_image(tex: dict, size: int = TEXTURE_SIZE) -> Image.Image:
    """The RGB texture a recipe's ``texture`` entry describes (``size`` x ``size``)."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    kind = tex["kind"]
    if kind == "noise":  # value noise: octaves of bilinearly upsampled random grids
        rng = np.random.default_rng(tex["noise_seed"])
        t = np.zeros((size, size))
        for octave in range(tex["octaves"]):
            cells = tex["cells"] * 2**octave
            grid = rng.uniform(size=(cells + 1, cells + 1))
            gx, gy = x * cells, y * cells
            i, j = np.minimum(gx.astype(int), cells - 1), np.minimum(gy.astype(int), cells - 1)
            fx, fy = gx - i, gy - j
            layer = (grid[j, i] * (1 - fx) * (1 - fy) + grid[j, i + 1] * fx * (1 - fy)
                     + grid[j + 1, i] * (1 - fx) * fy + grid[j + 1, i + 1] * fx * fy)
            t += layer / 2**octave
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    elif kind == "stripes":
        phase = (x * np.cos(tex["angle"]) + y * np.sin(tex["angle"])) * tex["frequency"]
        t = ((phase % 1.0) < tex["duty"]).astype(float)
    elif kind == "checker":
        t = ((np.floor(x * tex["cells"]) + np.floor(y * tex["cells"])) % 2).astype(float)
    elif kind == "gradient":
        t = (x - 0.5) * np.cos(tex["angle"]) + (y - 0.5) * np.sin(tex["angle"])
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    else:
        raise ValueError(f"unknown procedural texture kind {kind!r}; expected one of {TEXTURES}")
    c0, c1 = (np.asarray(c, dtype=float) for c in tex["colours"])
    rgb = c0 * (1 - t[..., None]) + c1 * t[..., None]
    return Image.fromarray(np.round(rgb).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------------------------------------------------
# Geometry: unit primitives with UVs, in the part's local frame
# --------------------------------------------------------------------------------------------------------------------

def _grid(fn, nu: int, nv: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (nu+1) x (nv+1) vertex grid of ``fn(u, v)`` (u, v in [0, 1]): (vertices, faces, uv)."""
    u, v = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
    verts = fn(u.ravel(), v.ravel())
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return verts, faces, np.stack([u.ravel(), v.ravel()], 1)


def _revolve(radius, height, nu: int = 24, nv: int = 12):
    """A surface of revolution about +Z: profile (radius(v), z(v))."""
    def fn(u, v):
        r, z = radius(v), height(v)
        return np.stack([r * np.cos(2 * np.pi * u), r * np.sin(2 * np.pi * u), z], 1)
    return _grid(fn, nu, nv)


def _disk(z: float, r: float, nu: int = 24, nv: int = 4):
    return _revolve(lambda v: r * v, lambda v: np.full_like(v, z), nu, nv)


def _box_faces(n: int = 8):
    patches = []
    for axis in range(3):
        for sign in (-0.5, 0.5):
            a1, a2 = [a for a in range(3) if a != axis]

            def fn(u, v, axis=axis, sign=sign, a1=a1, a2=a2):
                p = np.zeros((len(u), 3))
                p[:, axis], p[:, a1], p[:, a2] = sign, u - 0.5, v - 0.5
                return p
            patches.append(_grid(fn, n, n))
    return patches


def _torus_core(p: np.ndarray) -> np.ndarray:
    """The nearest point of a torus's core circle (radius TORUS_MAJOR in the XY plane) to each point."""
    rho = np.maximum(np.linalg.norm(p[:, :2], axis=1, keepdims=True), 1e-9)
    return np.concatenate([p[:, :2] / rho * TORUS_MAJOR, np.zeros((len(p), 1))], 1)


def _outward(kind: str, p: np.ndarray) -> np.ndarray:
    """The unit direction a point of a unit primitive's surface moves along under a height field (and the side a
    face normal must point to): away from the centre, or from the core circle for a torus."""
    d = p - _torus_core(p) if kind == "torus" else p
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)


def primitive_patches(kind: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A unit primitive as UV-mapped patches (vertices, faces, uv); faces wound outward."""
    if kind == "box":
        patches = _box_faces()
    elif kind == "sphere":
        patches = [_revolve(lambda v: 0.5 * np.sin(np.pi * v), lambda v: -0.5 * np.cos(np.pi * v), 32, 16)]
    elif kind == "cylinder":
        patches = [_revolve(lambda v: np.full_like(v, 0.5), lambda v: v - 0.5, 24, 4), _disk(-0.5, 0.5),
                   _disk(0.5, 0.5)]
    elif kind == "cone":
        patches = [_revolve(lambda v: 0.5 * (1 - v), lambda v: v - 0.5, 24, 8), _disk(-0.5, 0.5)]
    elif kind == "torus":
        def fn(u, v):
            ring = TORUS_MAJOR + TORUS_MINOR * np.cos(2 * np.pi * v)
            return np.stack([ring * np.cos(2 * np.pi * u), ring * np.sin(2 * np.pi * u),
                             TORUS_MINOR * np.sin(2 * np.pi * v)], 1)
        patches = [_grid(fn, 32, 12)]
    elif kind == "capsule":
        r, half = CAPSULE_RADIUS, 0.5 - CAPSULE_RADIUS  # hemisphere, cylinder, hemisphere along a profile angle

        def profile(v):
            t = v * (np.pi + 2 * half / r)  # arc length / r along the profile
            bottom, top = t < np.pi / 2, t > np.pi / 2 + 2 * half / r
            a_top = t - 2 * half / r
            rad = np.where(bottom, r * np.sin(t), np.where(top, r * np.sin(a_top), r))
            z = np.where(bottom, -half - r * np.cos(t),
                         np.where(top, half - r * np.cos(a_top), -half + (t - np.pi / 2) * r))
            return rad, z
        patches = [_revolve(lambda v: profile(v)[0], lambda v: profile(v)[1], 24, 16)]
    else:
        raise ValueError(f"unknown procedural primitive {kind!r}; expected one of {PRIMITIVES}")
    out = []
    for verts, faces, uv in patches:
        tri = verts[faces]
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        if np.sum(normals * _outward(kind, tri.mean(1))) < 0:
            faces = faces[:, ::-1]
        out.append((verts, faces, uv))
    return out


def _quat_matrix(q) -> np.ndarray:
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _height(hf: dict, p: np.ndarray) -> np.ndarray:
    d, f, ph = np.asarray(hf["directions"]), np.asarray(hf["frequencies"]), np.asarray(hf["phases"])
    return hf["amplitude"] * np.sin(p @ d.T * f + ph).mean(1)


# -- signed distances of the unit primitives (negative inside; exact or a sign-correct bound) --------------------

def _sdf(kind: str, p: np.ndarray) -> np.ndarray:
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    rho = np.hypot(x, y)
    if kind == "box":
        q = np.abs(p) - 0.5
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0)
    if kind == "sphere":
        return np.linalg.norm(p, axis=1) - 0.5
    if kind == "cylinder":
        q = np.stack([rho - 0.5, np.abs(z) - 0.5], 1)
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0)
    if kind == "cone":  # the side plane's distance (slope 1:2) intersected with the slab |z| <= 0.5
        side = (rho - 0.5 * (0.5 - z)) / np.hypot(1.0, 0.5)
        return np.maximum(side, np.abs(z) - 0.5)
    if kind == "torus":
        return np.hypot(rho - TORUS_MAJOR, z) - TORUS_MINOR
    if kind == "capsule":
        half = 0.5 - CAPSULE_RADIUS
        return np.linalg.norm(np.stack([x, y, z - np.clip(z, -half, half)], 1), axis=1) - CAPSULE_RADIUS
    raise ValueError(f"unknown procedural primitive {kind!r}; expected one of {PRIMITIVES}")


def _box_uv(verts: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Box projection: each vertex takes the two coordinates across its normal's dominant axis."""
    axis = np.abs(normals).argmax(1)
    pick = np.array([[1, 2], [0, 2], [0, 1]])[axis]
    return np.take_along_axis(verts, pick, 1) + 0.5


def boolean_difference(kind: str, cut: dict, grid: int = SDF_GRID) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unit primitive ``kind`` minus the cutter ``cut`` (in the part's frame): marching cubes on
    ``max(d_part, -d_cutter)``; (vertices, faces wound outward, box-projected uv)."""
    from skimage.measure import marching_cubes

    lo, hi = -0.56, 0.56  # the unit primitives lie in [-0.5, 0.5]^3: a margin of empty cells keeps the surface closed
    axis = np.linspace(lo, hi, grid + 1)
    p = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    rot = _quat_matrix(cut["rotation"])
    local = (p - np.asarray(cut["centre"])) @ rot / np.asarray(cut["scale"])  # into the cutter's unit frame
    d = np.maximum(_sdf(kind, p), -_sdf(cut["cutter"], local)).reshape((grid + 1,) * 3)
    if d.min() >= 0:
        raise ValueError(f"boolean difference left nothing of the {kind} (cutter {cut}); the recipe is invalid")
    step = (hi - lo) / grid
    verts, faces, normals, _ = marching_cubes(d, level=0.0, spacing=(step,) * 3, gradient_direction="ascent")
    verts = verts + lo
    return verts, faces[:, ::-1].astype(np.int64), _box_uv(verts, normals)  # skimage winds them inward


# -- wireframes ----------------------------------------------------------------------------------------------------

def _wire_edges(kind: str) -> np.ndarray:
    """Edges (E, 2, 3) of the low-poly version of a unit primitive."""
    def ring(z, r, n):
        a = 2 * np.pi * np.arange(n) / n
        return np.stack([r * np.cos(a), r * np.sin(a), np.full(n, z)], 1)

    def loop(pts):
        return [(pts[i], pts[(i + 1) % len(pts)]) for i in range(len(pts))]

    edges: list = []
    if kind == "box":
        c = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
        edges = [(c[i], c[j]) for i in range(8) for j in range(i + 1, 8) if np.sum(c[i] != c[j]) == 1]
    elif kind == "sphere":
        ico = trimesh.creation.icosahedron()
        edges = [tuple(ico.vertices[e] * 0.5) for e in ico.edges_unique]
    elif kind in ("cylinder", "capsule"):
        half = 0.5 if kind == "cylinder" else 0.5 - CAPSULE_RADIUS
        r = 0.5 if kind == "cylinder" else CAPSULE_RADIUS
        lo, hi = ring(-half, r, 6), ring(half, r, 6)
        edges = loop(lo) + loop(hi) + list(zip(lo, hi))
        if kind == "capsule":
            edges += [(p, np.array([0, 0, -0.5])) for p in lo] + [(p, np.array([0, 0, 0.5])) for p in hi]
    elif kind == "cone":
        base = ring(-0.5, 0.5, 6)
        edges = loop(base) + [(p, np.array([0, 0, 0.5])) for p in base]
    elif kind == "torus":
        n_ring, n_tube = 8, 4
        pts = np.array([[(TORUS_MAJOR + TORUS_MINOR * np.cos(2 * np.pi * j / n_tube)) * np.cos(2 * np.pi * i / n_ring),
                         (TORUS_MAJOR + TORUS_MINOR * np.cos(2 * np.pi * j / n_tube)) * np.sin(2 * np.pi * i / n_ring),
                         TORUS_MINOR * np.sin(2 * np.pi * j / n_tube)] for i in range(n_ring) for j in range(n_tube)])
        at = lambda i, j: pts[(i % n_ring) * n_tube + j % n_tube]  # noqa: E731
        edges = [(at(i, j), at(i + 1, j)) for i in range(n_ring) for j in range(n_tube)]
        edges += [(at(i, j), at(i, j + 1)) for i in range(n_ring) for j in range(n_tube)]
    else:
        raise ValueError(f"unknown procedural primitive {kind!r}; expected one of {PRIMITIVES}")
    return np.array([[a, b] for a, b in edges], dtype=np.float64)


def _tube(a: np.ndarray, b: np.ndarray, radius: float, sections: int = 6):
    """A closed tube (capped prism) of ``radius`` from ``a`` to ``b``: (vertices, faces, uv)."""
    axis = b - a
    length = np.linalg.norm(axis)
    w = axis / length
    helper = np.array([1.0, 0, 0]) if abs(w[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = np.cross(w, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(w, e1)
    ang = 2 * np.pi * np.arange(sections) / sections
    circle = radius * (np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2)
    verts = np.concatenate([a + circle, b + circle, [a, b]])
    faces = []
    for i in range(sections):
        j = (i + 1) % sections
        faces += [[i, j, sections + j], [i, sections + j, sections + i],  # side
                  [2 * sections, j, i], [2 * sections + 1, sections + i, sections + j]]  # caps
    uv = np.concatenate([np.stack([np.arange(sections) / sections, np.zeros(sections)], 1),
                         np.stack([np.arange(sections) / sections, np.ones(sections)], 1), [[0.5, 0.0], [0.5, 1.0]]])
    return verts, np.array(faces), uv


# --------------------------------------------------------------------------------------------------------------------
# Recipe -> meshes -> GLB
# --------------------------------------------------------------------------------------------------------------------

def part_mesh(part: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One recipe part in the object's frame: (vertices, faces, uv)."""
    kind = part["kind"]
    scale, rot, shift = np.asarray(part["scale"]), _quat_matrix(part["rotation"]), np.asarray(part["translation"])
    place = lambda v: (v * scale) @ rot.T + shift  # noqa: E731
    if "wireframe" in part:  # tubes of a fixed radius along the placed edges (thin however the part is scaled)
        edges = _wire_edges(kind)
        tubes = [_tube(place(e[:1])[0], place(e[1:])[0], part["wireframe"]["radius"]) for e in edges]
        return _merge(tubes)
    if "boolean_difference" in part:
        verts, faces, uv = boolean_difference(kind, part["boolean_difference"])
        return place(verts), faces, uv
    verts, faces, uv = _merge(primitive_patches(kind))
    if "height_field" in part:
        verts = verts + _height(part["height_field"], verts)[:, None] * _outward(kind, verts)
    return place(verts), faces, uv


def _merge(pieces) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    verts, faces, uvs, offset = [], [], [], 0
    for v, f, uv in pieces:
        verts.append(v)
        faces.append(f + offset)
        uvs.append(uv)
        offset += len(v)
    return np.concatenate(verts), np.concatenate(faces), np.concatenate(uvs)


def build_scene(recipe: dict) -> trimesh.Scene:
    """A recipe as a trimesh Scene: one node per part (``part_00``, ...) with its textured PBR material."""
    if recipe.get("generator") != GENERATOR or recipe.get("version") != GENERATOR_VERSION:
        raise ValueError(f"recipe from {recipe.get('generator')!r} version {recipe.get('version')!r}; this is "
                         f"{GENERATOR} version {GENERATOR_VERSION}: regenerate it with the version that wrote it")
    scene = trimesh.Scene()
    for i, part in enumerate(recipe["parts"]):
        verts, faces, uv = part_mesh(part)
        mat = part["material"]
        material = trimesh.visual.material.PBRMaterial(
            name=f"part_{i:02d}", baseColorTexture=texture_image(part["texture"]),
            metallicFactor=mat["metallic"], roughnessFactor=mat["roughness"])
        mesh = trimesh.Trimesh(verts.astype(np.float32), faces, process=False,
                               visual=trimesh.visual.TextureVisuals(uv=uv, material=material))
        scene.add_geometry(mesh, geom_name=f"part_{i:02d}", node_name=f"part_{i:02d}")
    return scene


def build_glb(recipe: dict) -> bytes:
    """The GLB of a recipe (the same bytes for the same recipe)."""
    return build_scene(recipe).export(file_type="glb")


def recipe_mesh(recipe: dict) -> trimesh.Trimesh:
    """Every part of a recipe as one mesh in the GLB's frame (+Y up as glTF stores it), for ground-truth checks."""
    return trimesh.util.concatenate([trimesh.Trimesh(*part_mesh(p)[:2], process=False) for p in recipe["parts"]])


def write_asset(directory: str, seed: int, index: int) -> tuple[str, dict]:
    """Writes object ``index`` of ``seed`` as ``<directory>/<uid>.glb`` (atomically); returns (path, recipe)."""
    recipe = make_recipe(seed, index)
    data = build_glb(recipe)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, asset_uid(seed, index) + ".glb")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path, recipe


def load_glb_bytes(data: bytes) -> trimesh.Trimesh:
    """GLB bytes as one trimesh (scene graph applied), for tests and checks."""
    return trimesh.load(io.BytesIO(data), file_type="glb", force="mesh", process=False)


# --------------------------------------------------------------------------------------------------------------------
# The farm's asset source
# --------------------------------------------------------------------------------------------------------------------

class ProceduralSource:
    """Objects 0 .. count-1 of ``seed``; each GLB is generated into ``asset_dir`` when the farm fetches it (so a
    SLURM array task generates only its own slice). ``source_metadata`` in meta.json holds the generator, its
    version, seed, index and recipe, and ``relpath`` (the GLB under ``asset_dir``, for ``lift3d evaluate
    --gt-meshes``)."""

    name = "procedural"
    licence = "cc0"  # generated here from numbers: no third-party content

    def __init__(self, count: int, seed: int, asset_dir: str):
        if int(count) != count or count < 1:
            raise ValueError(f"--count {count!r}: pass the number of procedural objects to render (at least 1)")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"--seed {seed!r}: the procedural seed must be a non-negative integer")
        self.count, self.seed, self.asset_dir = int(count), int(seed), asset_dir

    def assets(self) -> list[Asset]:
        return sorted((Asset(asset_uid(self.seed, i), None, self.name, self.licence,
                             {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, "seed": self.seed,
                              "index": i, "relpath": asset_uid(self.seed, i) + ".glb"})
                       for i in range(self.count)), key=lambda a: a.uid)

    def fetch(self, assets: list[Asset]) -> list[Asset]:
        out = []
        for a in assets:
            metadata = dict(a.metadata)
            try:
                path, recipe = write_asset(self.asset_dir, metadata["seed"], metadata["index"])
            except (ValueError, OSError) as exc:
                metadata["fetch_error"] = f"procedural generation failed: {type(exc).__name__}: {exc}"
                out.append(dataclasses.replace(a, path=None, metadata=metadata))
                continue
            metadata["recipe"] = recipe
            out.append(dataclasses.replace(a, path=path, metadata=metadata))
        return out
