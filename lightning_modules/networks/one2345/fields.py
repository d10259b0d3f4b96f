"""The fields of One-2-3-45's reconstruction module (SparseNeuS-style): an SDF MLP over the geometry volume, and an
IBRNet-style colour network that blends the source views' colours.

Legend:  B batch · N query points · V source views · G geometry-volume channels · R volume resolution
         L positional-encoding frequencies · P = 3 + 6L encoded-position width · D_in = P + G SDF-MLP input width
         Fh SDF hidden-feature width (the renderer's F) · H, W source-image size · C, h, w source feature maps

    SDFNetwork
      p (B, N, 3) ─► PositionalEncoding ─► [p, sin 2^k p, cos 2^k p] (B, N, P) ─┐
      geometry volume (B, G, R, R, R) ─► trilinear at p (sample_volume) (B, N, G) ┴► x0 (B, N, D_in)
      ─► Linear+Softplus(β=100) × num_layers, [x, x0] / √2 at the middle layer ─► Linear ─► sdf (B, N), feat (B, N, Fh)
      All linears are weight-normalised; geometric init (SAL, Atzmon & Lipman 2020, as NeuS) gives sdf ≈ |p| − r.

    BlendingColourNetwork (IBRNet, Wang et al. 2021)
      p ─► project into each source view (cost_volume.project) ─► uv (B, V, N, 2), visible (B, V, N)
        ─► bilinear source colour (B, V, N, 3) and 2-D feature (B, V, N, C) (cost_volume.sample_features)
        ─► their mean/var over the visible views (cost_volume.aggregate), broadcast to every view
      source direction d_v = normalize(p − centre_v); query direction d (the ray's) ─► [d − d_v, d·d_v] (B, V, N, 4)
      [colour, feature, mean, var, direction diff, SDF feature] (B, V, N, D_v) ─► MLP ─► logit (B, V, N)
      ─► softmax over the views that see p ─► rgb = Σ_v w_v · colour_v;  points no view sees: ``fallback`` colour

Both fit ``renderer.NeuSRenderer``'s callables through closures: ``SDFNetwork.sdf_fn(volume)`` and
``BlendingColourNetwork.colour_fn(images, c2w, K, ...)``. Cameras follow ``geometry.cameras`` (OpenCV c2w, K in
pixels of the source images); the geometry volume follows ``sparse_cnn.to_dense`` ([b, :, i, j, k], voxel (i, j, k)
at world (x_i, y_j, z_k), ends of each axis on ±bound).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from lightning_modules.networks.one2345.cost_volume import (
    aggregate,
    project,
    sample_features,
)
from lightning_modules.networks.one2345.renderer import SDF, Colour


class PositionalEncoding(nn.Module):
    """NeRF-style encoding (B, N, d) → (B, N, d·(1 + 2L)): [x, sin(2^0 x), cos(2^0 x), …, sin(2^(L−1) x),
    cos(2^(L−1) x)] (frequencies 2^k without π, as NeuS's embedder). ``num_freqs`` = 0 passes x through."""

    freqs: torch.Tensor  # (L,) buffer

    def __init__(self, num_freqs: int = 6):
        super().__init__()
        if num_freqs < 0:
            raise ValueError(f"num_freqs must be >= 0 frequencies, got {num_freqs!r}")
        self.num_freqs = num_freqs
        self.register_buffer("freqs", 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)

    def out_dim(self, in_dim: int = 3) -> int:
        return in_dim * (1 + 2 * self.num_freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.num_freqs:
            return x
        scaled = x[..., None, :] * self.freqs.to(x.dtype)[:, None]  # (…, L, d)
        enc = torch.stack([scaled.sin(), scaled.cos()], dim=-2)  # (…, L, 2, d)
        return torch.cat([x, rearrange(enc, "... l two d -> ... (l two d)")], dim=-1)


def sample_volume(volume: torch.Tensor, points: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """Trilinear samples (B, N, G) of a dense volume (B, G, R, R, R) laid out as ``sparse_cnn.to_dense`` at world
    points (B, N, 3). grid_sample reads the grid's last axis as (k, j, i), hence the reversed xyz; align_corners=True
    puts the end voxels on ±bound; points outside the box take the boundary value (``padding_mode="border"``).
    Twice differentiable (the renderer's SDF gradients are backpropagated)."""
    if volume.dim() != 5 or points.dim() != 3 or points.shape[-1] != 3 or volume.shape[0] != points.shape[0]:
        raise ValueError(f"sample_volume expects volume (B, G, R, R, R) and points (B, N, 3) with the same B, got "
                         f"{tuple(volume.shape)} and {tuple(points.shape)}")
    grid = rearrange(points / bound, "b n xyz -> b 1 1 n xyz")[..., [2, 1, 0]].to(volume.dtype)  # (B, 1, 1, N, 3)
    sampled = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True)  # (B,G,1,1,N)
    return rearrange(sampled, "b g 1 1 n -> b n g")


class SDFNetwork(nn.Module):
    """[PE(p), geometry feature at p] → sdf (B, N) and hidden feature (B, N, Fh); see the module docstring.

    Args:
        geo_channels: G, the geometry volume's channels (``SparseGeometryNet.out_channels``).
        feature_dim: Fh, the hidden feature handed to the colour network.
        hidden: width of the hidden layers (must exceed D_in: the middle layer concatenates the input).
        num_layers: hidden layers (each Linear + Softplus(β=100)); the skip enters at layer ``num_layers // 2``.
        num_freqs: positional-encoding frequencies L.
        radius: the sphere |p| − radius the geometric initialisation approximates.
    """

    def __init__(self, geo_channels: int = 16, feature_dim: int = 64, hidden: int = 128, num_layers: int = 4,
                 num_freqs: int = 6, radius: float = 0.5):
        super().__init__()
        if geo_channels < 0 or feature_dim < 0:
            raise ValueError(f"geo_channels and feature_dim must be >= 0, got {geo_channels!r}, {feature_dim!r}")
        if num_layers < 2:
            raise ValueError(f"num_layers must be >= 2 hidden layers (the skip enters at the middle one), "
                             f"got {num_layers!r}")
        self.encoding = PositionalEncoding(num_freqs)
        self.geo_channels, self.feature_dim, self.radius = geo_channels, feature_dim, radius
        d_in = self.encoding.out_dim(3) + geo_channels
        if hidden <= d_in:
            raise ValueError(f"hidden ({hidden}) must exceed the input width D_in = {d_in} (3·(1 + 2·{num_freqs}) "
                             f"encoded position + {geo_channels} geometry channels): the skip layer concatenates it")
        self.d_in, self.skip = d_in, num_layers // 2
        dims = [d_in] + [hidden] * num_layers + [1 + feature_dim]
        layers = []
        for i in range(num_layers + 1):
            fan_in = dims[i]
            fan_out = dims[i + 1] - d_in if i + 1 == self.skip else dims[i + 1]
            lin = nn.Linear(fan_in, fan_out)
            self._geometric_init(lin, i, num_layers, d_in)
            layers.append(weight_norm(lin))  # g = |v| per row at registration, so the init is kept
        self.layers = nn.ModuleList(layers)
        self.activation = nn.Softplus(beta=100)

    @torch.no_grad()
    def _geometric_init(self, lin: nn.Linear, i: int, num_layers: int, d_in: int) -> None:
        """SAL / NeuS geometric initialisation: hidden layers N(0, 2/fan_out) on the raw position only (encoding and
        geometry columns zero), biases 0; the last layer's SDF row N(√π/√fan_in, 1e-4) with bias −radius. The
        feature rows of the last layer get N(0, 2/fan_in), bias 0 (they do not touch the SDF)."""
        nn.init.zeros_(lin.bias)
        if i == num_layers:  # output layer: row 0 is the SDF
            nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0 / lin.in_features))
            nn.init.normal_(lin.weight[:1], math.sqrt(math.pi) / math.sqrt(lin.in_features), 1e-4)
            lin.bias[0] = -self.radius
            return
        nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0) / math.sqrt(lin.out_features))
        if i == 0:
            lin.weight[:, 3:] = 0.0  # only xyz (the encoding's first 3 columns) at init
        elif i == self.skip:
            lin.weight[:, -(d_in - 3):] = 0.0  # the concatenated input [xyz, enc, geo]: only xyz at init

    def forward(self, points: torch.Tensor, geo_features: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """points (B, N, 3), geometry features (B, N, G) (None: zeros) → sdf (B, N), features (B, N, Fh)."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"SDFNetwork expects points (B, N, 3), got {tuple(points.shape)}")
        if geo_features is None:
            geo_features = points.new_zeros(*points.shape[:2], self.geo_channels)
        if geo_features.shape != (*points.shape[:2], self.geo_channels):
            raise ValueError(f"geometry features must be (B, N, G) = {(*points.shape[:2], self.geo_channels)} for "
                             f"points {tuple(points.shape)}, got {tuple(geo_features.shape)}")
        x0 = torch.cat([self.encoding(points), geo_features.to(points.dtype)], dim=-1)  # (B, N, D_in)
        x = x0
        for i, lin in enumerate(self.layers):
            if i == self.skip:
                x = torch.cat([x, x0], dim=-1) / math.sqrt(2.0)  # (B, N, hidden)
            x = lin(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x[..., 0], x[..., 1:]  # (B, N), (B, N, Fh)

    def sdf_and_features(self, points: torch.Tensor, volume: torch.Tensor, bound: float = 1.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """points (B, N, 3), dense geometry volume (B, G, R, R, R) (``to_dense``) → sdf (B, N), features (B, N, Fh)."""
        if volume.dim() != 5 or volume.shape[1] != self.geo_channels:
            raise ValueError(f"the geometry volume must be (B, G={self.geo_channels}, R, R, R) (sparse_cnn.to_dense), "
                             f"got {tuple(volume.shape)}")
        return self(points, sample_volume(volume, points, bound))

    def sdf_fn(self, volume: torch.Tensor, bound: float = 1.0) -> SDF:
        """The renderer's ``sdf_fn`` over one batch's geometry volume (B, G, R, R, R)."""
        def fn(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.sdf_and_features(points, volume, bound)
        return fn


class Blend(NamedTuple):
    """rgb (B, N, 3); weights (B, V, N) (sum 1 over the visible views, 0 elsewhere); visible (B, V, N);
    seen (B, N) (some view sees the point; rgb is the fallback colour where not)."""

    rgb: torch.Tensor
    weights: torch.Tensor
    visible: torch.Tensor
    seen: torch.Tensor


class BlendingColourNetwork(nn.Module):
    """IBRNet-style blending of source-view colours; see the module docstring.

    Args:
        feature_dim: Fh, the SDF network's hidden feature width.
        image_channels: C, channels of the source feature maps (0: colours only, no feature maps passed).
        hidden: MLP width.
        fallback: the colour of points no source view sees.
        near: z-depth below which a point is behind a source camera (``cost_volume.project``).
    """

    def __init__(self, feature_dim: int = 64, image_channels: int = 0, hidden: int = 64, fallback: float = 0.0,
                 near: float = 1e-3):
        super().__init__()
        if feature_dim < 0 or image_channels < 0 or hidden < 1:
            raise ValueError(f"feature_dim and image_channels must be >= 0 and hidden >= 1, got {feature_dim!r}, "
                             f"{image_channels!r}, {hidden!r}")
        self.feature_dim, self.image_channels, self.fallback, self.near = feature_dim, image_channels, fallback, near
        per_view = 3 * (3 + image_channels) + 4 + feature_dim  # [colour+feat, mean, var], direction diff, SDF feat
        self.logits = nn.Sequential(nn.Linear(per_view, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                                    nn.Linear(hidden, 1))

    def forward(self, points: torch.Tensor, view_dirs: torch.Tensor, sdf_features: torch.Tensor,
                images: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, image_features: torch.Tensor | None = None,
                stride: float = 1) -> Blend:
        """points, unit view directions (B, N, 3), SDF features (B, N, Fh); source images (B, V, 3, H, W), cameras
        c2w (B, V, 4, 4), K (B, V, 3, 3) (pixels of the images); feature maps (B, V, C, h, w) of stride ``stride``
        (None when image_channels = 0) → :class:`Blend`."""
        bsz, n = points.shape[:2]
        if images.dim() != 5 or images.shape[:3] != (bsz, images.shape[1], 3):
            raise ValueError(f"images must be (B={bsz}, V, 3, H, W), got {tuple(images.shape)}")
        views, (height, width) = images.shape[1], images.shape[-2:]
        if c2w.shape != (bsz, views, 4, 4) or K.shape != (bsz, views, 3, 3):
            raise ValueError(f"cameras must be c2w (B, V, 4, 4) and K (B, V, 3, 3) with (B, V) = ({bsz}, {views}) of "
                             f"the images; got c2w {tuple(c2w.shape)}, K {tuple(K.shape)}")
        if sdf_features.shape != (bsz, n, self.feature_dim):
            raise ValueError(f"SDF features must be (B, N, Fh) = {(bsz, n, self.feature_dim)}, "
                             f"got {tuple(sdf_features.shape)}")
        if self.image_channels and (image_features is None or image_features.shape[:3] != (bsz, views,
                                                                                         self.image_channels)):
            got = None if image_features is None else tuple(image_features.shape)
            raise ValueError(f"image_features must be (B, V, C, h, w) with (B, V, C) = ({bsz}, {views}, "
                             f"{self.image_channels}), got {got}")
        if not self.image_channels and image_features is not None:
            raise ValueError(f"image_features were given but the network was built with image_channels = 0; build it "
                             f"with image_channels = {image_features.shape[2]}")

        uv, _, visible = project(points, c2w, K, (height, width), 1, self.near)  # (B, V, N, 2), (B, V, N)
        sampled = sample_features(images, uv, visible)  # (B, V, N, 3)
        colours = sampled
        if self.image_channels and image_features is not None:  # checked above: given whenever image_channels
            sampled = torch.cat([sampled, sample_features(image_features, uv / stride, visible)], dim=-1)  # 3 + C
        mean, var, count = aggregate(sampled, visible)  # (B, N, 3 + C) ×2, (B, N)

        centres = c2w[..., :3, 3].to(points.dtype)  # (B, V, 3)
        src_dirs = F.normalize(points[:, None] - centres[:, :, None], dim=-1)  # (B, V, N, 3)
        query = repeat(view_dirs.to(points.dtype), "b n c -> b v n c", v=views)
        dir_feat = torch.cat([query - src_dirs, (query * src_dirs).sum(dim=-1, keepdim=True)], dim=-1)  # (B,V,N,4)

        per_view = torch.cat([sampled, repeat(mean, "b n c -> b v n c", v=views),
                              repeat(var, "b n c -> b v n c", v=views), dir_feat,
                              repeat(sdf_features.to(points.dtype), "b n f -> b v n f", v=views)], dim=-1)
        logits = self.logits(per_view)[..., 0]  # (B, V, N)

        # masked softmax over the views: invisible views get −inf; a point no view sees gets all-zero logits (no
        # NaN) and then zero weights through the mask
        seen = count > 0  # (B, N)
        logits = logits.masked_fill(~visible, float("-inf")).masked_fill(~seen[:, None], 0.0)
        weights = torch.softmax(logits, dim=1) * visible.to(logits.dtype)  # (B, V, N)
        rgb = torch.einsum("bvn,bvnc->bnc", weights, colours)  # (B, N, 3)
        rgb = torch.where(seen[..., None], rgb, torch.full_like(rgb, self.fallback))
        return Blend(rgb, weights, visible, seen)

    def colour_fn(self, images: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                  image_features: torch.Tensor | None = None, stride: float = 1) -> Colour:
        """The renderer's ``colour_fn`` over one batch's source views (the SDF gradients are not used)."""
        def fn(points: torch.Tensor, view_dirs: torch.Tensor, sdf_gradients: torch.Tensor,
               features: torch.Tensor) -> torch.Tensor:
            return self(points, view_dirs, features, images, c2w, K, image_features, stride).rgb
        return fn
