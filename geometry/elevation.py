"""Elevation of an input view from its four ±10° neighbours — One-2-3-45's elevation estimation (Liu et al. 2023).

One-2-3-45 asks Zero123 for 4 views around the input, at (elevation, azimuth) offsets (+10°, 0), (−10°, 0),
(0, +10°), (0, −10°). Zero123 only knows *relative* poses, but the reconstruction module needs the input's
absolute elevation. For a candidate elevation θ the 5 cameras are fully determined:

    view 0 (the input)  at (θ, 0°)          views 1..4  at (θ ± 10°, 0°), (θ, ±10°)

all at the same radius, looking at the origin with world +Z up (``geometry.cameras`` conventions: OpenCV
``c2w``, pixel centres at integer + 0.5). Feature matches between pairs of views are triangulated with the
hypothesised cameras and reprojected; the confidence-weighted robust reprojection error scores θ. A coarse grid
of θ is scored, then the best cell is refined by a bounded 1-D search.

Why elevation is observable at all
    The offsets are the same for every θ, yet the epipolar geometry is not. An *elevation* step is a rotation
    about world X through the origin, and world X is always the input camera's x axis (azimuth 0), so the pairs
    (0, 1), (0, 2), (1, 2) look the same for every θ and carry no information (they add a θ-independent
    constant to the score). An *azimuth* step is a rotation about world +Z, and world +Z seen from a camera at
    elevation θ is tilted by θ from the image's up axis: in camera coordinates (x right, y down, z forward) it
    is (0, −cos θ, sin θ). At θ = 0 the rotation is a pure pan (horizontal parallax, horizontal epipolar lines);
    as θ grows it gains a roll component of sin θ × 10° about the optical axis, and the epipolar lines turn. The
    sign of θ sets the sense of that roll, so +θ and −θ are distinguishable too. Every pair that involves an
    azimuth neighbour therefore pins down θ. The signal is small (one degree of θ changes that roll by
    ≈ 0.17° · cos θ, ≈ 0.4 px at the edge of a 256² image), hence many sub-pixel matches and a robust loss.
    Near the poles (|θ| → 90°) the azimuth rotation becomes a pure roll and the neighbours' own elevation steps
    stay well defined, but the candidates stop before that (default −30° … 60°, with neighbours up to 70°).

Gauges and assumptions
    The radius is a gauge: scaling the scene and all camera centres together changes no image, so the error
    does not depend on it (it only sets the scale of triangulated points). The field of view does matter (it is
    K). Radius, FOV and the neighbour offsets default to One-2-3-45's layout, defined once in ``geometry.rigs``
    (the Zero123 rendering setup the neighbours are predicted for). The input's azimuth is
    arbitrary and fixed to 0: only elevation is recovered. The 5 images must be in the order of ``offsets``.

Score
    Each match is triangulated with its pair's hypothesised cameras (DLT, then Gauss-Newton on the pixel error, so
    the score is geometric and exactly radius-invariant) and reprojected into both views. Its error e costs a
    truncated Huber ρ(e): quadratic below 1 px, linear up to 8 px, constant beyond (pixels of a 256² image, scaled
    with the image size; a point triangulated behind a camera costs the cap). The score is Σ conf·ρ / Σ conf. The
    linear part keeps the basin wide for the coarse grid (default −30° … 60° every 2°); the cap keeps mismatches,
    which cost the same for every θ, from deciding. The best grid cell is refined by a bounded scalar search over
    ±1 grid step (scipy ``minimize_scalar``, 0.02° tolerance).

Matchers
    :class:`SIFTMatcher` (OpenCV SIFT, Lowe ratio test, mutual nearest neighbours) is the default and needs no
    weights. :class:`LoFTRMatcher` (kornia's LoFTR, weights from a local file) is what One-2-3-45 uses; it is
    optional (``pip install kornia``). Matchers return pixel coordinates in lift3d's convention (centre of the
    top-left pixel at (0.5, 0.5)); OpenCV keypoints (centre at (0, 0)) are shifted by +0.5.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import numpy as np

from geometry.cameras import invert_rigid, spherical_cameras
from geometry.rigs import NEIGHBOUR_OFFSETS, ONE2345_FOV_DEG, ONE2345_RADIUS, with_neighbours

#: Coarse grid of candidate elevations (degrees): covers Zero123's training range with a margin.
DEFAULT_CANDIDATES = np.arange(-30.0, 61.0, 2.0)
#: Robust loss in pixels of a 256² image (scaled with the image size): quadratic below HUBER_PX, linear above,
#: constant above TRUNCATE_PX (a wrong match costs the same whatever θ is).
HUBER_PX = 1.0
TRUNCATE_PX = 8.0
#: Fewer matches than this (over all pairs, or over the pairs that depend on θ) cannot give a reliable θ.
MIN_MATCHES = 30


# ---------------------------------------------------------------------------------------------------- cameras
def neighbour_cameras(elevation_deg: float, radius: float = ONE2345_RADIUS, fov_deg: float = ONE2345_FOV_DEG,
                      size: int = 256, offsets=NEIGHBOUR_OFFSETS) -> tuple[np.ndarray, np.ndarray]:
    """``c2w`` (1 + len(offsets), 4, 4) and ``K`` (3, 3) of the input at (θ, 0°) and its neighbours at θ + offsets.

    View 0 is the input; view k ≥ 1 is at (elevation_deg + offsets[k-1][0], offsets[k-1][1]) — One-2-3-45's layout
    (``geometry.rigs.with_neighbours``) for one view. All cameras sit at ``radius`` looking at the origin, world +Z
    up, square ``size``² images with ``fov_deg`` across.
    """
    if not radius > 0:
        raise ValueError(f"neighbour_cameras: radius must be positive, got {radius}")
    el, az, _ = with_neighbours([float(elevation_deg)], [0.0], np.asarray(offsets, dtype=np.float64).reshape(-1, 2))
    if np.any(np.abs(el) >= 90.0):
        raise ValueError(f"neighbour_cameras: elevations {el.tolist()} reach a pole (|elevation| ≥ 90°); use an "
                         "input elevation within ±(90° − the largest elevation offset)")
    c2w, K = spherical_cameras(el, az, float(radius), fov_deg, int(size))
    return c2w, K[0]


# ---------------------------------------------------------------------------------------------------- matching
@dataclass
class Matches:
    """Correspondences between pairs of views: for pair k, ``pts_i[k][m]`` in view ``pairs[k][0]`` matches
    ``pts_j[k][m]`` in view ``pairs[k][1]`` (pixels, centres at +0.5) with confidence ``conf[k][m]`` in (0, 1]."""

    pairs: list[tuple[int, int]] = field(default_factory=list)
    pts_i: list[np.ndarray] = field(default_factory=list)
    pts_j: list[np.ndarray] = field(default_factory=list)
    conf: list[np.ndarray] = field(default_factory=list)

    @property
    def num_matches(self) -> int:
        return int(sum(len(c) for c in self.conf))

    def counts(self) -> dict[tuple[int, int], int]:
        return {p: len(c) for p, c in zip(self.pairs, self.conf)}


def _as_rgb_and_mask(image: np.ndarray, mask, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 (H, W, 3) RGB or (H, W, 4) RGBA image, got {img.dtype} "
                         f"{img.shape}")
    if mask is None and img.shape[2] == 4:
        mask = img[..., 3] >= 128  # straight alpha: the object's silhouette
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != img.shape[:2]:
            raise ValueError(f"{name}: mask has shape {mask.shape}, expected the image's {img.shape[:2]}")
        mask = mask.astype(bool)
    return np.ascontiguousarray(img[..., :3]), mask


class SIFTMatcher:
    """OpenCV SIFT + Lowe's ratio test + mutual nearest-neighbour check. ``conf = 1 − d1 / d2`` (d1, d2: the
    best and second-best descriptor distances, the larger of the two directions' ratios), so a distinctive match
    scores near 1 and one at the ratio limit near ``1 − ratio``."""

    def __init__(self, ratio: float = 0.8, max_features: int = 4000, contrast_threshold: float = 0.02):
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"SIFTMatcher: ratio must be in (0, 1), got {ratio}")
        self.ratio = float(ratio)
        self.max_features = int(max_features)
        self.contrast_threshold = float(contrast_threshold)

    def _features(self, img: np.ndarray, mask) -> tuple[np.ndarray, np.ndarray | None]:
        import cv2

        sift = cv2.SIFT_create(nfeatures=self.max_features, contrastThreshold=self.contrast_threshold)
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        m = None if mask is None else mask.astype(np.uint8) * 255
        kps, desc = sift.detectAndCompute(gray, m)
        pts = np.array([kp.pt for kp in kps], dtype=np.float64).reshape(-1, 2) + 0.5  # OpenCV → pixel centres
        return pts, desc

    def _knn(self, da: np.ndarray, db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
        best = np.full(len(da), -1, dtype=np.int64)
        ratio = np.full(len(da), np.inf)
        for q, pair in enumerate(knn):
            if len(pair) == 2:
                best[q] = pair[0].trainIdx
                ratio[q] = pair[0].distance / max(pair[1].distance, 1e-12)
        return best, ratio

    def __call__(self, img_a: np.ndarray, img_b: np.ndarray, mask_a=None, mask_b=None):
        """``(pts_a (M, 2), pts_b (M, 2), conf (M,))`` for RGB(A) uint8 images (alpha is used as mask if given)."""
        img_a, mask_a = _as_rgb_and_mask(img_a, mask_a, "SIFTMatcher image a")
        img_b, mask_b = _as_rgb_and_mask(img_b, mask_b, "SIFTMatcher image b")
        pa, da = self._features(img_a, mask_a)
        pb, db = self._features(img_b, mask_b)
        if da is None or db is None or len(da) < 2 or len(db) < 2:
            return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0)
        ab, ra = self._knn(da, db)
        ba, rb = self._knn(db, da)
        ia = np.arange(len(da))
        ok = (ab >= 0) & (ra < self.ratio)
        ok &= np.where(ab >= 0, ba[np.clip(ab, 0, None)] == ia, False)  # mutual nearest neighbours
        ia = ia[ok]
        ib = ab[ok]
        ratio = np.maximum(ra[ia], rb[ib])
        ok2 = ratio < self.ratio
        ia, ib, ratio = ia[ok2], ib[ok2], ratio[ok2]
        return pa[ia], pb[ib], 1.0 - ratio


#: Where the LoFTR "outdoor" checkpoint comes from (the file kornia's ``LoFTR(pretrained="outdoor")`` downloads).
LOFTR_WEIGHTS_HINT = ("the LoFTR 'outdoor' checkpoint (loftr_outdoor.ckpt) that kornia's LoFTR(pretrained='outdoor') "
                      "downloads (see kornia.feature.loftr.loftr.urls, or the LoFTR project zju3dv/LoFTR); copy it "
                      "to this path on a machine with internet access")


class LoFTRMatcher:
    """kornia's LoFTR with weights from a local checkpoint file (never downloaded here).

    ``weights``: a ``.ckpt``/``.pth`` holding a LoFTR state dict (either bare or under ``"state_dict"``).
    Images are converted to grayscale, padded to a multiple of 8 and matched at full resolution; matches outside
    either mask, or with confidence below ``min_conf``, are dropped.
    """

    def __init__(self, weights: str, device: str = "cpu", min_conf: float = 0.2):
        try:
            import kornia.feature as KF
        except ImportError as exc:
            raise ImportError("LoFTRMatcher needs kornia, which is not installed: `pip install kornia` (or use the "
                              "default SIFTMatcher, which needs only OpenCV)") from exc
        import torch

        if not os.path.isfile(weights):
            raise FileNotFoundError(f"LoFTR weights file {weights!r} not found; expected {LOFTR_WEIGHTS_HINT}")
        self.device = torch.device(device)
        self.min_conf = float(min_conf)
        self.net = KF.LoFTR(pretrained=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)  # tensors only: no pickled code
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise TypeError(f"LoFTR weights file {weights!r} holds a {type(state).__name__}, expected a state dict "
                             f"(or a checkpoint with 'state_dict'); expected {LOFTR_WEIGHTS_HINT}")
        self.net.load_state_dict(state)
        self.net.eval().to(self.device)

    def _tensor(self, img: np.ndarray, hw: tuple[int, int]):
        import torch

        gray = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
        out = np.zeros(hw, dtype=np.float32)
        out[: gray.shape[0], : gray.shape[1]] = gray
        return torch.from_numpy(out)[None, None].to(self.device)  # (B=1, C=1, H, W)

    def __call__(self, img_a: np.ndarray, img_b: np.ndarray, mask_a=None, mask_b=None):
        import torch

        img_a, mask_a = _as_rgb_and_mask(img_a, mask_a, "LoFTRMatcher image a")
        img_b, mask_b = _as_rgb_and_mask(img_b, mask_b, "LoFTRMatcher image b")
        h = max(img_a.shape[0], img_b.shape[0])
        w = max(img_a.shape[1], img_b.shape[1])
        hw = (-(-h // 8) * 8, -(-w // 8) * 8)
        with torch.inference_mode():
            out = self.net({"image0": self._tensor(img_a, hw), "image1": self._tensor(img_b, hw)})
        # LoFTR's coordinates put pixel centres at integers, like OpenCV's: shift to lift3d's +0.5
        pa = out["keypoints0"].cpu().numpy().astype(np.float64) + 0.5
        pb = out["keypoints1"].cpu().numpy().astype(np.float64) + 0.5
        conf = out["confidence"].cpu().numpy().astype(np.float64)
        keep = conf >= self.min_conf
        for pts, mask in ((pa, mask_a), (pb, mask_b)):
            if mask is not None:
                u = np.clip(pts[:, 0].astype(np.int64), 0, mask.shape[1] - 1)
                v = np.clip(pts[:, 1].astype(np.int64), 0, mask.shape[0] - 1)
                keep &= mask[v, u]
        return pa[keep], pb[keep], conf[keep]


def _pairs(n: int, pairs) -> list[tuple[int, int]]:
    if isinstance(pairs, str):
        if pairs == "all":
            return list(itertools.combinations(range(n), 2))
        if pairs == "input":
            return [(0, k) for k in range(1, n)]
        raise ValueError(f"pairs={pairs!r}: expected 'all', 'input' or a list of (i, j) view index pairs")
    out = [(int(i), int(j)) for i, j in pairs]
    bad = [p for p in out if not (0 <= p[0] < n and 0 <= p[1] < n and p[0] != p[1])]
    if bad:
        raise ValueError(f"pairs {bad} are not pairs of distinct view indices in [0, {n})")
    return out


def match_views(images, masks=None, matcher=None, pairs="all") -> Matches:
    """Matches between views (``pairs``: "all" = every pair, 10 for 5 views; "input" = (0, k); or a list)."""
    images = list(images)
    if len(images) < 2:
        raise ValueError(f"match_views needs at least 2 images, got {len(images)}")
    masks = [None] * len(images) if masks is None else list(masks)
    if len(masks) != len(images):
        raise ValueError(f"match_views: {len(masks)} masks for {len(images)} images; give one per image (or None)")
    matcher = SIFTMatcher() if matcher is None else matcher
    out = Matches()
    for i, j in _pairs(len(images), pairs):
        pa, pb, conf = matcher(images[i], images[j], masks[i], masks[j])
        out.pairs.append((i, j))
        out.pts_i.append(np.asarray(pa, dtype=np.float64).reshape(-1, 2))
        out.pts_j.append(np.asarray(pb, dtype=np.float64).reshape(-1, 2))
        out.conf.append(np.asarray(conf, dtype=np.float64).reshape(-1))
    return out


# ---------------------------------------------------------------------------------------------------- scoring
def triangulate(pts_a: np.ndarray, pts_b: np.ndarray, K: np.ndarray, c2w_a: np.ndarray, c2w_b: np.ndarray,
                iterations: int = 3) -> np.ndarray:
    """World points (M, 3) from pixel matches in two cameras: linear DLT on normalised coordinates, then
    ``iterations`` Gauss-Newton steps on the two views' pixel reprojection error."""
    Kinv = np.linalg.inv(K)
    rows = []
    for pts, c2w in ((pts_a, c2w_a), (pts_b, c2w_b)):
        P = invert_rigid(c2w)[:3]  # (3, 4) normalised camera: x ~ [R | t] X
        xn = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ Kinv.T
        rows.append(xn[:, 0:1] * P[2] - P[0])
        rows.append(xn[:, 1:2] * P[2] - P[1])
    A = np.stack(rows, axis=1)  # (M, 4, 4)
    _, _, vt = np.linalg.svd(A)
    X = vt[:, -1]
    w = X[:, 3:4]
    w = np.where(np.abs(w) < 1e-12, 1e-12, w)
    X = X[:, :3] / w
    # Gauss-Newton on the pixel reprojection error: the DLT minimises an algebraic error, which is neither the
    # geometric one nor invariant to the scene's scale (the radius gauge); a few steps fix both
    w2c = invert_rigid(np.stack([c2w_a, c2w_b]))
    obs = np.concatenate([pts_a, pts_b], axis=1)  # (M, 4): u_a, v_a, u_b, v_b
    for _ in range(iterations):
        res, jac = [], []
        ok = np.all(np.isfinite(X), axis=1)
        for v in range(2):
            R, t = w2c[v, :3, :3], w2c[v, :3, 3]
            p = X @ R.T + t
            ok &= p[:, 2] > 1e-6
            z = np.where(p[:, 2] > 1e-6, p[:, 2], 1.0)
            res.append(np.stack([K[0, 0] * p[:, 0] / z + K[0, 2], K[1, 1] * p[:, 1] / z + K[1, 2]], axis=-1))
            d = np.zeros((len(X), 2, 3))  # d(u, v) / d(camera point)
            d[:, 0, 0], d[:, 0, 2] = K[0, 0] / z, -K[0, 0] * p[:, 0] / z**2
            d[:, 1, 1], d[:, 1, 2] = K[1, 1] / z, -K[1, 1] * p[:, 1] / z**2
            jac.append(d @ R)
        if not ok.any():
            break
        r = (np.concatenate(res, axis=1) - obs)[ok]  # (M', 4)
        J = np.concatenate(jac, axis=1)[ok]  # (M', 4, 3)
        JtJ = np.einsum("mki,mkj->mij", J, J)
        JtJ += (1e-9 * np.trace(JtJ, axis1=1, axis2=2) + 1e-12)[:, None, None] * np.eye(3)  # damping
        step = np.linalg.solve(JtJ, np.einsum("mki,mk->mi", J, r)[..., None])[..., 0]
        X = X.copy()
        X[ok] -= np.where(np.isfinite(step), step, 0.0)  # points behind a camera keep their DLT position
    return X


