"""The LRM (Hong et al., ICLR 2024): one image → triplane NeRF.

Legend:  B batch · N supervision views · H×W rendered size · L image tokens · F triplane channels · P plane size

    image (B, 3, 512, 512) ─► DinoEncoder ─► tokens (B, L, 768)  ┐
    source camera (canonical c2w, K) ─► features (B, 20) ─► MLP ─► c (B, 1024)
                                                                 ├─► TriplaneTransformer ─► planes (B, 3, F, P, P)
    planes + target cameras (B, N, 4, 4), (B, N, 3, 3) ─► rays ─► TriplaneField + VolumeRenderer
                                                           ─► images (B, N, 3, H, W), opacity, depth (B, N, 1, H, W)

Cameras enter in the canonical frame of ``geometry.rays.canonicalize_cameras`` (the source camera at
``camera_distance`` on −Y looking at the origin); the LightningModule moves a batch there. Each block's options are a
typed config (``lightning_modules.networks.lrm.config``; a block of ``configs/model/lrm_*.yaml``); the defaults are the
paper's.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from geometry.rays import camera_rays
from lightning_modules.networks.config import Options
from lightning_modules.networks.lrm.config import EncoderConfig, FieldConfig, RendererConfig, TransformerConfig
from lightning_modules.networks.lrm.transformer import CameraEmbedder, camera_features


class LRM(nn.Module):
    def __init__(self, encoder: EncoderConfig | Options = EncoderConfig(),
                 transformer: TransformerConfig | Options = TransformerConfig(),
                 field: FieldConfig | Options = FieldConfig(), renderer: RendererConfig | Options = RendererConfig(),
                 camera_dim: int = 1024):
        super().__init__()
        # a block may also come as plain options (a checkpoint's hparams, a test), checked as a YAML's are
        encoder = EncoderConfig.of(encoder, "encoder", "LRM")
        transformer = TransformerConfig.of(transformer, "transformer", "LRM")
        field = FieldConfig.of(field, "field", "LRM")
        renderer = RendererConfig.of(renderer, "renderer", "LRM")
        self.encoder = encoder.build()
        self.camera_embedder = CameraEmbedder(camera_dim)
        self.transformer = transformer.build(image_dim=self.encoder.dim, cond_dim=camera_dim)
        self.field = field.build(triplane_dim=self.transformer.upsample.out_channels)
        self.renderer = renderer.build(bound=self.field.bound)

    def forward(self, image: torch.Tensor, source_c2w: torch.Tensor, source_K: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1], canonical source camera → planes (B, 3, F, P, P)."""
        tokens = self.encoder(image)  # (B, L, E)
        cam = self.camera_embedder(camera_features(source_c2w, source_K, *image.shape[-2:]))  # (B, C)
        return self.transformer(tokens, cam)

    def render(self, planes: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, height: int, width: int,
               background: torch.Tensor, stratified: bool = False) -> dict[str, torch.Tensor]:
        """Views (B, N) of the planes: ``images`` (B, N, 3, H, W), ``opacity`` and ``depth`` (B, N, 1, H, W)."""
        n = c2w.shape[1]
        origins, dirs = camera_rays(c2w.float(), K.float(), height, width)  # (B, N, H, W, 3)
        flat = "b n h w c -> b (n h w) c"
        out = self.renderer(lambda pts: self.field(planes, pts), rearrange(origins, flat), rearrange(dirs, flat),
                            background, stratified=stratified,
                            bytes_per_point=self.field.training_bytes_per_point())
        return {"images": rearrange(out["rgb"], "b (n h w) c -> b n c h w", n=n, h=height),
                "opacity": rearrange(out["opacity"], "b (n h w) -> b n 1 h w", n=n, h=height),
                "depth": rearrange(out["depth"], "b (n h w) -> b n 1 h w", n=n, h=height)}

    @torch.no_grad()
    def density(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """σ at points (N, 3) of one object's planes (1, 3, F, P, P) → (N,)."""
        return self.field(planes, points[None])[0][0]

    @torch.no_grad()
    def colour(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] at points (N, 3) of one object's planes → (N, 3)."""
        return self.field(planes, points[None])[1][0].clamp(0, 1)
