"""geometry.image: the one resampling rule (area when shrinking, bilinear otherwise, nearest for depth and masks)
against hand-computed values, and image writing."""

import numpy as np
import pytest
from PIL import Image

from geometry.image import resize, resize_nearest, to_uint8, write_image


def test_shrinking_averages_areas():
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = resize(img, 2, 2)
    np.testing.assert_allclose(out, [[2.5, 4.5], [10.5, 12.5]])  # the mean of each 2×2 block
    # a 3:1 shrink of a one-pixel-wide line keeps its mass (bilinear would sample past it and lose it)
    line = np.zeros((9, 9), np.float32)
    line[:, 4] = 1.0
    np.testing.assert_allclose(resize(line, 3, 3)[:, 1], 1.0 / 3.0, atol=1e-6)


def test_enlarging_is_bilinear_between_pixel_centres():
    img = np.array([[0.0, 1.0]], np.float32)
    # output centres at input x = -0.25, 0.25, 0.75, 1.25 (in input pixel-centre units): clamped at the edges
    np.testing.assert_allclose(resize(img, 1, 4), [[0.0, 0.25, 0.75, 1.0]], atol=1e-6)


def test_one_side_growing_is_bilinear_and_a_same_size_image_is_returned_as_is():
    img = np.array([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]], np.float32)
    out = resize(img, 4, 2)  # rows grow (bilinear), columns shrink: pixel centres x = 0.5, 2.5 in input units
    np.testing.assert_allclose(out[:, 0], [0.5, 1.5, 3.5, 4.5], atol=1e-6)
    assert resize(img, 2, 4) is img


def test_channels_and_dtypes_are_kept():
    rgba = np.random.default_rng(0).integers(0, 256, (8, 6, 4), dtype=np.uint8)
    assert resize(rgba, 4, 3).shape == (4, 3, 4) and resize(rgba, 4, 3).dtype == np.uint8
    one = np.ones((8, 6, 1), np.float32)
    assert resize(one, 16, 12).shape == (16, 12, 1)
    with pytest.raises(ValueError, match="height must be a positive number of pixels, got 0"):
        resize(one, 0, 4)


def test_nearest_never_blends():
    depth = np.array([[1, 2], [3, 4]], np.uint16)
    np.testing.assert_array_equal(resize_nearest(depth, 4, 4), np.kron(depth, np.ones((2, 2), np.uint16)))
    np.testing.assert_array_equal(resize_nearest(np.kron(depth, np.ones((2, 2), np.uint16)), 2, 2), depth)
    assert set(np.unique(resize_nearest(depth, 3, 5))) <= {1, 2, 3, 4}


def test_write_image_round_trips_and_converts_floats(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    path = write_image(tmp_path / "sub" / "rgb.png", rgb)  # parent directories are created
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(write_image(tmp_path / "a.png", rgba))), rgba)
    grey = np.asarray(Image.open(write_image(tmp_path / "g.png", rgb[..., :1])))
    np.testing.assert_array_equal(grey, rgb[..., 0])
    floats = np.array([[[0.0, 0.5, 1.0], [-0.2, 1.3, 0.25]]])
    np.testing.assert_array_equal(to_uint8(floats), [[[0, 128, 255], [0, 255, 64]]])  # clipped, rounded
    np.testing.assert_array_equal(np.asarray(Image.open(write_image(tmp_path / "f.png", floats))), to_uint8(floats))


def test_write_image_names_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=r"expected a non-empty \(H, W\).*got shape \(4, 4, 2\)"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match=r"could not write .*x\.nope.*\.png or \.jpg"):
        write_image(tmp_path / "x.nope", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 image or floats"):
        write_image(tmp_path / "x.png", np.zeros((4, 4), np.int32))
