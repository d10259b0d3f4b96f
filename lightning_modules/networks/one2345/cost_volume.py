"""Sparse cost volume of One-2-3-45's reconstruction module (SparseNeuS-style): per-voxel mean and variance of the
source views' features, over only the views that see the voxel.

Legend:  B batch · V source views · C feature channels (FeatureFPN: 56) · h, w feature-map size · s feature stride
         R grid resolution (96) · N voxels in a chunk (≤ R³) · M voxels kept (seen by ≥ min_views views)

    voxel_grid(R) (R³, 3) ──chunks of N──► project through every view (c2w, K, s) ─► uv (B, V, N, 2), z, visible
      ─► sample_features: bilinear, grid_sample(align_corners=False) ─► (B, V, N, C), 0 where not visible
      ─► aggregate over the visible views ─► mean, var (B, N, C), count (B, N)
      ─► keep count ≥ min_views ─► coords (M, 4) int32 [batch, i, j, k], feats (M, 2C) = [mean | var]
      ─► next block: a spconv sparse 3-D CNN, spconv.SparseConvTensor(feats, coords, spatial_shape, batch_size)

Conventions (``geometry.cameras`` states the camera one):

- Grid: the corner convention of ``geometry.mesh`` — voxel (i, j, k) sits at (x_i, y_j, z_k) with
  x_i = −bound + i·2·bound/(R − 1) (both ends of [−bound, bound] included), flattened in "ij" order
  n = (i·R + j)·R + k. The SDF volume the sparse CNN produces can therefore go straight to ``geometry.mesh``'s
  marching cubes with the same bbox.
- Cameras: OpenCV ``c2w`` (B, V, 4, 4) and ``K`` (B, V, 3, 3) in pixels of the *input image*. A feature map of
  stride s has pixel i covering image pixels [i·s, (i+1)·s), so an image point (u, v) is at (u/s, v/s) in it, and
  feature-pixel centres are again at integer + 0.5; grid_sample's x = 2·u'/w − 1 (align_corners=False) then puts
  x = −1 / +1 on the outer pixel edges.
- Visibility: a voxel is visible in a view when its z-depth z > ``near`` and its projection lies inside the
  feature map's area, 0 ≤ u' < w and 0 ≤ v' < h (u' = u/s; the same as 0 ≤ u < W, 0 ≤ v < H in image pixels when
  w = W/s). Between an outer pixel centre and the image edge the sample takes the edge pixel's value
  (``padding_mode="border"``), so a visible voxel never mixes in zero padding.
- Aggregation: mean and *population* variance (divide by the count) over the visible views only; voxels seen by
  no view have mean = var = 0, count = 0, and are never kept (``min_views`` ≥ 1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from geometry import rays
from geometry.mesh import grid_points


def voxel_grid(resolution: int = 96, bound: float = 1.0, device=None) -> torch.Tensor:
    """(R³, 3) float32 voxel positions: the corners of ``geometry.mesh.grid_points`` over [−bound, bound]^3,
    flattened in "ij" order (row n = (i·R + j)·R + k is (x_i, y_j, z_k))."""
    if not bound > 0:
        raise ValueError(f"bound must be > 0 (the grid spans [-bound, bound]^3), got {bound!r}")
    return rearrange(grid_points(resolution, (-bound, bound), device=device), "i j k xyz -> (i j k) xyz")


def project(points: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, feat_hw: tuple[int, int], stride: float = 1,
            near: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World points (B, N, 3) through cameras c2w (B, V, 4, 4), K (B, V, 3, 3) (image pixels) into feature maps of
    size ``feat_hw`` = (h, w) and stride s (``geometry.rays.project``, then / s).

    Returns uv (B, V, N, 2) feature-map pixel coordinates (image pixels / s), z (B, V, N) z-depth, and visible
    (B, V, N) bool: z > near and 0 ≤ u < w and 0 ≤ v < h. uv is finite everywhere (z is clamped to ``near`` in the
    division) but means nothing where z ≤ near.
    """
    h, w = feat_hw
    uv, z = rays.project(points[:, None], c2w, K, near)  # image pixels (B, V, N, 2), z-depth (B, V, N)
    uv = uv / stride
    u, v = uv.unbind(dim=-1)
    visible = (z > near) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    return uv, z, visible


