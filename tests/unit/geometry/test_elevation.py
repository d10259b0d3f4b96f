"""geometry.elevation on synthetic matches (no Blender): cameras, scoring, estimation, matchers, errors."""

import itertools
import sys

import numpy as np
import pytest

from geometry.cameras import intrinsics_from_fov, project_points
from geometry.elevation import (
    LoFTRMatcher,
    Matches,
    SIFTMatcher,
    estimate_elevation,
    match_views,
    neighbour_cameras,
    reprojection_error,
)


def _elevation_azimuth(c2w):
    p = c2w[:, :3, 3]
    r = np.linalg.norm(p, axis=1)
    return r, np.degrees(np.arcsin(p[:, 2] / r)), np.degrees(np.arctan2(p[:, 0], -p[:, 1]))


def synthetic_matches(elevation_deg, noise_px=0.5, n=400, seed=0, size=256):
    """Random points on the unit sphere seen by the true cameras: a match per point visible in both views."""
    rng = np.random.default_rng(seed)
    c2w, K = neighbour_cameras(elevation_deg, size=size)
    pts = rng.normal(size=(n, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    out = Matches()
    for i, j in itertools.combinations(range(5), 2):
        # visible from a camera where the outward normal (= the point) faces it: (C − P)·P > 0
        vis = (pts @ c2w[i, :3, 3] > 1.0) & (pts @ c2w[j, :3, 3] > 1.0)
        ua, _ = project_points(pts[vis], K, c2w[i])
        ub, _ = project_points(pts[vis], K, c2w[j])
        out.pairs.append((i, j))
        out.pts_i.append(ua + rng.normal(0.0, noise_px, ua.shape))
        out.pts_j.append(ub + rng.normal(0.0, noise_px, ub.shape))
        out.conf.append(rng.uniform(0.3, 1.0, vis.sum()))
    return out


@pytest.mark.parametrize("theta", [-20.0, 0.0, 17.5, 45.0])
def test_neighbour_cameras_are_at_the_one2345_offsets(theta):
    c2w, K = neighbour_cameras(theta, radius=2.8, fov_deg=40.0, size=256)
    assert c2w.shape == (5, 4, 4)
    np.testing.assert_allclose(K, intrinsics_from_fov(40.0, 256, 256))
    r, el, az = _elevation_azimuth(c2w)
    np.testing.assert_allclose(r, 2.8)
    np.testing.assert_allclose(el, [theta, theta + 10, theta - 10, theta, theta], atol=1e-9)
    np.testing.assert_allclose(az, [0, 0, 0, 10, -10], atol=1e-9)
    for m in c2w:  # looking at the origin, +Z up (image up = camera −y has a positive world z)
        o, d = m[:3, 3], m[:3, 2]
        assert np.linalg.norm(np.cross(d, -o)) < 1e-9 and np.dot(d, -o) > 0
        assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0)
        assert -m[2, 1] > 0


def test_neighbour_cameras_refuse_the_pole():
    with pytest.raises(ValueError, match="pole"):
        neighbour_cameras(85.0)


def test_reprojection_error_is_zero_for_exact_matches_and_grows_with_a_wrong_elevation():
    m = synthetic_matches(20.0, noise_px=0.0)
    right = reprojection_error(m, *neighbour_cameras(20.0))
    assert right < 1e-12
    wrong = [reprojection_error(m, *neighbour_cameras(20.0 + d)) for d in (2.0, 5.0, 10.0)]
    assert right < wrong[0] < wrong[1] < wrong[2], wrong


@pytest.mark.parametrize("theta", [-5.0, 15.0, 35.0])
def test_estimate_recovers_the_elevation_from_noisy_synthetic_matches(theta):
    m = synthetic_matches(theta, noise_px=0.5, seed=int(theta) + 100)
    res = estimate_elevation(None, matches=m, size=256)
    print(f"theta {theta}: estimate {res.elevation_deg:.3f} ({res.num_matches} matches)")
    assert abs(res.elevation_deg - theta) <= 1.0
    assert len(res.errors) == len(res.candidates)
    assert res.candidates[np.argmin(res.errors)] == pytest.approx(theta, abs=2.0 + 1e-9)


def test_radius_is_a_gauge():
    m = synthetic_matches(10.0)
    a = estimate_elevation(None, matches=m, size=256, radius=2.8, refine=False)
    b = estimate_elevation(None, matches=m, size=256, radius=1.7, refine=False)
    np.testing.assert_allclose(a.errors, b.errors, rtol=1e-6, atol=1e-9)


def test_too_few_matches_is_a_clear_error():
    m = synthetic_matches(10.0, n=5)  # 26 matches at the layout's framing distance (more of the sphere is visible)
    with pytest.raises(ValueError, match=r"too few feature matches.*texture.*resolution.*LoFTRMatcher"):
        estimate_elevation(None, matches=m, size=256)
    blank = [np.full((64, 64, 3), 128, np.uint8)] * 5
    with pytest.raises(ValueError, match="too few feature matches: 0 in all"):
        estimate_elevation(blank)


def test_wrong_number_of_images_and_bad_pairs_are_named():
    with pytest.raises(ValueError, match="expected 5 images"):
        estimate_elevation([np.zeros((8, 8, 3), np.uint8)] * 3)
    with pytest.raises(ValueError, match=r"pairs \[\(0, 7\)\]"):
        match_views([np.zeros((8, 8, 3), np.uint8)] * 5, pairs=[(0, 7)])


def _texture(size=160, seed=0):
    rng = np.random.default_rng(seed)
    import cv2

    img = np.zeros((size, size, 3))
    for cells, amp in ((5, 1.0), (10, 0.6), (20, 0.4)):
        img += amp * cv2.resize(rng.uniform(0, 1, (cells, cells, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).astype(np.uint8)


def test_sift_matcher_finds_a_known_shift_in_pixel_centre_coordinates():
    big = _texture(200)
    a, b = big[10:170, 10:170], big[13:173, 17:177]  # b's pixel (u, v) is a's (u + 7, v + 3)
    pa, pb, conf = SIFTMatcher()(a, b)
    assert len(pa) >= 30
    assert np.all((conf > 0) & (conf <= 1))
    np.testing.assert_allclose(np.median(pa - pb, axis=0), [7.0, 3.0], atol=0.2)
    mask = np.zeros(a.shape[:2], bool)
    mask[:, :80] = True
    pa_m, _, _ = SIFTMatcher()(a, b, mask_a=mask)
    assert len(pa_m) > 0 and np.all(pa_m[:, 0] < 81)


def test_loftr_without_kornia_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "kornia", None)  # makes `import kornia...` raise ImportError
    monkeypatch.setitem(sys.modules, "kornia.feature", None)
    with pytest.raises(ImportError, match="pip install kornia"):
        LoFTRMatcher("/nonexistent/loftr_outdoor.ckpt")


def test_loftr_missing_weights_names_the_path(tmp_path):
    pytest.importorskip("kornia")
    path = str(tmp_path / "loftr_outdoor.ckpt")
    with pytest.raises(FileNotFoundError, match="loftr_outdoor.ckpt.*not found.*LoFTR 'outdoor' checkpoint"):
        LoFTRMatcher(path)
