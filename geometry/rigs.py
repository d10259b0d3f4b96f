"""Named camera rigs: where the render farm puts its cameras.

A rig is a pure function of (name, object id, seed, resolution): the same object always gets the same cameras,
on any machine and in any SLURM task. Cameras are OpenCV ``c2w`` (see ``geometry.cameras``) around the
normalised object in [-1, 1]^3, all looking at the origin with world +Z up.

Framing rule (every rig, by default)
    The normalised object lies in [-1, 1]^3, so its bounding sphere has radius R = √3 (:data:`OBJECT_RADIUS`). A
    camera at distance d from the centre sees that sphere under a half-angle asin(R/d); a square image whose field
    of view (across either side) is θ shows the whole sphere, grown by the margin m (:data:`FRAMING_MARGIN`, 5%),
    when

        d ≥ R·(1 + m) / sin(θ/2)          (:func:`framing_distance`;  θ ≥ 2·asin(R·(1 + m)/d): :func:`framing_fov`)

    Then every point of the object — in particular every corner of its bounding box — projects inside the image,
    at any elevation and azimuth. Every rig's default distance is :func:`framing_distance` of its field of view
    (or, for ``lrm32``, its distance range starts there); options that override a rig's radius or FOV may break
    the rule, and :func:`frames` says whether they do.

Rigs (distances in lift3d's units, the object in [-1, 1]^3)
    lrm32    32 views on a random shell r ∈ [d₅₀, 1.4·d₅₀] = [4.30, 6.02] with d₅₀ = framing_distance(50°),
             elevation spread over [-20°, 60°] (uniform in sin), FOV 50°; view 0 is a front-ish source view (azimuth
             within ±30° of the front, elevation 0–30°). The LRM's canonical source camera (``camera_distance`` in
             configs/model/lrm_*.yaml) sits at 4.3, the shell's near end, so the canonical scale s = 4.3/r ≤ 1 keeps
             the object inside the triplane's [-1, 1]^3.
    orbit    a turntable: ``views_per_ring`` azimuths at each of ``elevations`` (default 0°/20°/40°), FOV 50°, at
             framing_distance(50°) = 4.30.
    one2345  8 ground-truth views spread on the sphere plus, for each, 4 neighbours at ±10° elevation/azimuth
             (40 views: 8 ``gt`` then 4 ``gt_neighbor`` per ground-truth view, in order), Zero123's framing (below).
    eval24   One-2-3-45's evaluation protocol: 12 azimuths at 30° elevation then 12 at 0°, FOV 40°, at
             framing_distance(40°) = 5.32.

One-2-3-45's 40-view layout is defined here once (``ONE2345_*``, :data:`NEIGHBOUR_OFFSETS`, :func:`with_neighbours`)
and used by the ``one2345`` rig, elevation estimation (``geometry.elevation``) and the single-image front end with
its Zero123 relative cameras (``lightning_modules.one2345_inference``): 8 views, each followed — after all 8 — by
its 4 neighbours at (+10°, 0°), (−10°, 0°), (0°, +10°), (0°, −10°) of (elevation, azimuth), in that order, all at
:data:`ONE2345_RADIUS` with :data:`ONE2345_FOV_DEG`. Those are Zero123's framing, because at inference Zero123's
outputs are the reconstructor's input: Zero123 was trained on Objaverse renders (its
``objaverse-rendering/scripts/blender_script.py``) with the object scaled so its largest extent is 1 (the box
[-0.5, 0.5]^3), a 35 mm lens on a 32 mm sensor (FOV 2·atan(16/35) = 49.13°) and the camera distance uniform in
[1.5, 2.2]: in lift3d's [-1, 1]^3 that is [3.0, 4.4]. The near end of that range does not frame the box (seen along
a body diagonal its corners need d ≥ 4.15 at 49.13°), so the layout uses the smallest distance that frames the
bounding sphere with the margin, framing_distance(49.13°) = 4.37: inside Zero123's range, at its far end, so
the images have the object size Zero123 saw in training and never cut an object off. Every camera is built by
``geometry.cameras.spherical_cameras``.
"""

