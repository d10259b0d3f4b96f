"""Pixel grids that go with cameras: resampling and writing images (numpy; OpenCV, Pillow and imageio).

Resampling — the one rule of lift3d
    :func:`resize` is how every image in lift3d changes size (training views, prediction inputs, MVImgNet frames,
    Zero123's condition images and predictions, One-2-3-45's sources): **area averaging (OpenCV ``INTER_AREA``)
    when shrinking**, so every source pixel contributes and nothing aliases, and **bilinear (``INTER_LINEAR``)
    otherwise** — when enlarging, or when one side grows while the other shrinks. Both sample at pixel centres, as
    ``geometry.cameras`` places them, so an image resized from (h, w) to (h', w') goes with the intrinsics
    ``scale_intrinsics(K, w'/w, h'/h)``. An image already at the size is returned as it is (no copy).

    Colour with alpha must be resized premultiplied (then divided back) so transparent pixels bleed no colour into
    the silhouette; the callers that carry alpha do that (``datamodules.views``, ``datamodules.images``).

    :func:`resize_nearest` is for maps whose values must never be blended — depth, masks, label maps: OpenCV's
    ``INTER_NEAREST_EXACT``, which takes the source pixel whose centre is nearest.

Writing
    :func:`write_image` writes one image file (PNG, JPEG, … by extension; Pillow), :func:`write_turntable` a looping
    GIF or an MP4 of frames. (A shard's in-memory PNG members are the shard format's business:
    ``render_farm.shards.encode_png``.)
"""

from __future__ import annotations

import os
from typing import Union

import cv2
import numpy as np

TURNTABLE_FORMATS = (".gif", ".mp4")
PathLike = Union[str, os.PathLike]


def _check_size(height, width, caller: str) -> tuple[int, int]:
    for name, n in (("height", height), ("width", width)):
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"{caller}: {name} must be a positive number of pixels, got {n!r}")
    return int(height), int(width)


def _cv2_resize(image: np.ndarray, height: int, width: int, interpolation: int) -> np.ndarray:
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    return out[..., None] if image.ndim == 3 and out.ndim == 2 else out  # OpenCV drops a single channel axis


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` (H, W) or (H, W, C) at ``height`` × ``width``: area averaging when shrinking (both sides ≤),
    bilinear otherwise; returned as it is when already that size (see the module docstring for the rule)."""
    height, width = _check_size(height, width, "resize")
    image = np.asarray(image)
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    interpolation = cv2.INTER_AREA if height <= h and width <= w else cv2.INTER_LINEAR
    return _cv2_resize(image, height, width, interpolation)


def resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` at ``height`` × ``width`` by the nearest source pixel centre (``INTER_NEAREST_EXACT``): for depth,
    masks and labels, whose values must never be blended; returned as it is when already that size."""
    height, width = _check_size(height, width, "resize_nearest")
    image = np.asarray(image)
    if image.shape[:2] == (height, width):
        return image
    return _cv2_resize(image, height, width, cv2.INTER_NEAREST_EXACT)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 as it is; floats in [0, 1] → ``round(255·x)`` (clipped to [0, 1] first)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"expected a uint8 image or floats in [0, 1], got dtype {image.dtype}")
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_image(path: PathLike, image: np.ndarray) -> str:
    """Write an (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA image — uint8, or floats in [0, 1]
    (:func:`to_uint8`) — to ``path``; the format follows the extension (Pillow). Parent directories are created.
    Returns ``str(path)``."""
    from PIL import Image

    path = str(path)
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) or not image.size:
        raise ValueError(f"write_image {path!r}: expected a non-empty (H, W), (H, W, 3) RGB or (H, W, 4) RGBA image, "
                         f"got shape {image.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        Image.fromarray(np.ascontiguousarray(to_uint8(image))).save(path)
    except (KeyError, ValueError, OSError) as exc:  # Pillow: unknown extension, or a mode the format cannot hold
        raise ValueError(f"could not write {path!r}: {exc}; use an image extension such as .png or .jpg (JPEG holds "
                         f"no alpha: write RGBA as .png)") from exc
    return path


def write_turntable(path: PathLike, frames: np.ndarray, fps: float = 12.0) -> str:
    """Write (N, H, W, 3) uint8 frames as a looping animation; the format follows the extension.

    ``.gif``: Pillow through imageio, looping forever, ``1000/fps`` ms a frame (GIF delays are whole centiseconds;
    Pillow merges consecutive identical frames into one longer frame). ``.mp4``: H.264 (yuv420p) through
    imageio-ffmpeg (a project dependency), else — where it is missing — OpenCV's ``mp4v`` (MPEG-4 Part 2) writer,
    which plays in desktop players (VLC, mpv, QuickTime) but not in most browsers. Parent directories are created.
    Returns ``str(path)``.
    """
    path = str(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in TURNTABLE_FORMATS:
        raise ValueError(f"unsupported turntable extension {ext or '(none)'!r} in {path!r}; use one of "
                         f"{', '.join(TURNTABLE_FORMATS)}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be a non-empty (N, H, W, 3) uint8 array, got {frames.shape} {frames.dtype}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if ext == ".gif":
        import imageio.v3 as iio

        iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    else:
        _write_mp4(path, frames, fps)
    return path


def _write_mp4(path: str, frames: np.ndarray, fps: float) -> None:
    n, h, w = frames.shape[:3]
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        if h % 2 or w % 2:  # yuv420p needs even sides: repeat the last row / column
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        writer = imageio_ffmpeg.write_frames(path, (frames.shape[2], frames.shape[1]), fps=fps, codec="libx264",
                                             pix_fmt_out="yuv420p", macro_block_size=1)
        writer.send(None)  # start the ffmpeg process
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        return
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open an mp4v video writer for {path!r}; install imageio-ffmpeg "
                           f"(pip install imageio-ffmpeg) for MP4, or write a .gif")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV wants BGR
    finally:
        writer.release()