def sample_features(features: torch.Tensor, uv: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (B, V, N, C) of feature maps (B, V, C, h, w) at feature-pixel coordinates uv (B, V, N, 2)
    (pixel centres at integer + 0.5); zero where not ``visible`` (B, V, N)."""
    bsz, _, _, h, w = features.shape
    size = torch.tensor([w, h], dtype=uv.dtype, device=uv.device)
    grid = torch.where(visible[..., None], 2.0 * uv / size - 1.0, torch.zeros_like(uv))  # (B, V, N, 2) in [-1, 1]
    sampled = F.grid_sample(rearrange(features, "b v c h w -> (b v) c h w"),
                            rearrange(grid, "b v n xy -> (b v) 1 n xy").to(features.dtype),
                            mode="bilinear", padding_mode="border", align_corners=False)  # (BV, C, 1, N)
    # one copy into (B, V, N, C) order: the masking below and every reduction over V after it run on contiguous
    # memory (on the strided view they took about twice as long)
    sampled = rearrange(sampled, "(b v) c 1 n -> b v n c", b=bsz).contiguous()
    return sampled * visible[..., None].to(sampled.dtype)


def aggregate(sampled: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (B, N, C), population variance (B, N, C) and count (B, N) of samples (B, V, N, C) over the visible
    views (B, V, N) only; 0, 0, 0 for a voxel no view sees.

    One pass masks the samples (m = x·mask); the moments are Σ m and Σ m·x (mask² = mask) over V, and
    var = E[x²] − mean² clamped at 0 (its float32 cancellation error is ~1e-7 of E[x²])."""
    masked = sampled * visible[..., None].to(sampled.dtype)  # (B, V, N, C)
    count = visible.sum(dim=1)  # (B, N)
    denom = count.clamp(min=1)[..., None].to(sampled.dtype)  # (B, N, 1)
    mean = masked.sum(dim=1) / denom  # (B, N, C)
    second = (masked * sampled).sum(dim=1) / denom
    var = (second - mean * mean).clamp(min=0.0)  # (B, N, C)
    return mean, var, count


class SparseVolume(NamedTuple):
    """The cost volume in spconv's input format: ``spconv.SparseConvTensor(feats, coords, spatial_shape, batch_size)``.

    coords (M, 4) int32 rows [batch, i, j, k] (batch-major, then i, j, k ascending); feats (M, 2C) = [mean | var];
    spatial_shape [R, R, R]; voxel (i, j, k) sits at world (x_i, y_j, z_k), x_i = −bound + i·2·bound/(R − 1).
    """

    feats: torch.Tensor
    coords: torch.Tensor
    spatial_shape: list[int]
    batch_size: int


class CostVolume(nn.Module):
    """Source-view features (B, V, C, h, w) + cameras → :class:`SparseVolume` of the voxels seen by ≥ ``min_views``.

    The next block of the reconstruction module is a spconv sparse 3-D CNN over this volume. Work is chunked over
    voxels (``chunk`` voxels of one sample at a time: about chunk·V·C floats of samples), so a 96³ grid
    (≈ 885k voxels) × 32 views never materialises at once; the result does not depend on ``chunk``.
    """

    points: torch.Tensor  # (R³, 3) voxel centres, a buffer

    def __init__(self, resolution: int = 96, bound: float = 1.0, min_views: int = 1, chunk: int = 32768,
                 near: float = 1e-3):
        super().__init__()
        if min_views < 1:
            raise ValueError(f"min_views must be >= 1 (a voxel seen by no view has no features), got {min_views!r}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 voxels, got {chunk!r}")
        self.resolution, self.bound, self.min_views, self.chunk, self.near = resolution, bound, min_views, chunk, near
        self.register_buffer("points", voxel_grid(resolution, bound), persistent=False)  # (R³, 3)

    def forward(self, features: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, stride: float = 1) -> SparseVolume:
        if features.dim() != 5:
            raise ValueError(f"CostVolume expects features (B, V, C, h, w), got shape {tuple(features.shape)}")
        bsz, views, _, h, w = features.shape
        if c2w.shape != (bsz, views, 4, 4) or K.shape != (bsz, views, 3, 3):
            raise ValueError(f"cameras must be c2w (B, V, 4, 4) and K (B, V, 3, 3) with (B, V) = ({bsz}, {views}) "
                             f"of the features; got c2w {tuple(c2w.shape)}, K {tuple(K.shape)}")
        res = self.resolution
        points = self.points.to(features.device)
        feats, coords = [], []
        for b in range(bsz):
            for start in range(0, points.shape[0], self.chunk):
                pts = points[None, start:start + self.chunk]  # (1, N, 3)
                uv, _, visible = project(pts, c2w[b:b + 1], K[b:b + 1], (h, w), stride, self.near)
                mean, var, count = aggregate(sample_features(features[b:b + 1], uv, visible), visible)
                keep = count[0] >= self.min_views  # (N,)
                n = keep.nonzero()[:, 0] + start  # flat voxel indices (n_kept,)
                feats.append(torch.cat([mean[0, keep], var[0, keep]], dim=-1))  # (n_kept, 2C)
                ijk = torch.stack([n // (res * res), (n // res) % res, n % res], dim=-1)  # (n_kept, 3)
                coords.append(torch.cat([torch.full_like(ijk[:, :1], b), ijk], dim=-1).to(torch.int32))
        return SparseVolume(torch.cat(feats), torch.cat(coords), [res, res, res], bsz)
