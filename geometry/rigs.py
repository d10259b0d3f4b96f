"""Named camera rigs: where the render farm puts its cameras.

A rig is a pure function of (name, object id, seed, resolution): the same object always gets the same cameras,
on any machine and in any SLURM task. Cameras are OpenCV ``c2w`` (see ``geometry.cameras``) around the
normalised object in [-1, 1]^3, all looking at the origin with world +Z up.

Rigs
    lrm32    32 views on a random shell r ∈ [2.0, 3.5], elevation spread over [-20°, 60°] (uniform in sin),
             FOV 50°; view 0 is a front-ish source view (azimuth within ±30° of the front, elevation 0–30°).
    orbit    a turntable: ``views_per_ring`` azimuths at each of ``elevations`` (default 0°/20°/40°), fixed radius.
    one2345  8 ground-truth views spread on the sphere plus, for each, 4 neighbours at ±10° elevation/azimuth
             (40 views: 8 ``gt`` then 4 ``gt_neighbor`` per ground-truth view, in order).
    eval24   12 azimuths at 30° elevation then 12 at 0°, fixed radius, FOV 40°.

One-2-3-45's 40-view layout is defined here once (``ONE2345_*``, :data:`NEIGHBOUR_OFFSETS`, :func:`with_neighbours`)
and used by the ``one2345`` rig, elevation estimation (``geometry.elevation``) and the single-image front end with
its Zero123 relative cameras (``lightning_modules.one2345_inference``): 8 views, each followed — after all 8 — by
its 4 neighbours at (+10°, 0°), (−10°, 0°), (0°, +10°), (0°, −10°) of (elevation, azimuth), in that order, all at
radius 2.8 with a 40° field of view (Zero123's rendering setup). Every camera is built by
``geometry.cameras.spherical_cameras``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from geometry.cameras import spherical_cameras


@dataclass
class Rig:
    """Cameras of one object: ``c2w`` (V,4,4) OpenCV, ``K`` (V,3,3) pixels, ``hw`` (V,2), a role per view."""

    name: str
    c2w: np.ndarray
    K: np.ndarray
    hw: np.ndarray
    roles: list[str]
    fov_deg: np.ndarray
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.c2w)


def object_rng(rig: str, object_id: str, seed: int) -> np.random.Generator:
    """A generator seeded from (rig, object id, seed) only — stable across processes and Python versions."""
    digest = hashlib.sha256(f"{rig}|{seed}|{object_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# ---------------------------------------------------------------------------------- One-2-3-45's 40-view layout
#: Views of the layout (the rig's ``gt`` views; the front end's input and its 7 predicted views).
ONE2345_NUM_VIEWS = 8
#: Zero123's rendering setup, which One-2-3-45's views share: camera distance and field of view (degrees).
ONE2345_RADIUS = 2.8
ONE2345_FOV_DEG = 40.0
#: Elevation / azimuth step (degrees) from a view to its neighbours.
ONE2345_NEIGHBOUR_STEP_DEG = 10.0


def neighbour_offsets(step_deg: float = ONE2345_NEIGHBOUR_STEP_DEG) -> tuple[tuple[float, float], ...]:
    """(elevation, azimuth) offsets in degrees of a view's 4 neighbours, in the layout's order."""
    step = float(step_deg)
    return (step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)


#: (elevation, azimuth) offsets in degrees of One-2-3-45's 4 neighbour views, in order.
NEIGHBOUR_OFFSETS = neighbour_offsets()


def with_neighbours(elevation_deg, azimuth_deg, offsets=NEIGHBOUR_OFFSETS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The layout's order: ``(elevation, azimuth, owners)`` of N views followed by ``len(offsets)`` neighbours of
    each view (view 0's first, in ``offsets`` order); neighbour azimuths are wrapped to [0°, 360°).

    ``owners`` (N·len(offsets),) is the view each neighbour belongs to: neighbour j is at index N + j.
    """
    el = np.asarray(elevation_deg, dtype=np.float64).reshape(-1)
    az = np.asarray(azimuth_deg, dtype=np.float64).reshape(-1)
    if el.shape != az.shape:
        raise ValueError(f"with_neighbours: {len(el)} elevations for {len(az)} azimuths; give one of each per view")
    nb_el = np.array([e + de for e in el for de, _ in offsets])
    nb_az = np.array([(a + da) % 360.0 for a in az for _, da in offsets])
    owners = np.repeat(np.arange(len(el)), len(offsets))
    return np.concatenate([el, nb_el]), np.concatenate([az, nb_az]), owners


