"""Sparse 3-D CNN of One-2-3-45's reconstruction module (SparseNeuS-style): the cost volume → a geometry volume.

Legend:  B batch · R grid resolution (spatial shape R × R × R; 96 in the paper) · M active voxels (the cost volume's)
         C_in input channels (the cost volume's 2C = [mean | var]) · c0, c1 channels of the two levels
         F output channels (the geometry volume the SDF MLP samples)

    SparseVolume feats (M, C_in), coords (M, 4) int32 [batch, i, j, k]
      ─► spconv.SparseConvTensor ─► stem: SubMConv3d 3³ → c0, BN, ReLU
      ─► level 0: blocks × ResidualBlock(c0)                                    (active sites: the input's M)
      ─┬─ [levels = 2] down: SparseConv3d 3³ stride 2 → c1, BN, ReLU              (coarser grid, ⌈R/2⌉ per axis)
       │    ─► level 1: blocks × ResidualBlock(c1)
       │    ─► up: SparseInverseConv3d 3³ → c0, BN, ReLU  (back onto exactly the input's active sites)
       └─► + skip from level 0 ─► head: Linear c0 → F  ─► SparseVolume feats (M, F), the same coords

    ResidualBlock(c): x ─► SubMConv3d 3³, BN, ReLU ─► SubMConv3d 3³, BN ─► + x ─► ReLU

Design notes:

- Submanifold convolutions (SubMConv3d) keep the active sites fixed, so every level-0 output lives exactly on the
  cost volume's voxels (those seen by ≥ min_views views) and its row order is the input's. The optional second
  level is a modest U-shape of 2 levels (one strided sparse conv down, its inverse up, a summed skip); it widens the
  receptive field cheaply. SparseNeuS itself uses a deeper sparse U-Net; two levels keep this block small and easy
  to test — deepen ``channels`` later if the geometry needs more context.
- Every SubMConv3d of one level shares an ``indice_key`` (the rule book is computed once per level per forward),
  and the inverse conv reuses the down conv's key, which is what puts its output back on the input's sites.
- spconv's kernels are cross-correlations with weight layout (out, kD, kH, kW, in) — a SubMConv3d with padding 1
  on a fully active block equals ``F.conv3d(x, w.permute(0, 4, 1, 2, 3), padding=1)`` (tested).
- Without CUDA, :func:`~lightning_modules.networks.one2345.spconv_compat.ensure_cpu_backward` (called at
  construction) makes spconv's CPU backward work; the CPU kernels are the same spconv kernels, no other backend.
- Known problem (spconv 2.3.8 CPU wheel, torch 2.14.1): with more than one intra-op thread
  (``torch.get_num_threads() > 1``) spconv's CPU sparse convolutions sometimes return wrong float32 values (seen:
  errors of ~0.1 on outputs of ~1, in a few of every 30 identical calls; exact with one thread, and float64 was
  exact in the runs tried). Not yet pinned down to one kernel: gather_cpu, scatter_add_cpu and torch.mm were each
  exact in isolation, and copying their inputs made the error vanish — a race or buffer-lifetime problem inside
  spconv's CPU path, by the look of it. Until it is understood, CPU runs must use one thread
  (``torch.set_num_threads(1)`` or ``OMP_NUM_THREADS=1``); :meth:`SparseGeometryNet.forward` warns once on CPU
  otherwise. Not checked on CUDA (no GPU here).

Dense layout of :func:`to_dense`: (B, F, R, R, R) indexed [b, :, i, j, k], voxel (i, j, k) at world
(x_i, y_j, z_k) (cost_volume.py's corner grid). ``F.grid_sample`` reads its grid's last axis as (W, H, D) =
(k, j, i), so trilinear sampling at world points p = (x, y, z) uses grid = (p / bound)[..., [2, 1, 0]] with
``align_corners=True`` (the grid's end voxels sit on ±bound).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import spconv.pytorch as spconv
import torch
from torch import nn

from lightning_modules.networks.one2345.cost_volume import SparseVolume
from lightning_modules.networks.one2345.spconv_compat import ensure_cpu_backward

_WARNED_THREADS = False


def _warn_if_cpu_multithreaded(feats: torch.Tensor) -> None:
    """Warn once when spconv runs on CPU with > 1 thread (wrong float32 values seen then; module docstring)."""
    global _WARNED_THREADS
    if feats.is_cuda or _WARNED_THREADS or torch.get_num_threads() == 1:
        return
    _WARNED_THREADS = True
    warnings.warn(f"spconv 2.3.8's CPU sparse convolutions have returned wrong float32 values with "
                  f"{torch.get_num_threads()} threads; use torch.set_num_threads(1) (or OMP_NUM_THREADS=1) for CPU "
                  f"runs of SparseGeometryNet (see lightning_modules/networks/one2345/sparse_cnn.py)", RuntimeWarning,
                  stacklevel=3)


def _bn_relu(x: spconv.SparseConvTensor, bn: nn.Module, relu: bool = True) -> spconv.SparseConvTensor:
    feats = bn(x.features)
    return x.replace_feature(torch.relu(feats) if relu else feats)


class ResidualBlock(nn.Module):
    """Two SubMConv3d 3³ (c → c), each with BatchNorm, ReLU between, a skip, ReLU after; active sites unchanged."""

    def __init__(self, channels: int, indice_key: str):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        y = _bn_relu(self.conv1(x), self.bn1)
        y = _bn_relu(self.conv2(y), self.bn2, relu=False)
        return y.replace_feature(torch.relu(y.features + x.features))


class SparseGeometryNet(nn.Module):
    """Cost volume :class:`SparseVolume` (feats (M, C_in)) → geometry volume :class:`SparseVolume` (feats (M, F)) on
    the same active voxels (same coords, same row order).

    Args:
        in_channels: C_in, the cost volume's feature width (2 × FeatureFPN channels = 112 for the paper's 56).
        out_channels: F, the geometry volume's feature width.
        channels: per-level widths: (c0,) for one level (submanifold only) or (c0, c1) for the 2-level U-shape.
        blocks: residual blocks per level (≥ 0).

    A tiny config — ``SparseGeometryNet(8, 4, channels=(4,), blocks=1)`` — has under 2,000 weights.
    """

    def __init__(self, in_channels: int = 112, out_channels: int = 16, channels: Sequence[int] = (16, 32),
                 blocks: int = 1):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) not in (1, 2) or min(channels) < 1:
            raise ValueError(f"channels must be 1 or 2 positive widths (c0,) or (c0, c1) — a U-shape of at most 2 "
                             f"levels — got {channels!r}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels!r}, {out_channels!r}")
        if blocks < 0:
            raise ValueError(f"blocks must be >= 0 residual blocks per level, got {blocks!r}")
        ensure_cpu_backward()
        self.in_channels, self.out_channels, self.channels, self.blocks = in_channels, out_channels, channels, blocks
        c0 = channels[0]
        self.stem = spconv.SubMConv3d(in_channels, c0, 3, padding=1, bias=False, indice_key="subm0")
        self.stem_bn = nn.BatchNorm1d(c0)
        self.level0 = nn.ModuleList(ResidualBlock(c0, "subm0") for _ in range(blocks))
        if len(channels) == 2:
            c1 = channels[1]
            self.down = spconv.SparseConv3d(c0, c1, 3, stride=2, padding=1, bias=False, indice_key="down1")
            self.down_bn = nn.BatchNorm1d(c1)
            self.level1 = nn.ModuleList(ResidualBlock(c1, "subm1") for _ in range(blocks))
            self.up = spconv.SparseInverseConv3d(c1, c0, 3, bias=False, indice_key="down1")
            self.up_bn = nn.BatchNorm1d(c0)
        self.head = nn.Linear(c0, out_channels)

    def forward(self, volume: SparseVolume) -> SparseVolume:
        feats, coords, spatial_shape, batch_size = volume
        if feats.dim() != 2 or feats.shape[1] != self.in_channels:
            raise ValueError(f"SparseGeometryNet expects feats (M, {self.in_channels}), got {tuple(feats.shape)}")
        if coords.dim() != 2 or coords.shape != (feats.shape[0], 4):
            raise ValueError(f"coords must be (M, 4) [batch, i, j, k] with M = {feats.shape[0]} rows of feats, "
                             f"got {tuple(coords.shape)}")
        if coords.dtype.is_floating_point or coords.dtype == torch.bool:
            raise ValueError(f"coords must be integer voxel indices (int32 for spconv), got {coords.dtype}")
        if len(spatial_shape) != 3:
            raise ValueError(f"spatial_shape must be [R, R, R] (3 axes), got {list(spatial_shape)!r}")
        if feats.shape[0] == 0:
            raise ValueError("the sparse volume has no active voxels (M = 0): no voxel was seen by min_views views")
        if coords.device != feats.device:
            raise ValueError(f"coords ({coords.device}) and feats ({feats.device}) must be on the same device")
        coords = coords.to(torch.int32)
        _warn_if_cpu_multithreaded(feats)
        x = spconv.SparseConvTensor(feats, coords, list(spatial_shape), int(batch_size))
        x = _bn_relu(self.stem(x), self.stem_bn)
        for block in self.level0:
            x = block(x)
        if len(self.channels) == 2:
            y = _bn_relu(self.down(x), self.down_bn)
            for block in self.level1:
                y = block(y)
            y = _bn_relu(self.up(y), self.up_bn)
            x = x.replace_feature(x.features + y.features)  # same sites, same row order (inverse of `down`)
        return SparseVolume(self.head(x.features), coords, list(spatial_shape), int(batch_size))


def to_dense(volume: SparseVolume) -> torch.Tensor:
    """Scatter a :class:`SparseVolume` (feats (M, F), coords (M, 4) [batch, i, j, k]) into a dense (B, F, R, R, R)
    tensor indexed [b, :, i, j, k], zero at inactive voxels; differentiable w.r.t. feats.

    For trilinear interpolation at world points see the module docstring (grid_sample's axis order is (k, j, i)).
    Done with plain indexing rather than ``SparseConvTensor.dense()``, so the layout is stated here.
    """
    feats, coords, spatial_shape, batch_size = volume
    if coords.shape != (feats.shape[0], 4):
        raise ValueError(f"coords must be (M, 4) [batch, i, j, k] for feats {tuple(feats.shape)}, "
                         f"got {tuple(coords.shape)}")
    dense = feats.new_zeros((int(batch_size), *spatial_shape, feats.shape[1]))  # (B, R, R, R, F)
    b, i, j, k = coords.long().unbind(dim=1)
    dense = dense.index_put((b, i, j, k), feats)
    return dense.permute(0, 4, 1, 2, 3).contiguous()  # (B, F, R, R, R)
