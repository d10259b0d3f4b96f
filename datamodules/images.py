"""ImageDataModule: image files in → prediction batches for ``lift3d predict`` (image(s) in → meshes out).

Inputs are files, globs or directories (a directory contributes its ``*.png``/``*.jpg``/``*.jpeg``/``*.webp``,
sorted by name). Each image becomes one item of the ``datamodules.views`` training dict's input half
(S = ``input_size``)::

    key            str                 file stem, sanitised to [A-Za-z0-9_-] (made unique with -2, -3, … on clashes)
    path           str                 the image file
    input_image    (3, S, S) float32   RGB in [0, 1], composited over the background
    input_mask     (1, S, S) float32   alpha in [0, 1]
    input_K        (3, 3) float32      ``intrinsics_from_fov(fov_deg, S, S)``: pixels of input_image
    input_c2w      (4, 4) float32      ``canonical_c2w(camera_distance)`` (OpenCV, world +Z up)
    background     (3,) float32        RGB in [0, 1]

Preparation, in this order:

1. Decode with Pillow (EXIF orientation applied). Alpha is straight (un-premultiplied), as in the shards.
2. Colour is premultiplied by alpha, so resampling never bleeds the colour of transparent pixels into edges.
3. ``foreground_ratio > 0`` (a mask from alpha or extraction, see below): the object's bounding box (alpha > 0)
   is cut out, scaled (aspect kept) so its longer side is ``round(foreground_ratio · S)`` and pasted at the centre
   of a transparent S×S canvas. ``foreground_ratio = 0``, and images without alpha under ``foreground="alpha"``:
   the whole image is scaled so its longer side is S and centred (a non-square image is padded with transparent
   pixels: background colour, mask 0).
4. Resampling is lift3d's one rule, ``geometry.image.resize``: area when shrinking, bilinear when enlarging.
5. Compositing: ``rgb = colour·alpha + background·(1 − alpha)``.

Where the mask comes from (``foreground``):

- ``"auto"`` (default): the image's alpha when it has a non-trivial one (some pixel not fully opaque), otherwise
  the foreground is extracted from the colour (an RGB photo of an object on a plain background).
- ``"alpha"``: alpha only. An image without alpha is taken whole as the object (mask 1 over the image), with a
  warning once per file.
- ``"extract"``: always extracted from the colour; any alpha channel is ignored.

Extraction (``datamodules.foreground``) uses ``segmentation_model`` when one is given, else
``datamodules.foreground.extract_foreground``, a classical extractor for plain (uniform, gradient or slightly noisy)
backgrounds; that module states the segmentation model's contract. An extracted mask is then used exactly like an
alpha channel (re-centring, compositing). No foreground found → ``ValueError`` naming the file. Feed RGBA PNGs with
a transparent background for results that match training.

The camera is an assumption, not a measurement: the input is taken as seen by a pinhole camera with field of view
``fov_deg`` across the prepared S×S image, at ``camera_distance`` on the canonical axis (the LRM's canonical
source camera). Meshes therefore come out in that canonical frame.

Errors say what was wrong: no file matching an entry → ``FileNotFoundError``; an unreadable or corrupt image →
``ValueError`` naming the file; a missing ``segmentation_model`` file → ``FileNotFoundError`` naming it. Headers
(and the segmentation model) are checked in :meth:`ImageDataModule.setup`, so a bad input fails before any
prediction runs; a file that is corrupt past its header, or in which no foreground is found, fails when its item
is loaded.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Optional, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from datamodules.foreground import ForegroundExtractor, load_segmentation_model
from geometry.cameras import intrinsics_from_fov
from geometry.image import resize
from geometry.rays import canonical_c2w
from render_farm.shards import sanitise_key

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
EXPECTED = "expected an RGBA PNG or an RGB image"
# what Pillow raises on unreadable, truncated or corrupt data (and on decompression bombs)
_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@rank_zero_only
def _warn(msg: str, *args) -> None:
    log.warning(msg, *args)


def resolve_images(images: Union[str, list[str]]) -> list[str]:
    """Image paths, in order, from files, globs and directories (directories: *.png/*.jpg/*.jpeg/*.webp, sorted);
    a file reached twice is listed once. Raises ``FileNotFoundError`` for an entry that matches nothing."""
    entries = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if not entries:
        raise FileNotFoundError("images is empty: expected an image file, a glob (e.g. 'photos/*.png') or a "
                                "directory of *.png/*.jpg/*.jpeg/*.webp")
    paths, seen = [], set()
    for entry in entries:
        spec = os.path.expanduser(str(entry))
        if os.path.isdir(spec):
            found = sorted(os.path.join(spec, f) for f in os.listdir(spec)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(spec, f)))
            if not found:
                raise FileNotFoundError(f"no images in directory {spec!r}: expected files ending in "
                                        f"{', '.join(IMAGE_EXTENSIONS)} (an RGBA PNG or an RGB image each)")
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"no file matches the pattern {spec!r}: expected a glob matching image files "
                                        f"(an RGBA PNG or an RGB image each), e.g. 'photos/*.png'")
        elif os.path.isfile(spec):
            found = [spec]
        else:
            raise FileNotFoundError(f"no file matches {spec!r}: expected an image file, a glob (e.g. "
                                    f"'photos/*.png') or a directory of *.png/*.jpg/*.jpeg/*.webp")
        for p in found:
            real = os.path.realpath(p)
            if real not in seen:
                seen.add(real)
                paths.append(p)
    return paths


def unique_keys(paths: list[str]) -> list[str]:
    """Sanitised file stems; a stem seen before gets ``-2``, ``-3``, … so output files never overwrite each other."""
    keys, used = [], set()
    for p in paths:
        base = sanitise_key(os.path.splitext(os.path.basename(p))[0])
        key, n = base, 1
        while key in used:
            n += 1
            key = f"{base}-{n}"
        used.add(key)
        keys.append(key)
    return keys


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def probe_image(path: str) -> bool:
    """Check that ``path`` opens as an image (header only); True when it carries alpha. ValueError otherwise."""
    try:
        with Image.open(path) as img:
            return _has_alpha(img)
    except _DECODE_ERRORS as exc:
        raise ValueError(f"could not decode {path!r}: {exc}; {EXPECTED}") from exc


def read_rgba(path: str) -> tuple[np.ndarray, bool]:
    """(H, W, 4) float32 straight-alpha RGBA in [0, 1] (alpha 1 where the file has none) and whether it had alpha."""
    try:
        with Image.open(path) as img:
            img.load()
            alpha = _has_alpha(img)
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit greyscale: keep its range
                grey = np.asarray(img, dtype=np.float32) / 65535.0
                rgba = np.concatenate([np.repeat(grey[..., None], 3, -1), np.ones_like(grey)[..., None]], -1)
                return np.clip(rgba, 0.0, 1.0), False
            rgba = np.asarray(img.convert("RGBA") if alpha else img.convert("RGB"), dtype=np.float32) / 255.0
    except _DECODE_ERRORS as exc:
        raise ValueError(f"could not decode {path!r}: {exc}; {EXPECTED}") from exc
    if not alpha:
        rgba = np.concatenate([rgba, np.ones(rgba.shape[:2] + (1,), np.float32)], axis=-1)
    return rgba, alpha


def place_centred(rgba: np.ndarray, size: int, foreground_ratio: float) -> np.ndarray:
    """(size, size, 4) float32 *premultiplied* RGBA: the object (alpha bounding box, when ``foreground_ratio`` > 0)
    or the whole image scaled to fill ``foreground_ratio`` (or 1) of ``size`` along its longer side, centred."""
    pm = rgba.copy()
    pm[..., :3] *= pm[..., 3:4]  # premultiply: transparent pixels carry no colour into the resampling
    region, fill = pm, 1.0
    if foreground_ratio > 0:
        rows, cols = np.nonzero(pm[..., 3] > 0)
        if len(rows):
            region = pm[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            fill = foreground_ratio
    h, w = region.shape[:2]
    long_px = max(1, min(size, round(fill * size)))
    scale = long_px / max(h, w)
    nw, nh = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    out = np.zeros((size, size, 4), np.float32)
    x0, y0 = (size - nw) // 2, (size - nh) // 2
    out[y0:y0 + nh, x0:x0 + nw] = resize(np.ascontiguousarray(region), nh, nw)
    return out


FOREGROUND_MODES = ("auto", "alpha", "extract")


class ImageDataset(Dataset):
    """Map-style dataset over image files → the item dict of this module (picklable for DataLoader workers)."""

    def __init__(self, paths: list[str], keys: list[str], input_size: int, K: np.ndarray, c2w: torch.Tensor,
                 background: np.ndarray, foreground_ratio: float, foreground: str = "alpha",
                 segmentation_model: Optional[str] = None):
        self.paths, self.keys = paths, keys
        self.input_size, self.foreground_ratio = input_size, foreground_ratio
        self.foreground, self.extract = foreground, ForegroundExtractor(segmentation_model)
        self.K = torch.as_tensor(K, dtype=torch.float32)
        self.c2w = c2w.to(torch.float32)
        self.background = torch.as_tensor(background, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        path = self.paths[i]
        rgba, alpha = read_rgba(path)
        if self.foreground == "extract" or (self.foreground == "auto" and not (alpha and (rgba[..., 3] < 1).any())):
            rgba, alpha = self.extract(rgba, path), True
        elif alpha and not rgba[..., 3].any():
            _warn("%s is fully transparent (alpha 0 everywhere): there is no object to reconstruct", path)
        pm = place_centred(rgba, self.input_size, self.foreground_ratio if alpha else 0.0)
        pm = torch.from_numpy(pm).permute(2, 0, 1)  # (4, S, S)
        mask = pm[3:4].clamp(0.0, 1.0)
        image = (pm[:3] + self.background[:, None, None] * (1.0 - mask)).clamp_(0.0, 1.0)
        return {"key": self.keys[i], "path": path, "input_image": image.contiguous(), "input_mask": mask.contiguous(),
                "input_K": self.K.clone(), "input_c2w": self.c2w.clone(), "background": self.background.clone()}


class ImageDataModule(L.LightningDataModule):
    """Image files → prediction batches (``lift3d predict``); every argument can be set from a ``data:`` block.

    Args:
        images: an image file, a glob, a directory (its *.png/*.jpg/*.jpeg/*.webp, sorted), or a list of those.
        input_size: S, the side of the square model input.
        fov_deg: the assumed field of view of the input camera across the larger image side (degrees).
        camera_distance: distance of the assumed input camera from the object centre (world units).
        background: ``"white"`` or ``"black"``: the colour transparent pixels are composited over.
        batch_size, num_workers: DataLoader settings.
        foreground_ratio: the object (alpha bounding box) is re-centred and scaled so its longer side fills this
            fraction of S, aspect kept; 0 disables it (the whole image is fitted into S×S).
        foreground: where the object mask comes from: ``"auto"`` (the alpha when it is non-trivial, else extracted
            from the colour), ``"alpha"`` (alpha only; no alpha = the whole image) or ``"extract"`` (always
            extracted, any alpha ignored). See the module docstring.
        segmentation_model: a local TorchScript (or ``.pt2`` torch.export) foreground model used for extraction
            instead of the classical ``datamodules.foreground.extract_foreground`` (contract in that module).
    """

    def __init__(self, images: Union[str, list[str]], input_size: int = 512, fov_deg: float = 50.0,
                 camera_distance: float = 2.0, background: str = "white", batch_size: int = 1,
                 num_workers: int = 0, foreground_ratio: float = 0.85, foreground: str = "auto",
                 segmentation_model: Optional[str] = None):
        super().__init__()
        if foreground not in FOREGROUND_MODES:
            raise ValueError(f"foreground {foreground!r} is not one of {FOREGROUND_MODES}: 'auto' uses an image's "
                             f"alpha when it has one and extracts the object otherwise")
        if background not in BACKGROUNDS:
            raise ValueError(f"background {background!r} is not one of {tuple(BACKGROUNDS)}")
        if isinstance(input_size, bool) or int(input_size) != input_size or input_size < 1:
            raise ValueError(f"input_size must be a positive number of pixels, got {input_size!r}")
        if not 0.0 < fov_deg < 180.0:
            raise ValueError(f"fov_deg must be in (0, 180) degrees, got {fov_deg!r}; 50 matches the LRM's renders")
        if not camera_distance > 0:
            raise ValueError(f"camera_distance must be positive (world units from the object centre), "
                             f"got {camera_distance!r}")
        if not 0.0 <= foreground_ratio <= 1.0:
            raise ValueError(f"foreground_ratio must be in [0, 1] (fraction of the image the object's longer side "
                             f"fills; 0 disables re-centring), got {foreground_ratio!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")
        self.images = images
        self.input_size, self.fov_deg, self.camera_distance = int(input_size), float(fov_deg), float(camera_distance)
        self.background, self.foreground_ratio = background, float(foreground_ratio)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.foreground = foreground
        self.segmentation_model = None if segmentation_model is None else os.path.expanduser(str(segmentation_model))
        self.predict_dataset: Optional[ImageDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if stage not in (None, "predict") or self.predict_dataset is not None:
            return
        paths = resolve_images(self.images)
        if self.segmentation_model:
            load_segmentation_model(self.segmentation_model)  # a missing or broken file fails before any prediction
        for p in paths:  # fail on an unreadable file before any prediction runs
            if not probe_image(p) and self.foreground == "alpha":
                _warn("%s has no alpha channel: the whole image is used as the object (mask = 1) since foreground "
                      "is 'alpha'; pass foreground='auto' or 'extract' to extract the object, or an RGBA PNG with "
                      "a transparent background", p)
        S = self.input_size
        self.predict_dataset = ImageDataset(
            paths, unique_keys(paths), S, intrinsics_from_fov(self.fov_deg, S, S),
            canonical_c2w(self.camera_distance), np.asarray(BACKGROUNDS[self.background], np.float32),
            self.foreground_ratio, self.foreground, self.segmentation_model)

    def predict_dataloader(self) -> DataLoader:
        self.setup("predict")
        assert self.predict_dataset is not None  # setup("predict") builds it or raises
        return DataLoader(self.predict_dataset, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=False)
