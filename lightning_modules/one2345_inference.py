"""One image → One-2-3-45's 40 posed source views: Zero123 predictions and elevation estimation (Liu et al. 2023).

The reconstruction module was trained on 8 views spread around an object plus 4 neighbours (±10°) of each. From a
single image the same 40 views are made up by Zero123, which knows only *relative* poses, so the input's absolute
elevation is estimated first:

    input RGBA ─► over white, resized to Zero123's size S ─► Zero123: its 4 neighbours at (±10°, 0°), (0°, ±10°)
        ─► geometry.elevation.estimate_elevation ─► θ (or ``elevation_deg`` when given; 0° with a warning when the
           predicted neighbours have too few feature matches)
    8 views k = 0..7 at azimuth 45°·k, elevation θ for even k and θ' for odd k (θ' = 30° when θ < 15°, else 0°:
        the two rings cover the object's top and sides), all at ``radius`` looking at the origin, +Z up;
        view 0 is the input itself, views 1..7 are predicted from it
    4 neighbours of each view k (its (±10°, 0°), (0°, ±10°) in geometry.rigs.one2345's order), predicted from view k
    ─► 40 sources (8 views, then 4 neighbours per view, as the ``one2345`` rig orders them) at ``source_size``

The neighbour offsets and order, the radius and the FOV are One-2-3-45's layout, defined once in ``geometry.rigs``
(``with_neighbours``); the 40 cameras are built by ``geometry.cameras.spherical_cameras``, and Zero123 is asked for
their relative cameras (``geometry.cameras.zero123_relative_camera``). The world frame is the input camera's: its
centre is at (θ, azimuth 0°, ``radius``); the object sits at the origin inside [-1, 1]³ (Zero123's and the rig's
setup). Images are resized by ``geometry.image.resize``. Every prediction is seeded by (seed, view).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from geometry.cameras import spherical_cameras, zero123_relative_camera
from geometry.elevation import estimate_elevation, neighbour_cameras
from geometry.image import resize
from geometry.rigs import ONE2345_FOV_DEG, ONE2345_NUM_VIEWS, ONE2345_RADIUS, with_neighbours

log = logging.getLogger(__name__)
NUM_VIEWS = ONE2345_NUM_VIEWS


def _views(elevation_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(elevation, azimuth, owners) of the 40 views: the 8 views of the module docstring, then their neighbours."""
    second = 30.0 if elevation_deg < 15.0 else 0.0
    el = np.array([elevation_deg if k % 2 == 0 else second for k in range(NUM_VIEWS)])
    az = np.arange(NUM_VIEWS) * 360.0 / NUM_VIEWS
    return with_neighbours(el, az)


