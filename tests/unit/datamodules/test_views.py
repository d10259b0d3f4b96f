import numpy as np
import pytest
import torch

from datamodules.decode import CorruptSampleError
from datamodules.views import ViewSampler, composite, crop_view, resize_view, select_views
from geometry.cameras import project_points
from tests.unit.datamodules.conftest import (DEPTH_SCALE, HALF_PIXEL, HALF_RGBA, MARKER, make_object, make_sample,
                                             plane_depth)


def test_compositing_a_half_transparent_pixel():
    rgba = np.zeros((1, 1, 4), np.uint8)
    rgba[0, 0] = HALF_RGBA
    c, a = np.array(HALF_RGBA[:3]) / 255.0, HALF_RGBA[3] / 255.0
    for bg in ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.2, 0.7, 0.4]):
        rgb, alpha = composite(rgba, np.array(bg, np.float32))
        assert rgb.shape == (3, 1, 1) and rgb.dtype == np.float32
        bgr, _ = composite(rgba[..., [2, 1, 0, 3]], np.array(bg, np.float32), bgra=True)
        np.testing.assert_array_equal(bgr, rgb)
        np.testing.assert_allclose(rgb[:, 0, 0], c * a + np.array(bg) * (1 - a), atol=1e-6)
        assert alpha[0, 0] == pytest.approx(a)
    rgb, alpha = composite(np.zeros((1, 1, 4), np.uint8), np.array([0.2, 0.7, 0.4], np.float32))
    np.testing.assert_allclose(rgb[:, 0, 0], [0.2, 0.7, 0.4], atol=1e-7)  # fully transparent: background only