def _robust(e: np.ndarray, huber: float, truncate: float) -> np.ndarray:
    """Truncated Huber: e²/2 below ``huber``, huber·(e − huber/2) above, constant above ``truncate``."""
    e = np.minimum(e, truncate)
    return np.where(e <= huber, 0.5 * e * e, huber * (e - 0.5 * huber))


def pair_errors(matches: Matches, c2w: np.ndarray, K: np.ndarray) -> list[np.ndarray]:
    """Per-match reprojection error (pixels; mean of the two views) for each pair. A point triangulated behind
    either camera gets +inf (the robust loss caps it)."""
    w2c = invert_rigid(np.asarray(c2w, dtype=np.float64))
    out = []
    for (i, j), pa, pb in zip(matches.pairs, matches.pts_i, matches.pts_j):
        if len(pa) == 0:
            out.append(np.zeros(0))
            continue
        X = triangulate(pa, pb, K, c2w[i], c2w[j])
        err = np.zeros(len(pa))
        behind = np.zeros(len(pa), dtype=bool)
        for view, pts in ((i, pa), (j, pb)):
            cam = X @ w2c[view, :3, :3].T + w2c[view, :3, 3]
            z = cam[:, 2]
            behind |= z <= 1e-9
            zs = np.where(z > 1e-9, z, 1.0)
            uv = np.stack([K[0, 0] * cam[:, 0] / zs + K[0, 2], K[1, 1] * cam[:, 1] / zs + K[1, 2]], axis=-1)
            err += 0.5 * np.linalg.norm(uv - pts, axis=1)
        out.append(np.where(behind, np.inf, err))
    return out


