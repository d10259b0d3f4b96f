"""View sampling: one input view + N supervision views per object, resized, cropped, composited.

The loader carries compact integer images; :func:`finalize` turns them into the training batch — on the GPU
when the ShardDataModule's ``on_after_batch_transfer`` calls it, so a float32 image never crosses the host
(4× less loader work and host→device traffic for images, 2× for depth). Without a GPU the DataLoader workers
call it per sample instead (``ShardDataModule(finalize_on=...)``).

:meth:`ViewSampler.__call__` returns the *raw* sample (what DataLoader workers produce and collate)::

    key / input_view / target_views / input_c2w / target_c2w / input_K / target_K   as below
    input_bgra     (Hi, Wi, 4) uint8   straight-alpha colour + alpha, OpenCV's B, G, R, A channel order
    target_bgra    N × (H, W, 4) uint8 the same for the supervision views (a tuple; :func:`collate` → (B, N, H, W, 4))
    target_depth16 N × (H, W) uint16   depth × depth_scale, as stored (0 = no surface); collated to (B, N, H, W)
    depth_scale    ()  float32
    background     (3,) float32        RGB in [0, 1], one colour per sample

:func:`finalize` of that (one sample or a collated batch, any device) is the training dict (N =
``num_target_views``, Hi = Wi = ``input_size``, H = W = ``target_crop_size`` or else ``target_size``; a size of 0
keeps the stored resolution)::

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

Views kept at their stored size are copied as decoded. Views that are resized follow lift3d's one resampling rule
(``geometry.image.resize``: area when shrinking, bilinear when enlarging; depth nearest), premultiplied by alpha
first (then divided back), so the colour of fully transparent pixels never bleeds into silhouettes.
Camera maths goes through ``geometry.cameras`` only.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from geometry.cameras import crop_intrinsics, scale_intrinsics
from geometry.image import resize, resize_nearest
from render_farm.shards import (
    META,
    CorruptSampleError,
    check_views,
    decode_bgra,
    decode_depth_raw,
    read_header,
    sample_key,
    view_member,
)

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
            raise CorruptSampleError(key, view_member(inp, "rgba"), f"input_view {inp} but the sample has {n} views",
                                     kind="bad_views")
    pool = np.arange(n) if include_input else np.array([i for i in range(n) if i != inp], dtype=np.int64)
    if len(pool) < num_targets:
        raise CorruptSampleError(key, META, f"{num_targets} supervision views requested but only "
                                 f"{len(pool)} are available (of {n} views)", kind="bad_views")
    targets = rng.choice(pool, size=num_targets, replace=False).astype(np.int64)
    return inp, targets


def background_colour(background: str, rng: np.random.Generator) -> np.ndarray:
    if background == "white":
        return np.ones(3, np.float32)
    if background == "black":
        return np.zeros(3, np.float32)
    if background == "random":
        return rng.random(3).astype(np.float32)
    raise ValueError(f"background {background!r} is not one of {BACKGROUNDS}")


def _alpha_scale(bgra: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.extractChannel(bgra, 3), cv2.COLOR_GRAY2BGRA)  # (a, a, a, 255) per pixel


def premultiply(bgra: np.ndarray) -> np.ndarray:
    """Straight-alpha (H,W,4) uint8 → colour × alpha / 255 (rounded), alpha kept; one vectorised pass."""
    return cv2.multiply(bgra, _alpha_scale(bgra), scale=1.0 / 255.0)


def unpremultiply(pm: np.ndarray) -> np.ndarray:
    """Inverse of :func:`premultiply` (colour 0 where alpha is 0); its rounding error, times alpha, stays < 1/255."""
    return cv2.divide(pm, _alpha_scale(pm), scale=255.0)


def resize_view(bgra: np.ndarray, depth16, K, size_hw: tuple[int, int]):
    """Resize straight-alpha colour + alpha (filtered premultiplied, ``geometry.image.resize``: area when shrinking,
    bilinear when growing) and depth (``resize_nearest``: never blended). K follows through
    ``geometry.cameras.scale_intrinsics``."""
    h, w = bgra.shape[:2]
    th, tw = size_hw
    if (th, tw) == (h, w):
        return bgra, depth16, np.asarray(K, np.float64)
    bgra = unpremultiply(resize(premultiply(bgra), th, tw))
    if depth16 is not None:
        depth16 = resize_nearest(depth16, th, tw)
    return bgra, depth16, scale_intrinsics(K, tw / w, th / h)


def crop_view(bgra, depth16, K, x0: int, y0: int, size: int):
    """The ``size``×``size`` crop with top-left pixel (x0, y0); K follows through ``crop_intrinsics``."""
    sl = (slice(y0, y0 + size), slice(x0, x0 + size))
    depth16 = None if depth16 is None else depth16[sl]
    return bgra[sl], depth16, crop_intrinsics(K, x0, y0)


def _colour_alpha(bgra: torch.Tensor, background: torch.Tensor, lead: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(…, H, W, 4) straight-alpha BGRA uint8 → RGB over ``background`` (…, 3, H, W) and alpha (…, 1, H, W)."""
    x = bgra.movedim(-1, -3)  # (…, 4, H, W), a uint8 view
    alpha = x[..., 3:4, :, :].float().mul_(1.0 / 255.0)
    rgb = torch.empty(x.shape[:-3] + (3,) + x.shape[-2:], dtype=torch.float32, device=x.device)
    for dst, src in enumerate((2, 1, 0)):  # BGR → RGB while converting (channel copies on uint8 are cheap)
        rgb[..., dst, :, :] = x[..., src, :, :]
    bg = background.reshape(background.shape[:-1] + (1,) * lead + (3, 1, 1)).to(rgb.dtype)
    rgb.mul_(1.0 / 255.0).sub_(bg).mul_(alpha).add_(bg)  # bg + a·(c − bg) = c·a + bg·(1 − a)
    return rgb, alpha


