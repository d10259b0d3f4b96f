"""2-D feature pyramid over the source views of One-2-3-45's reconstruction module (SparseNeuS's FeatureNet).

Legend:  B batch · V source views (One-2-3-45: 32) · H, W image size (divisible by 4)
         b base channels (8) · C fused output channels (7·b = 56 by default) · s output stride (1, 2 or 4)

    image (B·V, 3, H, W)
      ─► level 0: ConvBnReLU 3×3 ×2                          c0 (b,   H,   W)
      ─► level 1: ConvBnReLU 5×5/2, 3×3 ×2                   c1 (2b,  H/2, W/2)
      ─► level 2: ConvBnReLU 5×5/2, 3×3 ×2                   c2 (4b,  H/4, W/4)
    top-down:  p2 = lat2(c2);  p1 = up(p2) + lat1(c1);  p0 = up(p1) + lat0(c0)      (lateral 1×1 convs → 4b)
    output:    o2 = out2(p2) (4b) · o1 = out1(p1) (2b) · o0 = out0(p0) (b)            (3×3 convs)
    fuse:      resize o0, o1, o2 to (H/s, W/s) ─► concat (7b) ─► [1×1 conv to C, only if C ≠ 7b] ─► (B, V, C, H/s, W/s)

SparseNeuS concatenates the three output maps, up-sampled to the finest level (full resolution), into 8+16+32 = 56
channels; that is the default here (``base_channels=8, out_channels=56, out_stride=1``). Decisions of lift3d:

- ``out_stride`` picks the resolution of the fused map (1 = SparseNeuS; 4 keeps only 1/16 of the pixels, for tiny
  configs or memory-bound runs). The cost volume accounts for it by dividing pixel coordinates by the stride.
- Every resize is bilinear with ``align_corners=False``, i.e. in lift3d's pixel-centre convention (pixel centres at
  integer + 0.5): feature pixel i of a stride-s map covers image pixels [i·s, (i+1)·s), so an image point (u, v)
  sits at (u/s, v/s) in the feature map — exactly what ``cost_volume.project`` computes.
- A fused width other than 7·b gets one 1×1 projection, so ``out_channels`` and ``base_channels`` are independent.

Plain ``nn.Module`` (no Lightning); images come as the datamodule gives them (no normalisation inside).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

LEVELS = 3  # strides 1, 2, 4
MAX_STRIDE = 2 ** (LEVELS - 1)


class ConvBnReLU(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → ReLU, 'same' padding for odd kernels."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize in the pixel-centre convention (identity when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FeatureFPN(nn.Module):
    """Per-view 2-D features: images (B, V, 3, H, W) → (features (B, V, C, H/s, W/s), stride s)."""

    def __init__(self, base_channels: int = 8, out_channels: int = 56, out_stride: int = 1):
        super().__init__()
        if base_channels < 1 or out_channels < 1:
            raise ValueError(f"base_channels and out_channels must be >= 1, got {base_channels}, {out_channels}")
        if out_stride not in (1, 2, 4):
            raise ValueError(f"out_stride must be 1, 2 or 4 (the pyramid's levels), got {out_stride!r}")
        b = base_channels
        self.out_channels, self.out_stride = out_channels, out_stride
        # bottom-up: level 0 at full resolution, levels 1 and 2 each halve it
        self.conv0 = nn.Sequential(ConvBnReLU(3, b), ConvBnReLU(b, b))
        self.conv1 = nn.Sequential(ConvBnReLU(b, 2 * b, 5, stride=2), ConvBnReLU(2 * b, 2 * b),
                                   ConvBnReLU(2 * b, 2 * b))
        self.conv2 = nn.Sequential(ConvBnReLU(2 * b, 4 * b, 5, stride=2), ConvBnReLU(4 * b, 4 * b),
                                   ConvBnReLU(4 * b, 4 * b))
        # lateral 1×1 convs into the top-down width 4b
        self.lat2 = nn.Conv2d(4 * b, 4 * b, 1)
        self.lat1 = nn.Conv2d(2 * b, 4 * b, 1)
        self.lat0 = nn.Conv2d(b, 4 * b, 1)
        # output convs: coarse levels keep more channels (4b, 2b, b)
        self.out2 = nn.Conv2d(4 * b, 4 * b, 3, padding=1)
        self.out1 = nn.Conv2d(4 * b, 2 * b, 3, padding=1)
        self.out0 = nn.Conv2d(4 * b, b, 3, padding=1)
        fused = 7 * b
        self.fuse = nn.Identity() if out_channels == fused else nn.Conv2d(fused, out_channels, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, int]:
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"FeatureFPN expects images (B, V, 3, H, W), got shape {tuple(images.shape)}")
        bsz, _, _, height, width = images.shape
        if height % MAX_STRIDE or width % MAX_STRIDE:
            raise ValueError(f"FeatureFPN needs H and W divisible by {MAX_STRIDE} (its {LEVELS} levels), "
                             f"got {height}×{width}; resize or crop the views (and their K) first")
        x = rearrange(images, "b v c h w -> (b v) c h w")
        c0 = self.conv0(x)  # (BV, b, H, W)
        c1 = self.conv1(c0)  # (BV, 2b, H/2, W/2)
        c2 = self.conv2(c1)  # (BV, 4b, H/4, W/4)
        p2 = self.lat2(c2)  # (BV, 4b, H/4, W/4)
        p1 = _resize(p2, c1.shape[-2:]) + self.lat1(c1)  # (BV, 4b, H/2, W/2)
        p0 = _resize(p1, c0.shape[-2:]) + self.lat0(c0)  # (BV, 4b, H, W)
        size = (height // self.out_stride, width // self.out_stride)
        fused = torch.cat([_resize(self.out2(p2), size), _resize(self.out1(p1), size), _resize(self.out0(p0), size)],
                          dim=1)  # (BV, 7b, H/s, W/s)
        out = self.fuse(fused)  # (BV, C, H/s, W/s)
        return rearrange(out, "(b v) c h w -> b v c h w", b=bsz), self.out_stride
