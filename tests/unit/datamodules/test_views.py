import numpy as np
import pytest
import torch

from datamodules.views import (
    ViewSampler,
    collate,
    crop_view,
    finalize,
    premultiply,
    resize_view,
    select_views,
    unpremultiply,
)
from geometry.cameras import project_points
from render_farm.shards import CorruptSampleError
from tests.unit.datamodules.conftest import (
    DEPTH_SCALE,
    HALF_PIXEL,
    HALF_RGBA,
    MARKER,
    make_object,
    make_sample,
    plane_depth,
)


def _over(bgra: np.ndarray, bg) -> np.ndarray:
    """finalize's compositing of one straight-alpha BGRA image: (3, H, W) RGB float."""
    raw = {"input_bgra": torch.from_numpy(bgra), "target_bgra": torch.from_numpy(bgra[None]),
           "target_depth16": torch.zeros((1,) + bgra.shape[:2], dtype=torch.uint16),
           "depth_scale": torch.tensor(1.0), "background": torch.tensor(bg, dtype=torch.float32)}
    return finalize(raw)["input_image"].numpy()


def test_compositing_a_half_transparent_pixel():
    bgra = np.zeros((1, 1, 4), np.uint8)
    bgra[0, 0] = [HALF_RGBA[2], HALF_RGBA[1], HALF_RGBA[0], HALF_RGBA[3]]
    c, a = np.array(HALF_RGBA[:3]) / 255.0, HALF_RGBA[3] / 255.0
    pm = premultiply(bgra)
    assert pm.dtype == np.uint8 and pm[0, 0, 3] == HALF_RGBA[3]
    np.testing.assert_array_equal(pm[0, 0, :3], np.round(bgra[0, 0, :3].astype(float) * HALF_RGBA[3] / 255.0))
    assert np.abs(unpremultiply(pm).astype(int) - bgra).max() <= 1  # within rounding at alpha 128
    for bg in ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.2, 0.7, 0.4]):
        rgb = _over(bgra, bg)
        assert rgb.shape == (3, 1, 1) and rgb.dtype == np.float32
        np.testing.assert_allclose(rgb[:, 0, 0], c * a + np.array(bg) * (1 - a), atol=1e-6)
    rgb = _over(np.zeros((1, 1, 4), np.uint8), [0.2, 0.7, 0.4])
    np.testing.assert_allclose(rgb[:, 0, 0], [0.2, 0.7, 0.4], atol=1e-7)  # fully transparent: background only


def test_sampler_composites_over_white_and_reports_metres():
    sampler = ViewSampler(num_target_views=3, input_size=0, target_size=0, background="white")
    out = finalize(sampler(make_sample("w", n_views=5), np.random.default_rng(0)))
    c, a = np.array(HALF_RGBA[:3]) / 255.0, HALF_RGBA[3] / 255.0
    np.testing.assert_allclose(out["input_image"][:, HALF_PIXEL[0], HALF_PIXEL[1]].numpy(), c * a + 1 - a,
                               atol=1e-6)
    assert out["input_image"][:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert out["input_mask"][0, 0, 0] == 0.0 and out["input_mask"][0, 32, 32] == 1.0
    for n, view in enumerate(out["target_views"].tolist()):
        assert out["target_depths"][n, 0, 32, 32].item() == pytest.approx(plane_depth(view), abs=0.5 / DEPTH_SCALE)
        assert out["target_depths"][n, 0, 0, 0].item() == 0.0


def test_random_background_is_one_colour_per_sample():
    out = finalize(ViewSampler(num_target_views=2, background="random", input_size=0, target_size=0)(
        make_sample("r", n_views=4), np.random.default_rng(3)))
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
        bgra = np.ascontiguousarray(views[i]["rgba"][..., [2, 1, 0, 3]])  # as decoded
        depth = views[i]["depth"]
        before_uv = project_points(MARKER[None], K[i], c2w[i])[0][0]
        offset = _marker_centroid(_on_black(bgra), before_uv) - before_uv  # marker drawn on the nearest pixel corner
        target = (size, size) if size else (64, 64)
        bgra2, depth2, K2 = resize_view(bgra, depth, K[i], target)
        s = target[0] / 64.0
        if crop:
            bgra2, depth2, K2 = crop_view(bgra2, depth2, K2, 5, 3, crop)
        after_uv = project_points(MARKER[None], K2, c2w[i])[0][0]
        np.testing.assert_allclose(_marker_centroid(_on_black(bgra2), after_uv), after_uv + offset * s, atol=0.05)
        assert bgra2.shape[:2] == depth2.shape == ((crop, crop) if crop else target)


def _on_black(bgra: np.ndarray) -> np.ndarray:
    """Straight-alpha BGRA over black: (3, H, W) RGB in [0, 1]."""
    return premultiply(bgra)[..., [2, 1, 0]].transpose(2, 0, 1).astype(np.float64) / 255.0


def test_depth_is_resized_with_nearest_never_blended():
    views, c2w, K, hw, _ = make_object("z", n_views=1)
    depth = views[0]["depth"]
    for size in (21, 32, 50, 100):
        bgra2, depth2, _ = resize_view(views[0]["rgba"], depth, K[0], (size, size))
        assert depth2.dtype == np.uint16
        assert set(np.unique(depth2).tolist()) <= set(np.unique(depth).tolist())
        alpha2 = bgra2[..., 3]
        assert ((alpha2 > 0) & (alpha2 < 255)).any() or size == 32  # colour/alpha are filtered, depth is not


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
    raw = ViewSampler(num_target_views=3, input_size=32, target_size=48, target_crop_size=16)(
        make_sample("s", n_views=6), np.random.default_rng(1))
    # the loader carries integers: straight-alpha BGRA uint8 and depth uint16 as stored
    assert raw["input_bgra"].shape == (32, 32, 4) and raw["input_bgra"].dtype == torch.uint8
    assert len(raw["target_bgra"]) == 3 and raw["target_bgra"][0].shape == (16, 16, 4)
    assert raw["target_depth16"][0].dtype == torch.uint16
    batch = collate([raw, raw])  # each sample's views are stacked once into (B, N, ...)
    assert batch["target_bgra"].shape == (2, 3, 16, 16, 4) and batch["target_depth16"].shape == (2, 3, 16, 16)
    assert torch.equal(batch["target_bgra"][1, 2], raw["target_bgra"][2]) and batch["key"] == ["s", "s"]
    out = finalize(raw)
    assert not any(k in out for k in ("input_bgra", "target_bgra", "target_depth16"))
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