def finalize(raw: dict) -> dict:
    """The raw loader output (one sample or a batch, on any device) → the float training dict of this module."""
    if "input_bgra" not in raw and "source_bgra" not in raw:
        return raw  # already final
    out = {k: v for k, v in raw.items() if k not in ("input_bgra", *VIEW_STACKS, "depth_scale")}
    bg = raw["background"]
    views = {k: torch.stack(raw[k]) if isinstance(raw[k], (tuple, list)) else raw[k] for k in VIEW_STACKS if k in raw}
    if "input_bgra" in raw:
        out["input_image"], out["input_mask"] = _colour_alpha(raw["input_bgra"], bg, lead=0)
    if "source_bgra" in raw:  # One-2-3-45's source views (datamodules.one2345)
        out["source_images"], out["source_masks"] = _colour_alpha(views["source_bgra"], bg, lead=1)
    out["target_images"], out["target_masks"] = _colour_alpha(views["target_bgra"], bg, lead=1)
    scale = raw["depth_scale"].reshape(raw["depth_scale"].shape + (1, 1, 1, 1)).float()
    out["target_depths"] = views["target_depth16"].unsqueeze(-3).float() / scale
    return out


class ViewSampler:
    """Turns one raw format-v1 sample into the raw loader dict above (callable, picklable for DataLoader workers)."""

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

    def _view(self, sample, i, cams, size, crop, rng, cache, with_depth: bool):
        """View ``i`` as (bgra (h,w,4) uint8, depth (h,w) uint16 or None, K): decoded arrays are passed on as they
        are when no resize or crop applies (the batch is built with one copy, by :func:`collate`)."""
        hw = cams["hw"][i]
        target_hw = self._size(size, hw)
        if i not in cache:  # the input view may also be a target: decode its PNG once
            cache[i] = decode_bgra(sample, i, hw)
        depth16 = decode_depth_raw(sample, i, hw) if with_depth else None
        bgra, depth16, K = resize_view(cache[i], depth16, np.asarray(cams["K"][i], np.float64), target_hw)
        if crop:  # a random crop of the resized view
            h, w = bgra.shape[:2]
            if crop > min(h, w):
                raise CorruptSampleError(sample_key(sample), view_member(i, "rgba"), f"view is {h}x{w}, smaller "
                                         f"than target_crop_size {crop}", kind="bad_views")
            x0, y0 = int(rng.integers(w - crop + 1)), int(rng.integers(h - crop + 1))
            bgra, depth16, K = crop_view(bgra, depth16, K, x0, y0, crop)
        return bgra, depth16, K

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        key = sample_key(sample)
        meta, cams, roles = read_header(sample)
        n = len(roles)
        inp, targets = select_views(roles, self.num_target_views, self.input_view, self.include_input, rng, key)
        check_views(sample, [inp, *targets.tolist()], n)  # fail before decoding anything
        bg = background_colour(self.background, rng)
        cache: dict[int, np.ndarray] = {}
        src_bgra, _, src_K = self._view(sample, inp, cams, self.input_size, 0, rng, cache, with_depth=False)
        views = [self._view(sample, i, cams, self.target_size, self.crop, rng, cache, with_depth=True)
                 for i in targets.tolist()]
        for i, (bgra, _, _) in zip(targets.tolist(), views):
            if bgra.shape != views[0][0].shape:
                raise CorruptSampleError(key, view_member(i, "rgba"), f"view is {bgra.shape[0]}x{bgra.shape[1]}, "
                                         f"view {targets[0]} is {views[0][0].shape[0]}x{views[0][0].shape[1]}: views "
                                         "of different sizes cannot be batched; set target_size", kind="bad_views")
        c2w = torch.from_numpy(cams["c2w"])
        return {"key": key, "input_view": inp,
                "input_bgra": torch.from_numpy(np.ascontiguousarray(src_bgra)),
                "input_c2w": c2w[inp].clone(), "input_K": torch.from_numpy(np.asarray(src_K, np.float32)),
                "target_views": torch.from_numpy(targets),
                "target_bgra": tuple(torch.from_numpy(np.ascontiguousarray(v[0])) for v in views),
                "target_depth16": tuple(torch.from_numpy(np.ascontiguousarray(v[1])) for v in views),
                "depth_scale": torch.tensor(float(meta["depth_scale"]), dtype=torch.float32),
                "background": torch.from_numpy(bg),
                "target_c2w": c2w[torch.from_numpy(targets)],
                "target_K": torch.from_numpy(np.stack([v[2] for v in views]).astype(np.float32))}


VIEW_STACKS = ("target_bgra", "target_depth16", "source_bgra")  # per sample: a tuple of view tensors


def _stack(tensors: list[torch.Tensor], shape: tuple) -> torch.Tensor:
    """``tensors`` stacked into ``shape`` with one copy; in a DataLoader worker the result lives in shared memory
    (as ``default_collate`` does it), so handing the batch to the main process copies nothing more."""
    first = tensors[0]
    if get_worker_info() is not None:  # the allocation default_collate makes in workers
        storage = first._typed_storage()._new_shared(math.prod(shape), device=first.device)
        out = first.new(storage).resize_(shape)
    else:
        out = torch.empty(shape, dtype=first.dtype)
    torch.stack(tensors, out=out.view((-1,) + tuple(first.shape)))
    return out


def collate(samples: list[dict]) -> dict:
    """``default_collate`` for raw samples, with each sample's tuple of N views stacked once into (B, N, …)."""
    rest = default_collate([{k: v for k, v in s.items() if k not in VIEW_STACKS} for s in samples])
    for k in VIEW_STACKS:
        if k in samples[0]:
            views = [v for s in samples for v in s[k]]
            rest[k] = _stack(views, (len(samples), len(samples[0][k])) + tuple(views[0].shape))
    return rest