# ---------------------------------------------------------------------------------- rigs
def _cameras(elevation_deg, azimuth_deg, radius, fov_deg, resolution: int, target=(0.0, 0.0, 0.0)
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    c2w, K = spherical_cameras(elevation_deg, azimuth_deg, radius, fov_deg, resolution, target)
    fov = np.broadcast_to(np.asarray(fov_deg, dtype=np.float64), (len(c2w),)).copy()
    hw = np.tile(np.array([resolution, resolution], dtype=np.int32), (len(c2w), 1))
    return c2w, K, hw, fov


def lrm32(object_id: str, resolution: int = 512, seed: int = 0, num_views: int = 32,
          radius: tuple[float, float] = (2.0, 3.5), elevation: tuple[float, float] = (-20.0, 60.0),
          fov_deg: float = 50.0) -> Rig:
    rng = object_rng("lrm32", object_id, seed)
    r = rng.uniform(*radius, size=num_views)
    lo, hi = np.sin(np.radians(elevation[0])), np.sin(np.radians(elevation[1]))
    el = np.degrees(np.arcsin(rng.uniform(lo, hi, size=num_views)))
    az = rng.uniform(0.0, 360.0, size=num_views)
    # view 0: the front-ish source view an LRM is conditioned on
    el[0] = rng.uniform(0.0, 30.0)
    az[0] = rng.uniform(-30.0, 30.0)
    c2w, K, hw, fov = _cameras(el, az, r, fov_deg, resolution)
    roles = ["source"] + ["gt"] * (num_views - 1)
    return Rig("lrm32", c2w, K, hw, roles, fov, {"radius": r, "elevation_deg": el, "azimuth_deg": az})


def orbit(object_id: str, resolution: int = 512, seed: int = 0, views_per_ring: int = 12,
          elevations=(0.0, 20.0, 40.0), radius: float = 2.5, fov_deg: float = 50.0, target=(0.0, 0.0, 0.0)) -> Rig:
    """A turntable about the world Z axis through ``target``: ring by ring, azimuth 360°·i/views_per_ring (0 = the
    front, on −Y), at ``radius`` from ``target`` and looking at it (``geometry.raster``'s turntables use it)."""
    del object_id, seed  # a turntable is the same for every object
    el = np.repeat(np.asarray(elevations, dtype=np.float64), views_per_ring)
    az = np.tile(np.arange(views_per_ring) * 360.0 / views_per_ring, len(elevations))
    c2w, K, hw, fov = _cameras(el, az, radius, fov_deg, resolution, target)
    return Rig("orbit", c2w, K, hw, ["gt"] * len(el), fov, {"elevation_deg": el, "azimuth_deg": az})


def one2345(object_id: str, resolution: int = 256, seed: int = 0, num_gt: int = ONE2345_NUM_VIEWS,
            neighbour_offset: float = ONE2345_NEIGHBOUR_STEP_DEG, radius: float = ONE2345_RADIUS,
            fov_deg: float = ONE2345_FOV_DEG, elevation: tuple[float, float] = (-10.0, 40.0)) -> Rig:
    rng = object_rng("one2345", object_id, seed)
    # ground-truth views spread on the sphere band: stratified azimuth, random elevation, random global turn
    az0 = rng.uniform(0.0, 360.0)
    az = (az0 + np.arange(num_gt) * 360.0 / num_gt + rng.uniform(-10.0, 10.0, num_gt)) % 360.0
    el = rng.uniform(*elevation, size=num_gt)
    all_el, all_az, owners = with_neighbours(el, az, neighbour_offsets(neighbour_offset))
    c2w, K, hw, fov = _cameras(all_el, all_az, radius, fov_deg, resolution)
    roles = ["gt"] * num_gt + ["gt_neighbor"] * len(owners)
    neighbours_of = {i: (num_gt + np.flatnonzero(owners == i)).tolist() for i in range(num_gt)}
    return Rig("one2345", c2w, K, hw, roles, fov,
               {"elevation_deg": all_el, "azimuth_deg": all_az, "neighbours_of": neighbours_of})


def eval24(object_id: str, resolution: int = 512, seed: int = 0, radius: float = 2.5, fov_deg: float = 40.0) -> Rig:
    rig = orbit(object_id, resolution, seed, views_per_ring=12, elevations=(30.0, 0.0), radius=radius,
                fov_deg=fov_deg)
    rig.name = "eval24"
    return rig


RIGS: dict[str, Callable[..., Rig]] = {"lrm32": lrm32, "orbit": orbit, "one2345": one2345, "eval24": eval24}


def make_rig(name: str, object_id: str, resolution: int, seed: int = 0, **options) -> Rig:
    """The cameras of ``object_id`` under rig ``name`` (options override the rig's defaults)."""
    if name not in RIGS:
        raise ValueError(f"unknown camera rig {name!r}; available rigs: {', '.join(sorted(RIGS))}")
    return RIGS[name](object_id, resolution=resolution, seed=seed, **options)
