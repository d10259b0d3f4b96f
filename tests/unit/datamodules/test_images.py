"""ImageDataModule: image files / globs / directories → the predict dict (shapes, compositing, re-centring,
cameras, errors, batching)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.images import ImageDataModule
from geometry.cameras import intrinsics_from_fov
from geometry.rays import canonical_c2w

COLOUR = (200, 40, 90)


def write_rgba(path, size=(96, 64), box=(10, 8, 30, 20)) -> str:
    """A (W, H) = ``size`` RGBA PNG: an opaque COLOUR rectangle (x0, y0, w, h) = ``box`` off-centre, the rest fully
    transparent with a green colour that must never show."""
    w, h = size
    a = np.zeros((h, w, 4), np.uint8)
    a[..., 1] = 255  # colour under alpha 0
    x0, y0, bw, bh = box
    a[y0:y0 + bh, x0:x0 + bw] = (*COLOUR, 255)
    Image.fromarray(a, "RGBA").save(path)
    return str(path)


def write_jpg(path, size=(40, 40)) -> str:
    a = np.full((size[1], size[0], 3), (30, 60, 90), np.uint8)
    Image.fromarray(a, "RGB").save(path, quality=95)
    return str(path)


def items(dm: ImageDataModule) -> list[dict]:
    dm.setup("predict")
    return [dm.predict_dataset[i] for i in range(len(dm.predict_dataset))]


def bbox(mask: torch.Tensor, thr: float = 0.5) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1), inclusive, of mask > thr."""
    rows, cols = torch.nonzero(mask[0] > thr, as_tuple=True)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_item_shapes_dtypes_cameras_and_white_compositing(tmp_path):
    path = write_rgba(tmp_path / "Chair v2.png")
    S = 32
    (item,) = items(ImageDataModule(path, input_size=S, fov_deg=40.0, camera_distance=2.5))
    assert item["key"] == "Chair_v2" and item["path"] == path
    assert item["input_image"].shape == (3, S, S) and item["input_image"].dtype == torch.float32
    assert item["input_mask"].shape == (1, S, S) and item["input_mask"].dtype == torch.float32
    assert item["input_K"].shape == (3, 3) and item["input_K"].dtype == torch.float32
    assert item["input_c2w"].shape == (4, 4) and item["input_c2w"].dtype == torch.float32
    assert item["background"].dtype == torch.float32
    torch.testing.assert_close(item["background"], torch.ones(3))
    img, mask = item["input_image"], item["input_mask"]
    assert 0.0 <= img.min() and img.max() <= 1.0 and 0.0 <= mask.min() and mask.max() <= 1.0
    transparent = mask[0] == 0
    assert transparent.any()
    assert torch.all(img[:, transparent] == 1.0)  # transparent → white, the hidden green never shows
    opaque = mask[0] == 1
    assert opaque.sum() > 50
    torch.testing.assert_close(img[:, opaque], (torch.tensor(COLOUR, dtype=torch.float32) / 255)[:, None]
                               .expand(3, int(opaque.sum())), atol=1e-5, rtol=0)
    edge = (mask[0] > 0) & (mask[0] < 1)  # resampled edges: colour blends with white, never with green
    if edge.any():
        assert torch.all(img[1, edge] <= torch.maximum(img[0, edge], img[2, edge]) + 1e-5)
    torch.testing.assert_close(item["input_K"], torch.as_tensor(intrinsics_from_fov(40.0, S, S), dtype=torch.float32))
    torch.testing.assert_close(item["input_c2w"], canonical_c2w(2.5))


def test_black_background(tmp_path):
    (item,) = items(ImageDataModule(write_rgba(tmp_path / "a.png"), input_size=32, background="black"))
    transparent = item["input_mask"][0] == 0
    assert torch.all(item["input_image"][:, transparent] == 0.0)
    torch.testing.assert_close(item["background"], torch.zeros(3))


@pytest.mark.parametrize("ratio", [0.85, 0.5])
def test_foreground_ratio_recentres_and_scales_object(tmp_path, ratio):
    S = 64
    # an off-centre 30×20 rectangle in a 96×64 image
    (item,) = items(ImageDataModule(write_rgba(tmp_path / "a.png", box=(50, 36, 30, 20)), input_size=S,
                                    foreground_ratio=ratio))
    r0, r1, c0, c1 = bbox(item["input_mask"])
    width, height = c1 - c0 + 1, r1 - r0 + 1
    assert width == pytest.approx(ratio * S, abs=1.5)  # the longer side fills the ratio
    assert height == pytest.approx(ratio * S * 20 / 30, abs=1.5)  # aspect kept
    assert (c0 + c1 + 1) / 2 == pytest.approx(S / 2, abs=1.0)  # centred
    assert (r0 + r1 + 1) / 2 == pytest.approx(S / 2, abs=1.0)


