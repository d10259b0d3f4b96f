"""ImageDataModule: image files / globs / directories → the predict dict (shapes, compositing, re-centring,
cameras, errors, batching, foreground extraction and segmentation models)."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.foreground import extract_foreground
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
    """An RGB JPEG: a (30, 60, 90) square over the middle 60 % of a plain light grey photo."""
    a = np.full((size[1], size[0], 3), 225, np.uint8)
    a[round(0.2 * size[1]):round(0.8 * size[1]), round(0.2 * size[0]):round(0.8 * size[0])] = (30, 60, 90)
    Image.fromarray(a, "RGB").save(path, quality=95)
    return str(path)


def items(dm: ImageDataModule) -> list[dict]:
    dm.setup("predict")
    ds = dm.predict_dataset
    assert ds is not None
    return [ds[i] for i in range(len(ds))]


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


def test_rgb_jpg_mask_is_all_ones_and_warns_once_with_foreground_alpha(tmp_path, caplog):
    path = write_jpg(tmp_path / "photo.jpg")
    dm = ImageDataModule(path, input_size=16, foreground="alpha")
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
                                           ({"foreground": "guess"}, "foreground 'guess' is not one of"),
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


# --- foreground extraction -----------------------------------------------------------------------------------------
#: the bound every synthetic photo's extracted mask must reach (measured: 0.990–0.996 at 256×192)
MIN_IOU = 0.95


def synthetic_photo(background: str, size=(256, 192), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (H, W, 3), true mask bool (H, W)): a shaded (lit-sphere) red disc, overlapping a blue rectangle
    with a hole the background shows through, and below it a band only ~10 ΔE from the background under it.

    Drawn at 4× and shrunk (INTER_AREA), so edges are anti-aliased as in a photo; the true mask is coverage ≥ 0.5.
    Backgrounds: plain ``white``, plain ``grey``, or ``gradient`` (a warm-to-cool left-right gradient, darker
    downwards, with Gaussian noise of σ = 3 levels).
    """
    ss = 4
    w, h = size[0] * ss, size[1] * ss
    v, u = np.meshgrid((np.arange(h) + 0.5) / ss, (np.arange(w) + 0.5) / ss, indexing="ij")
    if background == "white":
        bg = np.full((h, w, 3), 255.0)
    elif background == "grey":
        bg = np.full((h, w, 3), 128.0)
    else:
        t = (u / size[0])[..., None]
        bg = (1 - t) * np.array([236.0, 230.0, 218.0]) + t * np.array([196.0, 202.0, 214.0])
        bg = bg - 14.0 * v[..., None] / size[1]  # darker downwards
    img, truth = bg.copy(), np.zeros((h, w), bool)
    cx, cy, r = 90.0, 92.0, 55.0
    d2 = ((u - cx) ** 2 + (v - cy) ** 2) / r ** 2
    disc = d2 <= 1.0
    normal = np.stack([(u - cx) / r, (v - cy) / r, np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))], axis=-1)
    light = np.array([-0.4, -0.5, 0.77]) / np.linalg.norm([-0.4, -0.5, 0.77])
    shade = 0.35 + 0.65 * np.clip(normal @ light, 0.0, 1.0)
    img[disc] = (np.array([205.0, 70.0, 55.0]) * shade[..., None])[disc]
    rect = (u >= 140) & (u < 225) & (v >= 50) & (v < 140)
    hole = (u >= 168) & (u < 198) & (v >= 78) & (v < 112)
    img[rect & ~hole] = (50.0, 90.0, 175.0)
    band = (u >= 140) & (u < 225) & (v >= 140) & (v < 165)
    img[band] = bg[band] - np.array([26.0, 22.0, 12.0])  # ΔE ≈ 10 from the background
    truth |= disc | (rect & ~hole) | band
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    truth = cv2.resize(truth.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
    if background == "gradient":
        img = img + np.random.default_rng(seed).normal(0.0, 3.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("background", ["white", "grey", "gradient"])
def test_extract_foreground_matches_the_true_mask(background):
    rgb, truth = synthetic_photo(background)
    alpha = extract_foreground(rgb)
    assert alpha.shape == truth.shape and alpha.dtype == np.uint8 and set(np.unique(alpha)) <= {0, 255}
    mask = alpha > 0
    assert iou(mask, truth) >= MIN_IOU
    # the parts that make it hard, one by one
    assert mask[85:110, 170:196].mean() < 0.05  # the hole shows the background: not filled
    assert mask[144:161, 145:220].mean() > 0.95  # the band close to the background colour is kept
    assert mask[60:120, 40:140].mean() > 0.97  # the disc, dark side included
    np.testing.assert_array_equal(extract_foreground(rgb), alpha)  # deterministic


def test_extract_foreground_of_a_large_photo_works_at_reduced_size():
    rgb, truth = synthetic_photo("white")
    big = cv2.resize(rgb, (1536, 1152), interpolation=cv2.INTER_LINEAR)  # 6×: processed at 1024 and scaled back
    mask = extract_foreground(big) > 0
    assert mask.shape == (1152, 1536)
    assert iou(cv2.resize(mask.astype(np.uint8), (256, 192), interpolation=cv2.INTER_AREA) > 0, truth) >= MIN_IOU


def test_extract_mode_and_auto_on_rgb_photos_use_the_extracted_mask(tmp_path):
    rgb, truth = synthetic_photo("grey")
    path = tmp_path / "photo.png"
    Image.fromarray(rgb, "RGB").save(path)
    expected = extract_foreground(rgb) > 0
    for mode in ("auto", "extract"):
        (item,) = items(ImageDataModule(str(path), input_size=256, foreground_ratio=0, foreground=mode))
        mask = item["input_mask"][0].numpy()
        # 256×192 letterboxed into 256×256: rows 32..223 carry the image
        assert np.all(mask[:32] == 0) and np.all(mask[224:] == 0)
        np.testing.assert_array_equal(mask[32:224] > 0.5, expected)
        img = item["input_image"].numpy()
        assert np.allclose(img[:, 32:224][:, ~expected], 1.0)  # background composited to white, not grey
    # re-centring (foreground_ratio) follows the extracted mask as it follows an alpha channel
    (item,) = items(ImageDataModule(str(path), input_size=64, foreground="auto"))
    rows, cols = np.nonzero(item["input_mask"][0].numpy() > 0.5)
    assert cols.max() - cols.min() + 1 == pytest.approx(0.85 * 64, abs=1.5)


def test_auto_uses_a_real_alpha_exactly_and_extract_ignores_it(tmp_path):
    path = write_rgba(tmp_path / "a.png", size=(64, 64), box=(10, 8, 20, 20))
    (auto,) = items(ImageDataModule(path, input_size=64, foreground_ratio=0, foreground="auto"))
    (alpha,) = items(ImageDataModule(path, input_size=64, foreground_ratio=0, foreground="alpha"))
    torch.testing.assert_close(auto["input_mask"], alpha["input_mask"], atol=0, rtol=0)
    torch.testing.assert_close(auto["input_image"], alpha["input_image"], atol=0, rtol=0)
    expected = torch.zeros(64, 64)
    expected[8:28, 10:30] = 1.0
    torch.testing.assert_close(auto["input_mask"][0], expected, atol=0, rtol=0)
    # "extract" reads the colour only: the hidden green under alpha 0 is the background it finds
    (extracted,) = items(ImageDataModule(path, input_size=64, foreground_ratio=0, foreground="extract"))
    assert iou(extracted["input_mask"][0].numpy() > 0.5, expected.numpy() > 0.5) >= MIN_IOU


def test_auto_extracts_when_the_alpha_is_fully_opaque(tmp_path):
    rgb, truth = synthetic_photo("white")
    path = tmp_path / "opaque.png"
    Image.fromarray(np.concatenate([rgb, np.full(truth.shape + (1,), 255, np.uint8)], axis=-1), "RGBA").save(path)
    (item,) = items(ImageDataModule(str(path), input_size=256, foreground_ratio=0))
    assert iou(item["input_mask"][0].numpy()[32:224] > 0.5, truth) >= MIN_IOU


class GreenChannelMask(torch.nn.Module):
    """A toy foreground model: logits +10 where green > 0.5, −10 elsewhere (outside [0, 1]: the loader applies a
    sigmoid)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, 1:2] > 0.5, 10.0, -10.0)


def test_segmentation_model_is_loaded_and_its_mask_used(tmp_path):
    model_path = tmp_path / "green.pt"
    torch.jit.save(torch.jit.script(GreenChannelMask()), str(model_path))
    a = np.full((48, 64, 3), 255, np.uint8)  # white: green > 0.5 too — only the model could call this foreground
    a[:, :, 0] = 0
    a[10:30, 5:25] = (255, 0, 0)  # red: the model says background
    path = tmp_path / "photo.png"
    Image.fromarray(a, "RGB").save(path)
    dm = ImageDataModule(str(path), input_size=64, foreground_ratio=0, foreground="extract",
                         segmentation_model=str(model_path), num_workers=1)
    (item,) = items(dm)
    expected = np.ones((48, 64), bool)
    expected[10:30, 5:25] = False
    mask = item["input_mask"][0].numpy()
    np.testing.assert_array_equal(mask[8:56] > 0.5, expected)  # letterboxed: rows 8..55 carry the image
    np.testing.assert_allclose(mask[8:56][expected], 1.0, atol=1e-4)  # sigmoid(10) → 255
    (batch,) = list(dm.predict_dataloader())  # a worker process loads the model itself
    torch.testing.assert_close(batch["input_mask"][0], item["input_mask"])


def test_torch_export_segmentation_model(tmp_path):
    dims = {"x": {2: torch.export.Dim("height"), 3: torch.export.Dim("width")}}
    program = torch.export.export(GreenChannelMask(), (torch.rand(1, 3, 32, 32),), dynamic_shapes=dims)
    model_path = tmp_path / "green.pt2"
    torch.export.save(program, str(model_path))
    a = np.zeros((40, 40, 3), np.uint8)
    a[5:25, 10:30, 1] = 255
    path = tmp_path / "photo.png"
    Image.fromarray(a, "RGB").save(path)
    (item,) = items(ImageDataModule(str(path), input_size=40, foreground_ratio=0, segmentation_model=str(model_path)))
    expected = torch.zeros(40, 40)
    expected[5:25, 10:30] = 1.0
    torch.testing.assert_close(item["input_mask"][0], expected, atol=1e-4, rtol=0)


def test_missing_segmentation_model_names_the_path_and_the_fix(tmp_path):
    write_jpg(tmp_path / "photo.jpg")
    missing = tmp_path / "models" / "u2net.pt"
    with pytest.raises(FileNotFoundError, match=r"segmentation_model '.*models/u2net\.pt' does not exist: expected a "
                                                 r"TorchScript file.*leave segmentation_model unset"):
        ImageDataModule(str(tmp_path / "photo.jpg"), segmentation_model=str(missing)).setup("predict")
    bad = tmp_path / "notscript.pt"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(ValueError, match=r"could not load segmentation_model '.*notscript\.pt' as TorchScript"):
        ImageDataModule(str(tmp_path / "photo.jpg"), segmentation_model=str(bad)).setup("predict")


@pytest.mark.parametrize("mode", ["auto", "extract"])
def test_blank_image_error_names_the_file(tmp_path, mode):
    path = tmp_path / "blank_wall.jpg"
    Image.fromarray(np.full((40, 50, 3), 240, np.uint8), "RGB").save(path)
    assert not extract_foreground(np.full((40, 50, 3), 240, np.uint8)).any()
    dm = ImageDataModule(str(path), input_size=16, foreground=mode)
    with pytest.raises(ValueError, match=r"no foreground found in '.*blank_wall\.jpg'.*RGBA PNG.*segmentation_model"):
        items(dm)
