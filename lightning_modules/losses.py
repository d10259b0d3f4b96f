"""Losses shared by the models: perceptual (LPIPS-VGG) with weights from local files, triplane TV; LR schedules.

PSNR is a metric, not a loss: ``lightning_modules.metrics`` (the only PSNR)."""

from __future__ import annotations

import logging
import math
import os
from typing import Optional

import torch
from torch import nn

log = logging.getLogger(__name__)


class LPIPSLoss(nn.Module):
    """LPIPS (Zhang et al. 2018) with the VGG-16 backbone, as the LRM uses it; inputs in [0, 1].

    ``vgg_weights``: a local torchvision VGG-16 state dict (``vgg16-397923af.pth``: keys ``features.N.weight``) or a
    full LPIPS state dict; the LPIPS linear heads ship inside the ``lpips`` wheel. Without a file the backbone keeps
    random weights (``pretrained_backbone: false`` is how tests say so); a run that asks for the pretrained backbone
    without a file fails with the fix in the message, because a random backbone is not a perceptual loss.
    """

    def __init__(self, vgg_weights: Optional[str] = None, pretrained_backbone: bool = True):
        super().__init__()
        import lpips  # heavy import, only where the loss is used

        self.net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False, eval_mode=False)
        if vgg_weights:
            self._load(vgg_weights)
        elif pretrained_backbone:
            raise FileNotFoundError("LPIPS needs the VGG-16 backbone weights: set loss lpips_weights to a local copy "
                                    "of torchvision's vgg16-397923af.pth (https://download.pytorch.org/models/), or "
                                    "lpips_pretrained: false to train with a random backbone (tests, smoke runs)")
        self.net.requires_grad_(False)
        # LPIPS' only mode-dependent layers are the dropouts before its linear heads (off in LPIPS as published): as
        # identities, the frozen network computes the same in train and eval mode and follows its parent's mode
        # (a module held in eval mode is what Lightning warns about at the start of training)
        for seq in [m for m in self.net.modules() if isinstance(m, nn.Sequential)]:
            for idx, layer in list(seq.named_children()):
                if isinstance(layer, nn.Dropout):
                    seq[int(idx)] = nn.Identity()
        mode_dependent = [n for n, m in self.net.named_modules()
                          if isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm))]
        if mode_dependent:
            raise RuntimeError(f"this lpips version has layers that behave differently in train mode: "
                               f"{mode_dependent}; LPIPSLoss must turn them into identities")

    def _load(self, path: str) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"LPIPS weights {path!r} do not exist: point lpips_weights at torchvision's "
                                    "vgg16-397923af.pth or an LPIPS state dict")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if any(k.startswith("features.") for k in state):  # torchvision VGG-16 → the five LPIPS slices
            slices = self.net.net
            for name, module in slices.named_children():
                for idx, layer in module.named_children():
                    if hasattr(layer, "weight"):
                        layer.weight.data.copy_(state[f"features.{idx}.weight"])
                        layer.bias.data.copy_(state[f"features.{idx}.bias"])
        else:
            missing, unexpected = self.net.load_state_dict(state, strict=False)
            if unexpected or [k for k in missing if k.startswith("net.")]:
                raise ValueError(f"{path!r} is not a VGG-16 or LPIPS state dict (missing {missing[:3]}, unexpected "
                                 f"{unexpected[:3]})")

    def distance(self, pred: torch.Tensor, target: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        """LPIPS per image of (…, 3, H, W) images in [0, 1]: shape (N, 1, 1, 1) with N the flattened leading dims,
        or with ``spatial`` the per-pixel map (N, 1, H, W) (each layer's distance upsampled bilinearly to H × W and
        summed, lpips' ``spatial=True``), whose spatial mean is the per-image value (exactly when H and W are
        divisible by 16, VGG's pooling steps; closely otherwise)."""
        pred, target = pred.flatten(0, -4), target.flatten(0, -4)
        if pred.device.type == "cpu":
            # rendered views arrive with channels-last strides (a view of the renderer's (…, H·W, 3)); VGG's CPU
            # convolutions run 1.5× faster in the contiguous (N, C, H, W) layout (BENCHMARKS.md, peer benchmark)
            pred, target = pred.contiguous(), target.contiguous()
        self.net.spatial = spatial  # lpips reads this flag in forward; it has no per-call argument
        try:
            return self.net(pred * 2 - 1, target * 2 - 1)
        finally:
            self.net.spatial = False

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS of (…, 3, H, W) images in [0, 1]."""
        return self.distance(pred, target).mean()


def triplane_tv(planes: torch.Tensor) -> torch.Tensor:
    """Total variation of (B, 3, F, P, P) planes: mean squared difference of neighbouring texels."""
    dx = planes[..., 1:, :] - planes[..., :-1, :]
    dy = planes[..., :, 1:] - planes[..., :, :-1]
    return dx.pow(2).mean() + dy.pow(2).mean()


def cosine_with_warmup(step: int, warmup: int, total: int, final_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up from 0 over ``warmup`` steps, then cosine to ``final_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def step_decay_with_warmup(step: int, warmup: int, decay_steps: int, gamma: float) -> float:
    """LR multiplier: linear warm-up from 0 over ``warmup`` steps, then × ``gamma`` every ``decay_steps`` steps
    (counted from the end of warm-up; ``decay_steps`` 0 = constant)."""
    if step < warmup:
        return (step + 1) / warmup
    return gamma ** ((step - warmup) // decay_steps) if decay_steps else 1.0