def reprojection_error(matches: Matches, c2w: np.ndarray, K: np.ndarray, huber_px: float = HUBER_PX,
                       truncate_px: float = TRUNCATE_PX) -> float:
    """Confidence-weighted robust reprojection error of ``matches`` under cameras ``c2w`` (V,4,4), ``K`` (3,3).

    Each match is triangulated with its two cameras and reprojected into both; its error e (pixels, mean of the
    two views) costs the truncated Huber ρ(e) (quadratic below ``huber_px``, linear above, constant above
    ``truncate_px`` so mismatches cannot dominate); the result is Σ conf·ρ(e) / Σ conf, in px².
    """
    if matches.num_matches == 0:
        raise ValueError("reprojection_error: no matches to score; match more textured or larger images, or use "
                         "LoFTRMatcher")
    num = den = 0.0
    for err, conf in zip(pair_errors(matches, c2w, K), matches.conf):
        num += float(np.sum(conf * _robust(err, huber_px, truncate_px)))
        den += float(np.sum(conf))
    if not den > 0:
        raise ValueError("reprojection_error: all match confidences are zero; nothing to weigh")
    return num / den


# ---------------------------------------------------------------------------------------------------- estimation
@dataclass
class EstimateResult:
    """``elevation_deg``: the estimate; ``candidates`` / ``errors``: the coarse grid and its scores;
    ``num_matches``: matches used (all pairs); ``pair_counts``: matches per pair."""

    elevation_deg: float
    candidates: np.ndarray
    errors: np.ndarray
    num_matches: int
    pair_counts: dict = field(default_factory=dict)


