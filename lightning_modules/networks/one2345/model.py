"""One-2-3-45's reconstruction module (Liu et al., NeurIPS 2023; SparseNeuS-style): posed views → SDF + colour.

Legend:  B batch · V source views (8 ground truth + 32 neighbours = 40) · H×W source size · C FPN channels (56)
         R cost-volume resolution (96) · M voxels seen by ≥ min_views views · G geometry channels (16)
         Q rays · S samples per ray (64 + 64)

    source images (B, V, 3, H, W) ─► FeatureFPN ─► features (B, V, C, H/s, W/s)
    features + source cameras (c2w, K) ─► CostVolume: every voxel of the R³ grid over [-bound, bound]³ projected
        into the V views ─► mean | var over the views that see it ─► SparseVolume feats (M, 2C)
    ─► SparseGeometryNet (spconv) ─► geometry volume (M, G) ─► to_dense ─► (B, G, R, R, R)          = Scene
    rays (B, Q, 3) of a target camera ─► NeuSRenderer:
        SDFNetwork(PE(p), trilinear geometry feature at p) ─► sdf, hidden feature
        BlendingColourNetwork(p, ray direction, hidden feature, source colours + features) ─► rgb
    ─► rgb (B, Q, 3), opacity, depth (B, Q), SDF gradients (eikonal loss)

Cameras are OpenCV ``c2w`` / ``K`` in pixels of the source images (``geometry.cameras``), in the shard's world frame:
the object lies in [-1, 1]³, so the cost volume needs no per-sample normalisation. Each block's options are a typed
config (``lightning_modules.networks.one2345.config``; a block of ``configs/model/one2345_*.yaml``); the defaults are
the paper's (SparseNeuS's) sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from geometry.rays import camera_rays
from lightning_modules.networks.config import Options
from lightning_modules.networks.one2345.config import (
    ColourConfig,
    CostVolumeConfig,
    FeaturesConfig,
    RendererConfig,
    SDFConfig,
    SparseCNNConfig,
)
from lightning_modules.networks.one2345.sparse_cnn import to_dense


@dataclass
class Scene:
    """What the encoder makes of one batch's source views; everything rendering and meshing need."""

    volume: torch.Tensor  # (B, G, R, R, R) dense geometry volume
    images: torch.Tensor  # (B, V, 3, H, W) source colours
    features: Optional[torch.Tensor]  # (B, V, C, h, w) source feature maps for the colour network, or None
    stride: int  # of the feature maps
    c2w: torch.Tensor  # (B, V, 4, 4)
    K: torch.Tensor  # (B, V, 3, 3)
    active_voxels: int  # M, summed over the batch

    def select(self, b: int) -> "Scene":
        """Sample ``b`` of the batch, as a batch of one."""
        sl = slice(b, b + 1)
        return Scene(self.volume[sl], self.images[sl], None if self.features is None else self.features[sl],
                     self.stride, self.c2w[sl], self.K[sl], self.active_voxels)


