"""View sampling: one input view + N supervision views per object, composited, resized, cropped.

Output of :meth:`ViewSampler.__call__` (a dict; N = ``num_target_views``, Hi = Wi = ``input_size``,
H = W = ``target_crop_size`` or else ``target_size``; a size of 0 keeps the stored resolution)::

    key            str
    input_view     int                 index of the input view in the sample
    input_image    (3, Hi, Wi) float32 RGB in [0, 1], composited over the background
    input_mask     (1, Hi, Wi) float32 alpha in [0, 1]
    input_c2w      (4, 4)              OpenCV camera-to-world
    input_K        (3, 3)              pixels of input_image
    target_views   (N,) int64
    target_images  (N, 3, H, W)
    target_masks   (N, 1, H, W)
    target_depths  (N, 1, H, W)        z-depth in metres, 0 = no surface (resized with nearest, never blended)
    target_c2w     (N, 4, 4)
    target_K       (N, 3, 3)           pixels of the (resized, cropped) target images

Compositing happens at the stored resolution, before resizing, so the colour of fully transparent pixels never
bleeds into silhouettes. Camera maths goes through ``geometry.cameras`` only.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from datamodules.decode import (CorruptSampleError, check_views, decode_bgra, decode_depth, decode_depth_raw,
                                read_cameras, read_meta, sample_key, view_roles)
from geometry.cameras import crop_intrinsics, scale_intrinsics

BACKGROUNDS = ("white", "black", "random")


def select_views(roles: list[str], num_targets: int, input_view, include_input: bool,
                 rng: np.random.Generator, key: str = "?") -> tuple[int, np.ndarray]:
    """(input index, target indices): input = ``source`` role / random / a fixed index; targets without replacement."""
    n = len(roles)
    if input_view == "source":
        sources = [i for i, r in enumerate(roles) if r == "source"]
        inp = sources[0] if sources else int(rng.integers(n))
    elif input_view == "random":
        inp = int(rng.integers(n))
    else:
        inp = int(input_view)
        if not 0 <= inp < n:
            raise CorruptSampleError(key, f"{inp:03d}.rgba.png", f"input_view {inp} but the sample has {n} views",
                                     kind="bad_views")
    pool = np.arange(n) if include_input else np.array([i for i in range(n) if i != inp], dtype=np.int64)
    if len(pool) < num_targets:
        raise CorruptSampleError(key, "meta.json", f"{num_targets} supervision views requested but only "
                                 f"{len(pool)} are available (of {n} views)", kind="bad_views")
    targets = rng.choice(pool, size=num_targets, replace=False).astype(np.int64)
    return inp, targets


def background_colour(background: str, rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 RGB in [0, 1]."""
    if background == "white":
        return np.ones(3, np.float32)
    if background == "black":
        return np.zeros(3, np.float32)
    if background == "random":
        return rng.random(3).astype(np.float32)
    raise ValueError(f"background {background!r} is not one of {BACKGROUNDS}")