def test_sampler_composites_over_white_and_reports_metres():
    sampler = ViewSampler(num_target_views=3, input_size=0, target_size=0, background="white")
    out = sampler(make_sample("w", n_views=5), np.random.default_rng(0))
    c, a = np.array(HALF_RGBA[:3]) / 255.0, HALF_RGBA[3] / 255.0
    np.testing.assert_allclose(out["input_image"][:, HALF_PIXEL[0], HALF_PIXEL[1]].numpy(), c * a + 1 - a, atol=1e-6)
    assert out["input_image"][:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert out["input_mask"][0, 0, 0] == 0.0 and out["input_mask"][0, 32, 32] == 1.0
    for n, view in enumerate(out["target_views"].tolist()):
        assert out["target_depths"][n, 0, 32, 32].item() == pytest.approx(plane_depth(view), abs=0.5 / DEPTH_SCALE)
        assert out["target_depths"][n, 0, 0, 0].item() == 0.0


def test_random_background_is_one_colour_per_sample():
    out = ViewSampler(num_target_views=2, background="random", input_size=0, target_size=0)(
        make_sample("r", n_views=4), np.random.default_rng(3))
    bg = out["input_image"][:, 0, 0]
    assert not torch.allclose(bg, torch.ones(3)) and not torch.allclose(bg, torch.zeros(3))
    for img in out["target_images"]:
        torch.testing.assert_close(img[:, 0, 0], bg)


def _marker_centroid(rgb: np.ndarray, near_uv, radius: int = 8) -> np.ndarray:
    """Red-weighted centroid (continuous pixel coordinates, centres at +0.5) of (3,H,W) ``rgb`` near ``near_uv``."""
    u0, v0 = int(near_uv[0]), int(near_uv[1])
    ys, xs = np.mgrid[max(v0 - radius, 0):v0 + radius, max(u0 - radius, 0):u0 + radius]
    w = rgb[0, ys, xs]
    return np.array([(w * (xs + 0.5)).sum() / w.sum(), (w * (ys + 0.5)).sum() / w.sum()])


@pytest.mark.parametrize("size,crop", [(32, 0), (32, 24), (0, 40), (96, 0), (48, 40)])
def test_resize_and_crop_keep_the_marker_on_its_projection(size, crop):
    views, c2w, K, hw, _ = make_object("p", n_views=3)
    for i in range(3):
        rgb, alpha = composite(views[i]["rgba"], np.zeros(3, np.float32))
        depth = views[i]["depth"].astype(np.float32) / DEPTH_SCALE
        before_uv = project_points(MARKER[None], K[i], c2w[i])[0][0]
        offset = _marker_centroid(rgb, before_uv) - before_uv  # the marker is drawn on the nearest pixel corner
        target = (size, size) if size else (64, 64)
        rgb2, alpha2, depth2, K2 = resize_view(rgb, alpha, depth, K[i], target)
        s = target[0] / 64.0
        if crop:
            rgb2, alpha2, depth2, K2 = crop_view(rgb2, alpha2, depth2, K2, 5, 3, crop)
        after_uv = project_points(MARKER[None], K2, c2w[i])[0][0]
        np.testing.assert_allclose(_marker_centroid(rgb2, after_uv), after_uv + offset * s, atol=0.05)
        assert rgb2.shape[1:] == alpha2.shape == depth2.shape == ((crop, crop) if crop else target)


def test_depth_is_resized_with_nearest_never_blended():
    views, c2w, K, hw, _ = make_object("z", n_views=1)
    depth = views[0]["depth"].astype(np.float32) / DEPTH_SCALE
    rgb, alpha = composite(views[0]["rgba"], np.ones(3, np.float32))
    for size in (21, 32, 50, 100):
        _, alpha2, depth2, _ = resize_view(rgb, alpha, depth, K[0], (size, size))
        assert set(np.unique(depth2).tolist()) <= set(np.unique(depth).tolist())
        assert ((alpha2 > 0) & (alpha2 < 1)).any() or size == 32  # colour/alpha are filtered, depth is not


def test_select_views_rules():
    rng = np.random.default_rng(0)
    roles = ["gt", "gt", "source", "gt", "gt", "gt"]
    inp, tg = select_views(roles, 5, "source", False, rng)
    assert inp == 2 and sorted(tg.tolist()) == [0, 1, 3, 4, 5]
    inp, tg = select_views(roles, 6, 4, True, rng)
    assert inp == 4 and sorted(tg.tolist()) == list(range(6))
    seen = {select_views(["gt"] * 6, 2, "source", False, rng)[0] for _ in range(50)}  # no source role: random
    assert len(seen) > 3
    for _ in range(20):
        inp, tg = select_views(roles, 3, "random", False, rng)
        assert inp not in tg.tolist() and len(set(tg.tolist())) == 3
    with pytest.raises(CorruptSampleError, match="only 5 are available"):
        select_views(roles, 6, "source", False, rng, key="k")
    with pytest.raises(CorruptSampleError, match="input_view 9"):
        select_views(roles, 1, 9, False, rng)


def test_output_shapes_and_dtypes():
    out = ViewSampler(num_target_views=3, input_size=32, target_size=48, target_crop_size=16)(
        make_sample("s", n_views=6), np.random.default_rng(1))
    assert out["key"] == "s" and out["input_view"] == 0
    assert out["input_image"].shape == (3, 32, 32) and out["input_mask"].shape == (1, 32, 32)
    assert out["input_c2w"].shape == (4, 4) and out["input_K"].shape == (3, 3)
    assert out["target_images"].shape == (3, 3, 16, 16) and out["target_masks"].shape == (3, 1, 16, 16)
    assert out["target_depths"].shape == (3, 1, 16, 16)
    assert out["target_c2w"].shape == (3, 4, 4) and out["target_K"].shape == (3, 3, 3)
    assert all(v.dtype == torch.float32 for k, v in out.items() if k.startswith(("input_i", "target_i", "target_d")))
    assert out["input_K"][0, 0] == pytest.approx(float(make_object("s")[2][0][0, 0]) * 0.5)


@pytest.mark.parametrize("kwargs,match", [
    ({"input_view": "front"}, "input_view 'front'"),
    ({"background": "grey"}, "background 'grey'"),
    ({"num_target_views": 0}, "at least 1"),
    ({"target_size": 64, "target_crop_size": 128}, "larger than target_size"),
])
def test_bad_options_say_what_is_expected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViewSampler(**kwargs)
