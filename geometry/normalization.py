"""Object normalisation into [-1, 1]^3: ``normalised = (original + offset) × scale``.

``original`` is the asset in Blender's world after import (+Z up). The bounding box is centred at the origin and
its longest side scaled to 2, so meshes can be mapped back with :func:`denormalize`.
"""

from __future__ import annotations

import numpy as np


def normalization_from_bounds(bmin, bmax) -> tuple[float, np.ndarray]:
    """(scale, offset) that map the box [bmin, bmax] into [-1, 1]^3 with its longest side = 2."""
    bmin, bmax = np.asarray(bmin, dtype=np.float64), np.asarray(bmax, dtype=np.float64)
    extent = float(np.max(bmax - bmin))
    if not np.isfinite(extent) or extent <= 0.0:
        raise ValueError(f"degenerate bounding box {bmin.tolist()}–{bmax.tolist()}: the asset has no extent")
    return 2.0 / extent, -(bmin + bmax) / 2.0


def normalize(points, scale: float, offset) -> np.ndarray:
    return (np.asarray(points, dtype=np.float64) + np.asarray(offset)) * scale


def denormalize(points, scale: float, offset) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) / scale - np.asarray(offset)


def normalization_matrix(scale: float, offset) -> np.ndarray:
    """4×4 matrix of :func:`normalize` (scale after translation)."""
    m = np.eye(4) * scale
    m[3, 3] = 1.0
    m[:3, 3] = np.asarray(offset, dtype=np.float64) * scale
    return m