def composite(rgba: np.ndarray, bg: np.ndarray, bgra: bool = False, out: np.ndarray | None = None,
              alpha_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Straight-alpha (H,W,4) uint8 over colour ``bg`` → RGB (3,H,W) float32 in [0,1] and alpha (H,W) float32.

    ``bgra``: the channels are in OpenCV's B, G, R, A order (as decoded), saving a colour conversion.
    ``out`` / ``alpha_out``: arrays to write into (e.g. a slot of the batch). Works plane by plane: numpy
    broadcasting over a trailing axis of 3 is ~15× slower.
    """
    alpha = np.empty(rgba.shape[:2], np.float32) if alpha_out is None else alpha_out
    alpha[...] = rgba[..., 3]  # plain casts and in-place float ops: mixed-dtype ufuncs are several times slower
    alpha *= np.float32(1.0 / 255.0)
    rgb = np.empty((3,) + alpha.shape, np.float32) if out is None else out  # (3, H, W)
    weight = alpha * np.float32(1.0 / 255.0)  # colour byte → its share: c·a = byte · a / 255
    rest = np.float32(1.0) - alpha  # background share 1 − a
    for c in range(3):  # c·a + bg·(1 − a), two passes per plane
        plane = rgb[c]
        plane[...] = rgba[..., 2 - c if bgra else c]
        plane *= weight
        if bg[c] == 1.0:
            plane += rest
        elif bg[c] != 0.0:
            plane += rest * np.float32(bg[c])
    return rgb, alpha


def resize_view(rgb, alpha, depth, K, size_hw: tuple[int, int]):
    """Resize colour (3,H,W) and alpha (INTER_AREA when shrinking, linear when growing) and depth (nearest).

    K follows through ``geometry.cameras.scale_intrinsics``.
    """
    h, w = alpha.shape
    th, tw = size_hw
    if (th, tw) == (h, w):
        return rgb, alpha, depth, np.asarray(K, np.float64)
    interp = cv2.INTER_AREA if th <= h and tw <= w else cv2.INTER_LINEAR
    rgb = np.stack([cv2.resize(plane, (tw, th), interpolation=interp) for plane in rgb])
    alpha = cv2.resize(alpha, (tw, th), interpolation=interp)
    if depth is not None:
        depth = cv2.resize(depth, (tw, th), interpolation=cv2.INTER_NEAREST_EXACT)
    return rgb, alpha, depth, scale_intrinsics(K, tw / w, th / h)


def crop_view(rgb, alpha, depth, K, x0: int, y0: int, size: int):
    """The ``size``×``size`` crop with top-left pixel (x0, y0); K follows through ``crop_intrinsics``."""
    sl = (slice(y0, y0 + size), slice(x0, x0 + size))
    depth = None if depth is None else depth[sl]
    return rgb[(slice(None),) + sl], alpha[sl], depth, crop_intrinsics(K, x0, y0)


class ViewSampler:
    """Turns one raw format-v1 sample into the training dict above (callable, picklable for DataLoader workers)."""

    def __init__(self, num_target_views: int = 4, input_view: str | int = "source",
                 include_input_in_targets: bool = False, input_size: int = 512, target_size: int = 512,
                 target_crop_size: int = 0, background: str = "white"):
        if isinstance(input_view, str) and input_view not in ("source", "random"):
            if not input_view.isdigit():
                raise ValueError(f"input_view {input_view!r}: expected 'source', 'random' or a view index")
            input_view = int(input_view)
        if background not in BACKGROUNDS:
            raise ValueError(f"background {background!r} is not one of {BACKGROUNDS}")
        if num_target_views < 1:
            raise ValueError(f"num_target_views must be at least 1, got {num_target_views}")
        if target_crop_size and target_size and target_crop_size > target_size:
            raise ValueError(f"target_crop_size {target_crop_size} is larger than target_size {target_size}")
        self.num_target_views, self.input_view = num_target_views, input_view
        self.include_input = include_input_in_targets
        self.input_size, self.target_size, self.crop = input_size, target_size, target_crop_size
        self.background = background

    def _size(self, size: int, hw) -> tuple[int, int]:
        return (int(hw[0]), int(hw[1])) if not size else (size, size)

    def _view(self, sample, i, cams, depth_scale, bg, size, rng, cache, out, with_depth) -> np.ndarray:
        """Fill ``out`` (slots image (3,h,w), mask (h,w), depth (h,w)) with view ``i``; returns its K."""
        hw = cams["hw"][i]
        if i not in cache:  # the input view may also be a target: decode its PNG once
            cache[i] = decode_bgra(sample, i, hw)
        image, mask = out["image"], out["mask"]
        target_hw = self._size(size, hw)
        direct = tuple(target_hw) == tuple(int(x) for x in hw) and image.shape[1:] == tuple(target_hw)
        if direct:  # no resize, no crop: composite straight into the batch slot
            composite(cache[i], bg, bgra=True, out=image, alpha_out=mask)
            rgb = alpha = None
        else:
            rgb, alpha = composite(cache[i], bg, bgra=True)
        depth = None
        if with_depth and direct:  # uint16 → metres straight into the slot
            slot = out["depth"]
            slot[...] = decode_depth_raw(sample, i, hw)
            slot *= np.float32(1.0 / depth_scale)
        elif with_depth:
            depth = decode_depth(sample, i, depth_scale, hw)
        K = np.asarray(cams["K"][i], np.float64)
        if not direct:
            rgb, alpha, depth, K = resize_view(rgb, alpha, depth, K, target_hw)
            if image.shape[1:] != alpha.shape:  # a random crop of the resized view
                h, w = alpha.shape
                if self.crop > min(h, w):
                    raise CorruptSampleError(sample_key(sample), f"{i:03d}.rgba.png", f"view is {h}x{w}, smaller "
                                             f"than target_crop_size {self.crop}", kind="bad_views")
                x0, y0 = int(rng.integers(w - self.crop + 1)), int(rng.integers(h - self.crop + 1))
                rgb, alpha, depth, K = crop_view(rgb, alpha, depth, K, x0, y0, self.crop)
            image[...], mask[...] = rgb, alpha
        if depth is not None:
            out["depth"][...] = depth
        return K

    def _slots(self, n: int, size: int, crop: int, hw) -> dict[str, np.ndarray]:
        h, w = self._size(size, hw)
        if crop:
            h = w = crop
        return {"image": np.empty((n, 3, h, w), np.float32), "mask": np.empty((n, h, w), np.float32),
                "depth": np.empty((n, h, w), np.float32)}

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        key = sample_key(sample)
        meta = read_meta(sample)
        cams = read_cameras(sample, meta.get("num_views"))
        n = len(cams["c2w"])
        roles = view_roles(meta, n, key)
        inp, targets = select_views(roles, self.num_target_views, self.input_view, self.include_input, rng, key)
        check_views(sample, [inp, *targets.tolist()], n)  # fail before decoding anything
        bg = background_colour(self.background, rng)
        scale = float(meta["depth_scale"])
        cache: dict[int, np.ndarray] = {}
        src = self._slots(1, self.input_size, 0, cams["hw"][inp])
        src_K = self._view(sample, inp, cams, scale, bg, self.input_size, rng, cache,
                           {"image": src["image"][0], "mask": src["mask"][0]}, with_depth=False)
        tgt = self._slots(len(targets), self.target_size, self.crop, cams["hw"][targets[0]])
        tgt_K = []
        for n, i in enumerate(targets.tolist()):
            slot = {name: arr[n] for name, arr in tgt.items()}
            if not self.crop and not self.target_size and slot["mask"].shape != tuple(cams["hw"][i]):
                raise CorruptSampleError(key, f"{i:03d}.rgba.png", "views of different sizes cannot be batched; "
                                         "set target_size", kind="bad_views")
            tgt_K.append(self._view(sample, i, cams, scale, bg, self.target_size, rng, cache, slot, with_depth=True))
        c2w = torch.from_numpy(cams["c2w"])
        return {"key": key, "input_view": inp,
                "input_image": torch.from_numpy(src["image"][0]), "input_mask": torch.from_numpy(src["mask"]),
                "input_c2w": c2w[inp].clone(), "input_K": torch.from_numpy(np.asarray(src_K, np.float32)),
                "target_views": torch.from_numpy(targets),
                "target_images": torch.from_numpy(tgt["image"]),
                "target_masks": torch.from_numpy(tgt["mask"])[:, None],
                "target_depths": torch.from_numpy(tgt["depth"])[:, None],
                "target_c2w": c2w[torch.from_numpy(targets)],
                "target_K": torch.from_numpy(np.stack(tgt_K).astype(np.float32))}