from __future__ import annotations

import hashlib
import math
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


# ---------------------------------------------------------------------------------- the framing rule
#: Radius of the normalised object's bounding sphere: half the diagonal of [-1, 1]^3.
OBJECT_RADIUS = math.sqrt(3.0)
#: Margin of the framing rule: the bounding sphere grown by this fraction fits the field of view.
FRAMING_MARGIN = 0.05


def framing_distance(fov_deg: float, margin: float = FRAMING_MARGIN, radius: float = OBJECT_RADIUS) -> float:
    """The smallest camera distance at which a square image with field of view ``fov_deg`` (across either side)
    shows the whole bounding sphere of ``radius`` grown by ``margin``: R·(1 + m) / sin(θ/2)."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"framing_distance: field of view must be in (0, 180) degrees, got {fov_deg}")
    return float(radius * (1.0 + margin) / math.sin(math.radians(fov_deg) / 2.0))


def framing_fov(distance: float, margin: float = FRAMING_MARGIN, radius: float = OBJECT_RADIUS) -> float:
    """The smallest field of view (degrees) that frames the grown bounding sphere from ``distance``: the inverse
    of :func:`framing_distance`."""
    if not distance > radius * (1.0 + margin):
        raise ValueError(f"framing_fov: a camera at distance {distance} is inside the object's bounding sphere "
                         f"(radius {radius} × {1.0 + margin}); no field of view frames it, use a larger distance")
    return float(2.0 * math.degrees(math.asin(radius * (1.0 + margin) / distance)))


def frames(distance, fov_deg, margin: float = FRAMING_MARGIN, radius: float = OBJECT_RADIUS) -> bool:
    """Whether cameras at ``distance`` (scalar or array) with ``fov_deg`` all obey the framing rule."""
    need = np.vectorize(framing_distance)(fov_deg, margin, radius)  # the rule, one home
    return bool(np.all(np.asarray(distance, dtype=np.float64) >= need * (1.0 - 1e-12)))


# ---------------------------------------------------------------------------------- each rig's framing
#: lrm32: field of view and the shell of distances, from the framing distance out to 1.4 times it.
LRM32_FOV_DEG = 50.0
LRM32_RADIUS = (framing_distance(LRM32_FOV_DEG), 1.4 * framing_distance(LRM32_FOV_DEG))
#: orbit: field of view and distance (the turntable frames the object by default).
ORBIT_FOV_DEG = 50.0
ORBIT_RADIUS = framing_distance(ORBIT_FOV_DEG)
#: eval24: One-2-3-45's evaluation rings, at the framing distance of their 40° field of view.
EVAL24_FOV_DEG = 40.0
EVAL24_RADIUS = framing_distance(EVAL24_FOV_DEG)

# ---------------------------------------------------------------------------------- One-2-3-45's 40-view layout
#: Views of the layout (the rig's ``gt`` views; the front end's input and its 7 predicted views).
ONE2345_NUM_VIEWS = 8
#: Zero123's rendering setup, which One-2-3-45's views share (module docstring): Zero123's field of view (a 35 mm
#: lens on a 32 mm sensor), and the distance that frames the object at it (4.37; Zero123's range is [3.0, 4.4] in
#: lift3d's units).
ONE2345_FOV_DEG = math.degrees(2.0 * math.atan(16.0 / 35.0))
ONE2345_RADIUS = framing_distance(ONE2345_FOV_DEG)
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
          radius: tuple[float, float] = LRM32_RADIUS, elevation: tuple[float, float] = (-20.0, 60.0),
          fov_deg: float = LRM32_FOV_DEG) -> Rig:
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
          elevations=(0.0, 20.0, 40.0), radius: float = ORBIT_RADIUS, fov_deg: float = ORBIT_FOV_DEG,
          target=(0.0, 0.0, 0.0)) -> Rig:
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


def eval24(object_id: str, resolution: int = 512, seed: int = 0, radius: float = EVAL24_RADIUS,
           fov_deg: float = EVAL24_FOV_DEG) -> Rig:
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