class One2345(nn.Module):
    """The reconstruction module; ``encode`` source views once, then ``render_rays`` / ``sdf`` / ``colour`` of it.

    Args (each a typed config of its block, ``lightning_modules.networks.one2345.config``):
        features: FeatureFPN.
        cost_volume: CostVolume; its bound is the renderer's.
        sparse_cnn: SparseGeometryNet; in_channels = 2 × FPN channels.
        sdf: SDFNetwork; geo_channels from sparse_cnn.
        colour: BlendingColourNetwork; feature_dim from sdf, image_channels the FPN's (``use_image_features``) or 0.
        renderer: NeuSRenderer.
    """

    def __init__(self, features: FeaturesConfig | Options = FeaturesConfig(),
                 cost_volume: CostVolumeConfig | Options = CostVolumeConfig(),
                 sparse_cnn: SparseCNNConfig | Options = SparseCNNConfig(), sdf: SDFConfig | Options = SDFConfig(),
                 colour: ColourConfig | Options = ColourConfig(),
                 renderer: RendererConfig | Options = RendererConfig()):
        super().__init__()
        # a block may also come as plain options (a checkpoint's hparams, a test), checked as a YAML's are
        features = FeaturesConfig.of(features, "features", "One-2-3-45")
        cost_volume = CostVolumeConfig.of(cost_volume, "cost_volume", "One-2-3-45")
        sparse_cnn = SparseCNNConfig.of(sparse_cnn, "sparse_cnn", "One-2-3-45")
        sdf = SDFConfig.of(sdf, "sdf", "One-2-3-45")
        colour = ColourConfig.of(colour, "colour", "One-2-3-45")
        renderer = RendererConfig.of(renderer, "renderer", "One-2-3-45")
        self.features = features.build()
        self.cost_volume = cost_volume.build()
        self.bound = self.cost_volume.bound
        self.geometry = sparse_cnn.build(in_channels=2 * self.features.out_channels)
        self.sdf_net = sdf.build(geo_channels=self.geometry.out_channels)
        self.colour_net = colour.build(feature_dim=self.sdf_net.feature_dim,
                                       image_channels=self.features.out_channels if colour.use_image_features else 0)
        self.renderer = renderer.build(bound=self.bound)

    # --- source views → scene -------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor) -> Scene:
        """Source views (B, V, 3, H, W) with cameras (B, V, 4, 4), (B, V, 3, 3) → :class:`Scene`."""
        feats, stride = self.features(images)  # (B, V, C, H/s, W/s)
        sparse = self.cost_volume(feats, c2w.float(), K.float(), stride)  # feats (M, 2C), coords (M, 4)
        geometry = self.geometry(sparse)  # feats (M, G) on the same voxels
        volume = to_dense(geometry)  # (B, G, R, R, R)
        return Scene(volume, images, feats if self.colour_net.image_channels else None, stride, c2w.float(),
                     K.float(), int(sparse.feats.shape[0]))

    # --- the fields of a scene ------------------------------------------------------------------------------
    def sdf_fn(self, scene: Scene):
        return self.sdf_net.sdf_fn(scene.volume, self.bound)

    def colour_fn(self, scene: Scene):
        return self.colour_net.colour_fn(scene.images, scene.c2w, scene.K, scene.features, scene.stride)

    def render_rays(self, scene: Scene, origins: torch.Tensor, dirs: torch.Tensor, background: torch.Tensor,
                    stratified: bool = False, cos_anneal_ratio: float = 1.0) -> dict[str, torch.Tensor]:
        """Rays (B, Q, 3) (``geometry.rays`` directions: t is z-depth) → ``NeuSRenderer`` outputs."""
        return self.renderer(self.sdf_fn(scene), self.colour_fn(scene), origins, dirs, background, stratified,
                             cos_anneal_ratio)

    def render(self, scene: Scene, c2w: torch.Tensor, K: torch.Tensor, height: int, width: int,
               background: torch.Tensor) -> dict[str, torch.Tensor]:
        """Whole views (B, N) of the scene: ``images`` (B, N, 3, H, W), ``opacity``, ``depth`` (B, N, 1, H, W)
        (depth = Σ wᵢtᵢ, z-depth where opacity is 1) and ``normals`` (B, N, 3, H, W): the weighted unit SDF
        gradients, in world coordinates."""
        n = c2w.shape[1]
        origins, dirs = camera_rays(c2w.float(), K.float(), height, width)  # (B, N, H, W, 3)
        flat = "b n h w c -> b (n h w) c"
        out = self.render_rays(scene, rearrange(origins, flat), rearrange(dirs, flat), background)
        s = out["weights"].shape[-1]
        grads = rearrange(F.normalize(out["sdf_gradients"], dim=-1), "b (q s) c -> b q s c", s=s)
        normals = (out["weights"][..., None] * grads).sum(dim=-2)  # (B, Q, 3)
        return {"images": rearrange(out["rgb"], "b (n h w) c -> b n c h w", n=n, h=height),
                "opacity": rearrange(out["opacity"], "b (n h w) -> b n 1 h w", n=n, h=height),
                "depth": rearrange(out["depth"], "b (n h w) -> b n 1 h w", n=n, h=height),
                "normals": rearrange(normals, "b (n h w) c -> b n c h w", n=n, h=height)}

    @torch.no_grad()
    def sdf(self, scene: Scene, points: torch.Tensor) -> torch.Tensor:
        """Signed distance at points (N, 3) of a one-object scene → (N,) (negative inside)."""
        return self.sdf_fn(scene)(points[None])[0][0]

    def colour(self, scene: Scene, points: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] at surface points (N, 3) of a one-object scene, seen from outside along the normal."""
        with torch.enable_grad():
            p = points[None].detach().requires_grad_(True)
            sdf, feats = self.sdf_fn(scene)(p)
            normals = torch.autograd.grad(sdf.sum(), p)[0]
        view = -F.normalize(normals, dim=-1)  # looking at the surface head-on
        with torch.no_grad():
            rgb = self.colour_fn(scene)(p.detach(), view, normals, feats.detach())
        return rgb[0].clamp(0, 1)