def _informative(pairs, offsets) -> list[bool]:
    """Pairs whose relative pose depends on θ: the two views differ in azimuth (view 0 has azimuth 0)."""
    az = [0.0] + [float(o[1]) for o in offsets]
    return [az[i] != az[j] for i, j in pairs]


def estimate_elevation(images, masks=None, radius: float = ONE2345_RADIUS, fov_deg: float = ONE2345_FOV_DEG,
                       matcher=None, candidates=DEFAULT_CANDIDATES, refine: bool = True,
                       offsets=NEIGHBOUR_OFFSETS, matches: Matches | None = None, size: int | None = None,
                       min_matches: int = MIN_MATCHES) -> EstimateResult:
    """Elevation (degrees) of ``images[0]`` given ``images[1:]`` at ``offsets`` from it (One-2-3-45's order).

    ``images``: 5 uint8 RGB(A) images of equal square size (alpha, or ``masks``, restricts the features to the
    object). Alternatively pass precomputed ``matches`` (then ``images`` may be None and ``size`` gives the image
    side in pixels). Scores every candidate with :func:`reprojection_error` (robust thresholds scaled by
    size / 256), then, if ``refine``, minimises over [best − step, best + step] with a bounded scalar search.
    Raises ``ValueError`` when there are too few matches.
    """
    from scipy.optimize import minimize_scalar

    offsets = tuple(tuple(float(x) for x in o) for o in offsets)
    if matches is None:
        if images is None or len(images) != len(offsets) + 1:
            got = None if images is None else len(images)
            raise ValueError(f"estimate_elevation: expected {len(offsets) + 1} images (the input then one per "
                             f"offset {offsets}), got {got}")
        shapes = {np.asarray(im).shape[:2] for im in images}
        if len(shapes) != 1 or next(iter(shapes))[0] != next(iter(shapes))[1]:
            raise ValueError(f"estimate_elevation: images must share one square size, got sizes {sorted(shapes)}")
        size = next(iter(shapes))[0]
        matches = match_views(images, masks, matcher)
    elif size is None:
        raise ValueError("estimate_elevation: with precomputed matches, pass size= (the image side in pixels)")
    informative = _informative(matches.pairs, offsets)
    n_all = matches.num_matches
    n_info = int(sum(len(c) for c, ok in zip(matches.conf, informative) if ok))
    if n_all < min_matches or n_info < min_matches:
        raise ValueError(f"estimate_elevation: too few feature matches: {n_all} in all, {n_info} between views "
                         f"that differ in azimuth (need at least {min_matches} of each; per pair: "
                         f"{matches.counts()}). Use images with more texture or a higher resolution (≥ 256²), or "
                         "a learned matcher (LoFTRMatcher)")
    candidates = np.asarray(candidates, dtype=np.float64).reshape(-1)
    if len(candidates) == 0:
        raise ValueError("estimate_elevation: candidates is empty; give the elevations (degrees) to try")
    scale = size / 256.0
    huber, truncate = HUBER_PX * scale, TRUNCATE_PX * scale

    def score(theta: float) -> float:
        c2w, K = neighbour_cameras(theta, radius, fov_deg, size, offsets)
        return reprojection_error(matches, c2w, K, huber, truncate)

    errors = np.array([score(t) for t in candidates])
    best = int(np.argmin(errors))
    elevation = float(candidates[best])
    if refine and len(candidates) > 1:
        step = float(np.max(np.diff(np.sort(candidates))))
        lo, hi = elevation - step, elevation + step
        limit = 89.0 - max(abs(o[0]) for o in offsets)
        lo, hi = max(lo, -limit), min(hi, limit)
        res = minimize_scalar(score, bounds=(lo, hi), method="bounded", options={"xatol": 0.02})
        if res.fun <= errors[best]:
            elevation = float(res.x)
    return EstimateResult(elevation, candidates, errors, n_all, matches.counts())


__all__ = [
    "DEFAULT_CANDIDATES",
    "EstimateResult",
    "LoFTRMatcher",
    "Matches",
    "SIFTMatcher",
    "estimate_elevation",
    "match_views",
    "neighbour_cameras",
    "pair_errors",
    "reprojection_error",
    "triangulate",
]