def view_layout(elevation_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """(elevation, azimuth) in degrees of the 40 views: 8 views then 4 neighbours per view (module docstring)."""
    el, az, _ = _views(elevation_deg)
    return el, az


def layout_cameras(elevation_deg: float, size: int, radius: float = ONE2345_RADIUS,
                   fov_deg: float = ONE2345_FOV_DEG) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV ``c2w`` (40, 4, 4) and ``K`` (40, 3, 3) of :func:`view_layout` for ``size``² images."""
    el, az = view_layout(elevation_deg)
    c2w, K = spherical_cameras(el, az, radius, fov_deg, size)
    return c2w.astype(np.float32), K.astype(np.float32)


@dataclass
class SourceViews:
    """The 40 made-up sources of one image: ``images`` (40, S, S, 3) float RGB in [0, 1] over white, ``c2w``,
    ``K`` (pixels of ``source_size`` images), the elevation used and how it was found."""

    images: np.ndarray
    c2w: np.ndarray
    K: np.ndarray
    elevation_deg: float
    elevation_source: str  # "given" | "estimated" | "fallback"
    matches: int


class One2345Views:
    """Makes :class:`SourceViews` of an image with a Zero123 pipeline (``networks.zero123.Zero123Pipeline``)."""

    def __init__(self, zero123, steps: int = 50, guidance_scale: float = 3.0, seed: int = 0,
                 source_size: int = 256, elevation_deg: Optional[float] = None, radius: float = ONE2345_RADIUS,
                 fov_deg: float = ONE2345_FOV_DEG, matcher=None):
        self.zero123, self.steps, self.guidance_scale, self.seed = zero123, steps, guidance_scale, seed
        self.source_size, self.elevation_deg = source_size, elevation_deg
        self.radius, self.fov_deg, self.matcher = radius, fov_deg, matcher

    @classmethod
    def from_pretrained(cls, weights: Optional[str], device: str = "cpu", dtype: str = "float32", **settings
                        ) -> "One2345Views":
        """The front end over Zero123 loaded from ``weights`` (a local diffusers checkpoint directory), with
        ``settings`` as :meth:`__init__` takes them. Imports the diffusers stack only when called."""
        if not weights:
            raise ValueError("One-2-3-45 from images needs Zero123: set --model.init_args.zero123_weights to a local "
                             "diffusers Zero123 checkpoint directory (e.g. zero123-xl), or predict from shards that "
                             "hold source views (One2345DataModule)")
        from lightning_modules.networks.zero123 import Zero123Pipeline

        return cls(Zero123Pipeline.from_pretrained(weights, device=device, dtype=dtype), **settings)

    def _predict(self, conditions: np.ndarray, c2w_from: np.ndarray, c2w_to: np.ndarray, first_view: int
                 ) -> np.ndarray:
        """Zero123 predictions (N, S, S, 3) of cameras ``c2w_to`` from images ``conditions`` at ``c2w_from``."""
        d_theta, d_phi, d_r = zero123_relative_camera(c2w_from, c2w_to)
        cams = np.stack([d_theta, d_phi, d_r], axis=-1)
        seeds = [self.seed * 1000 + first_view + i for i in range(len(cams))]
        return self.zero123(conditions, cams, seeds, num_inference_steps=self.steps,
                            guidance_scale=self.guidance_scale)

    def elevation(self, image: np.ndarray) -> tuple[float, str, int]:
        """(θ degrees, "given" | "estimated" | "fallback", matches) of an image at Zero123's size."""
        if self.elevation_deg is not None:
            return float(self.elevation_deg), "given", 0
        # the neighbours' relative cameras do not depend on θ's exact value away from the poles: predict at 0°
        c2w, _ = neighbour_cameras(0.0, self.radius, self.fov_deg)
        nbrs = self._predict(np.repeat(image[None], 4, axis=0), np.repeat(c2w[:1], 4, axis=0), c2w[1:], 1000)
        views = [(np.clip(v, 0, 1) * 255).round().astype(np.uint8) for v in [image, *nbrs]]
        try:
            est = estimate_elevation(views, radius=self.radius, fov_deg=self.fov_deg, matcher=self.matcher)
        except ValueError as exc:
            log.warning("elevation estimation failed (%s); using 0°. Set elevation_deg to give it.", exc)
            return 0.0, "fallback", 0
        return est.elevation_deg, "estimated", est.num_matches

    def __call__(self, image: np.ndarray) -> SourceViews:
        """``image``: (H, W, 3) float RGB in [0, 1], composited over white, the object centred and filling it
        as in a render of the ``one2345`` rig."""
        size = self.zero123.image_size
        image = resize(np.asarray(image, np.float32), size, size)
        theta, how, matches = self.elevation(image)
        c2w, _ = layout_cameras(theta, size, self.radius, self.fov_deg)
        views = np.empty((len(c2w), size, size, 3), np.float32)
        views[0] = image
        views[1:NUM_VIEWS] = self._predict(np.repeat(image[None], NUM_VIEWS - 1, axis=0),
                                           np.repeat(c2w[:1], NUM_VIEWS - 1, axis=0), c2w[1:NUM_VIEWS], 1)
        owners = _views(theta)[2]  # view k of each neighbour
        views[NUM_VIEWS:] = self._predict(views[owners], c2w[owners], c2w[NUM_VIEWS:], NUM_VIEWS)
        s = self.source_size
        sources = np.stack([resize(v, s, s) for v in views])
        c2w, K = layout_cameras(theta, s, self.radius, self.fov_deg)
        return SourceViews(sources, c2w, K, theta, how, matches)