def test_foreground_ratio_zero_keeps_layout(tmp_path):
    # 64×64 image, rectangle at x 10..29, y 8..27 (20×20): with the ratio off, S = 32 halves every coordinate
    (item,) = items(ImageDataModule(write_rgba(tmp_path / "a.png", size=(64, 64), box=(10, 8, 20, 20)),
                                    input_size=32, foreground_ratio=0))
    assert bbox(item["input_mask"]) == (4, 13, 5, 14)


def test_rgb_jpg_mask_is_all_ones_and_warns_once(tmp_path, caplog):
    path = write_jpg(tmp_path / "photo.jpg")
    dm = ImageDataModule(path, input_size=16)
    with caplog.at_level(logging.WARNING, logger="datamodules.images"):
        (item,) = items(dm)
        dm.setup("predict")  # a second setup does not warn again
        list(dm.predict_dataloader())
    assert torch.all(item["input_mask"] == 1.0)
    torch.testing.assert_close(item["input_image"][:, 8, 8], torch.tensor([30, 60, 90]) / 255.0, atol=0.02, rtol=0)
    warnings = [r for r in caplog.records if "no alpha channel" in r.getMessage()]
    assert len(warnings) == 1 and path in warnings[0].getMessage()


def test_glob_directory_and_list_inputs(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    write_rgba(d / "b.png")
    write_rgba(d / "a.png")
    write_jpg(d / "c.jpg")
    (d / "notes.txt").write_text("not an image")
    other = write_rgba(tmp_path / "z.png")
    dir_keys = [it["key"] for it in items(ImageDataModule(str(d), input_size=16))]
    assert dir_keys == ["a", "b", "c"]  # sorted, only image extensions
    glob_keys = [it["key"] for it in items(ImageDataModule(str(d / "*.png"), input_size=16))]
    assert glob_keys == ["a", "b"]
    list_items = items(ImageDataModule([other, str(d / "*.png"), str(d)], input_size=16))
    assert [it["key"] for it in list_items] == ["z", "a", "b", "c"]  # order kept, a file reached twice once


def test_clashing_stems_get_unique_keys(tmp_path):
    write_rgba(tmp_path / "x.png")
    write_jpg(tmp_path / "x.jpg")
    keys = [it["key"] for it in items(ImageDataModule(str(tmp_path), input_size=16))]
    assert keys == ["x", "x-2"]


def test_no_match_names_the_pattern(tmp_path):
    pattern = str(tmp_path / "missing" / "*.png")
    with pytest.raises(FileNotFoundError, match=r"no file matches the pattern .*missing/\*\.png.*expected"):
        ImageDataModule(pattern).setup("predict")
    with pytest.raises(FileNotFoundError, match=r"nothing\.png.*expected an image file, a glob"):
        ImageDataModule(str(tmp_path / "nothing.png")).setup("predict")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images in directory .*empty.*\.png"):
        ImageDataModule(str(empty)).predict_dataloader()


def test_corrupt_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(ValueError, match=r"could not decode .*broken\.png.*: .*; expected an RGBA PNG or an RGB image"):
        ImageDataModule(str(bad)).setup("predict")


def test_truncated_file_fails_on_load_naming_the_file(tmp_path):
    good = write_rgba(tmp_path / "t.png", size=(256, 256), box=(10, 10, 100, 100))
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[:len(data) // 2])  # a valid header, a cut-off body
    dm = ImageDataModule(good, input_size=16)
    with pytest.raises(ValueError, match=r"could not decode .*t\.png.*expected an RGBA PNG or an RGB image"):
        list(dm.predict_dataloader())


@pytest.mark.parametrize("kwargs, match", [({"background": "random"}, "background"),
                                           ({"foreground_ratio": 1.5}, "foreground_ratio"),
                                           ({"fov_deg": 0.0}, "fov_deg"), ({"input_size": 0}, "input_size")])
def test_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageDataModule(str(tmp_path), **kwargs)


def test_dataloader_batches_with_default_collate(tmp_path):
    for name in ("a", "b", "c"):
        write_rgba(tmp_path / f"{name}.png")
    dm = ImageDataModule(str(tmp_path / "*.png"), input_size=24, batch_size=2)
    batches = list(dm.predict_dataloader())
    assert [len(b["key"]) for b in batches] == [2, 1]
    b = batches[0]
    assert b["key"] == ["a", "b"] and b["path"] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert b["input_image"].shape == (2, 3, 24, 24) and b["input_mask"].shape == (2, 1, 24, 24)
    assert b["input_K"].shape == (2, 3, 3) and b["input_c2w"].shape == (2, 4, 4) and b["background"].shape == (2, 3)
    torch.testing.assert_close(b["input_c2w"][1], canonical_c2w(2.0))
