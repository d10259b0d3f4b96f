"""Image encoder of the LRM: a timm DINO ViT (ViT-B/16, ``vit_base_patch16_224.dino``) at 512² input.

    image (B, 3, H, W) in [0, 1]  →  ImageNet normalisation  →  ViT  →  tokens (B, 1 + (H/16)·(W/16), D)

With ``img_size: 512`` the 14×14 positional embedding is interpolated to 32×32 (timm does it when it loads weights),
giving 1024 patch tokens + CLS of width D = 768. Weights come from a local checkpoint (``checkpoint_path``: a timm /
PyTorch state dict, ``.pth``/``.bin``/``.safetensors``), from the hub (``pretrained: true``, when reachable), or are
random (``pretrained: false``, tests and tiny configs). ``overrides`` change the architecture (e.g. depth, embed_dim of
a tiny model) and ``freeze`` stops its gradients.
"""

from __future__ import annotations

import os
from typing import Optional, cast

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoEncoder(nn.Module):
    vit: VisionTransformer  # timm's factory is typed as returning any Module; the DINO names build a ViT
    mean: torch.Tensor  # (1, 3, 1, 1) ImageNet normalisation buffers
    std: torch.Tensor

    def __init__(self, model_name: str = "vit_base_patch16_224.dino", img_size: int = 512, pretrained: bool = False,
                 checkpoint_path: Optional[str] = None, freeze: bool = False, overrides: Optional[dict] = None,
                 grad_checkpointing: bool = False):
        super().__init__()
        kwargs = dict(img_size=img_size, num_classes=0, **(overrides or {}))
        if checkpoint_path:
            if not os.path.isfile(checkpoint_path):
                raise FileNotFoundError(f"encoder checkpoint_path {checkpoint_path!r} does not exist: point it at the "
                                        f"{model_name} weights (a timm/PyTorch state dict), or set pretrained: false")
            kwargs["pretrained_cfg_overlay"] = dict(file=os.path.abspath(checkpoint_path))
        try:
            self.vit = cast(VisionTransformer,
                            timm.create_model(model_name, pretrained=bool(pretrained or checkpoint_path), **kwargs))
        except Exception as exc:  # timm raises many kinds (hub offline, bad name, shape mismatch)
            where = checkpoint_path or "the Hugging Face hub"
            raise RuntimeError(f"could not build encoder {model_name!r} with weights from {where}: {exc}. Offline, "
                               "set encoder.checkpoint_path to a local state dict, or pretrained: false for random "
                               "weights") from exc
        self.vit.set_grad_checkpointing(grad_checkpointing)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.img_size, self.frozen = img_size, freeze
        self.dim = self.vit.num_features
        self.patch = self.vit.patch_embed.patch_size[0]
        if freeze:
            self.vit.requires_grad_(False)
            self.vit.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.vit.eval()  # a frozen encoder keeps eval-mode behaviour (dropout off) while the rest trains
        return self

    @property
    def num_tokens(self) -> int:
        return 1 + (self.img_size // self.patch) ** 2

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] → tokens (B, 1 + h·w, D), CLS first."""
        if image.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"encoder expects {self.img_size}² images, got {tuple(image.shape[-2:])}: set the data "
                             f"config's input_size to {self.img_size} (or the encoder's img_size to the data's)")
        x = (image - self.mean) / self.std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.vit.forward_features(x)
