"""The single-image front end of One-2-3-45 (lightning_modules.one2345_inference) with a tiny random Zero123."""

import numpy as np
import pytest
import torch

from geometry.cameras import zero123_relative_camera
from geometry.elevation import neighbour_cameras
from lightning_modules.networks.zero123 import Zero123Pipeline
from lightning_modules.one2345_inference import NUM_VIEWS, One2345Views, layout_cameras, view_layout
from tests.weights import save_tiny_zero123


@pytest.fixture(scope="module")
def tiny_zero123(tmp_path_factory):
    torch.manual_seed(0)
    return Zero123Pipeline.from_pretrained(save_tiny_zero123(tmp_path_factory.mktemp("z123") / "w"), device="cpu")


def test_layout_follows_the_one2345_rig_order():
    el, az = view_layout(20.0)
    assert len(el) == len(az) == 40
    np.testing.assert_allclose(az[:NUM_VIEWS], np.arange(8) * 45.0)
    np.testing.assert_allclose(el[:NUM_VIEWS], [20, 0, 20, 0, 20, 0, 20, 0])  # θ ≥ 15°: the second ring at 0°
    assert view_layout(5.0)[0][1] == 30.0  # θ < 15°: the second ring at 30°
    # neighbours of view k: (±10°, 0), (0, ±10°) about it, in geometry.elevation's (and the rig's) order
    np.testing.assert_allclose(el[8:12], [30, 10, 20, 20])
    np.testing.assert_allclose(az[8:12], [0, 0, 10, 350])
    # the input and its neighbours are exactly the cameras the elevation estimator scores
    c2w, K = layout_cameras(20.0, 64)
    est_c2w, est_K = neighbour_cameras(20.0, size=64)
    np.testing.assert_allclose(c2w[[0, 8, 9, 10, 11]], est_c2w, atol=1e-6)
    np.testing.assert_allclose(K[0], est_K, atol=1e-5)


def test_forty_views_from_one_image(tiny_zero123):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (96, 96, 3)).astype(np.float32)
    make = One2345Views(tiny_zero123, steps=1, guidance_scale=1.0, source_size=32, elevation_deg=25.0)
    views = make(image)
    assert views.images.shape == (40, 32, 32, 3) and views.c2w.shape == (40, 4, 4) and views.K.shape == (40, 3, 3)
    assert (views.elevation_deg, views.elevation_source) == (25.0, "given")
    assert views.K[0, 0, 2] == pytest.approx(16.0)  # K in pixels of the 32² sources
    # view 0 is the input (at Zero123's size, then the source size), not a prediction
    import cv2

    expected = cv2.resize(cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA), (32, 32),
                          interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(views.images[0], expected, atol=1e-6)
    assert np.isfinite(views.images).all() and views.images.min() >= 0 and views.images.max() <= 1
    # deterministic: the same image gives the same views
    np.testing.assert_array_equal(make(image).images, views.images)
    # views 1..7 are 45° steps of azimuth from the input
    d_theta, d_phi, _ = zero123_relative_camera(views.c2w[:1], views.c2w[1:8])
    np.testing.assert_allclose(np.degrees(d_phi), np.arange(1, 8) * 45.0, atol=1e-4)


def test_failed_estimation_falls_back_and_says_so(tiny_zero123):
    """A blank image has no features to match: 0° is used, reported as "fallback", and nothing is lost."""
    views = One2345Views(tiny_zero123, steps=1, guidance_scale=1.0, source_size=32)(np.ones((64, 64, 3), np.float32))
    assert (views.elevation_deg, views.elevation_source, views.matches) == (0.0, "fallback", 0)
    assert views.images.shape == (40, 32, 32, 3)
