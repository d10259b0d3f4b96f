"""Synthetic format-v1 shards whose content the datamodule tests know exactly.

Every view shows, over a fully transparent background, an opaque square in a per-view colour on a depth plane
(``plane_depth(i)`` metres), one half-transparent pixel at (row 2, col 2), and a red 4×4 marker at the projection
of the world point ``MARKER`` (so resize/crop tests can check that K still projects the point onto the marker).
View 0 has role ``source``; the others ``gt``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from geometry.cameras import intrinsics_from_fov, look_at, project_points, spherical_to_cartesian
from render_farm.shards import ShardWriter, encode_sample

DEPTH_SCALE = 1000.0
MARKER = np.array([0.15, -0.1, 0.2])
HALF_PIXEL = (2, 2)  # (row, col) of the half-transparent pixel
HALF_RGBA = (200, 100, 50, 128)


def plane_depth(view: int) -> float:
    return 1.5 + 0.125 * view  # exactly representable in uint16 at DEPTH_SCALE


def square_colour(view: int) -> tuple[int, int, int]:
    return (0, 120, (40 + 10 * view) % 256)  # no red: the marker is the only red thing near it


def make_object(key: str, n_views: int = 6, size: int = 64, roles: list[str] | None = None):
    """(views, c2w, K, hw, meta) of one synthetic object."""
    el = np.linspace(0.0, 40.0, n_views)
    az = np.linspace(0.0, 300.0, n_views)
    c2w = np.stack([look_at(p) for p in spherical_to_cartesian(np.full(n_views, 2.5), el, az)])
    K = np.stack([intrinsics_from_fov(50.0, size, size)] * n_views)
    hw = np.tile(np.array([size, size], np.int32), (n_views, 1))
    views = []
    for i in range(n_views):
        rgba = np.zeros((size, size, 4), np.uint8)
        lo, hi = size // 4, 3 * size // 4
        rgba[lo:hi, lo:hi] = (*square_colour(i), 255)
        depth = np.zeros((size, size), np.uint16)
        depth[lo:hi, lo:hi] = round(plane_depth(i) * DEPTH_SCALE)
        uv, _ = project_points(MARKER[None], K[i], c2w[i])
        cu, cv = int(round(uv[0, 0])), int(round(uv[0, 1]))  # a 4x4 block whose centre is the pixel corner (cu, cv)
        rgba[cv - 2:cv + 2, cu - 2:cu + 2] = (255, 0, 0, 255)
        rgba[HALF_PIXEL] = HALF_RGBA
        views.append({"rgba": rgba, "depth": depth})
    roles = roles or ["source"] + ["gt"] * (n_views - 1)
    meta = {"depth_scale": DEPTH_SCALE, "view_roles": roles, "source": "synthetic", "licence": "CC0"}
    return views, c2w, K, hw, meta


def make_sample(key: str, **kw) -> dict:
    views, c2w, K, hw, meta = make_object(key, **kw)
    return encode_sample(key, views, c2w, K, hw, meta)


def write_shards(out_dir, n_shards: int = 3, per_shard: int = 4, prefix: str = "obj", corrupt: dict | None = None,
                 **kw) -> list[str]:
    """Committed shards (+ index.json) in ``out_dir``; ``corrupt`` maps key → {member: bytes} replacements."""
    os.makedirs(out_dir, exist_ok=True)
    keys = []
    with ShardWriter(str(out_dir), maxcount=per_shard) as writer:
        for n in range(n_shards * per_shard):
            key = f"{prefix}{n:03d}"
            sample = make_sample(key, **kw)
            sample.update((corrupt or {}).get(key, {}))
            writer.write(sample)
            keys.append(key)
    return keys


@pytest.fixture
def shard_dir(tmp_path):
    out = tmp_path / "shards"
    keys = write_shards(out)
    return out, keys
