"""Appearance metrics of rendered views against ground-truth views: PSNR, SSIM, LPIPS (VGG), CLIP similarity.

The project's only PSNR: :func:`psnr` per image and :func:`mean_psnr` (per image, then averaged), which both the
training logs (``train/psnr``, ``val/psnr``) and ``lift3d evaluate`` use, so the same views give the same number.

Legend: B images, 3 RGB channels, H × W pixels. Images are float tensors (B, 3, H, W) in [0, 1] (data range 1);
masks are (B, 1, H, W) in [0, 1], foreground where mask > 0.5. Every metric returns one value per image, a (B,)
float32 tensor, so callers can average over views and objects as they like.

Masked variants average over foreground pixels only. An image whose mask has no foreground gets NaN for its masked
metrics (the quantity is undefined there; average with ``torch.nanmean`` or drop such views).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.losses import LPIPSLoss

log = logging.getLogger(__name__)

MSE_FLOOR = 1e-10  # PSNR of identical images: 10 · log10(1 / MSE_FLOOR) = 100 dB
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5  # Gaussian window 11 × 11 (skimage: truncate 3.5 → radius int(3.5·1.5 + 0.5) = 5)
SSIM_K1, SSIM_K2 = 0.01, 0.03
CLIP_SKIP_MESSAGE = ("CLIP similarity skipped: no local CLIP weights (set clip_weights to a directory saved by "
                     "transformers' CLIPModel.save_pretrained, e.g. openai/clip-vit-base-patch32)")


def _check(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
    if pred.ndim != 4 or pred.shape[1] != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must be RGB images of the same shape (B, 3, H, W), got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if mask is not None:
        b, _, h, w = pred.shape
        if tuple(mask.shape) != (b, 1, h, w):
            raise ValueError(f"mask must have shape (B, 1, H, W) = {(b, 1, h, w)} (foreground where > 0.5), got "
                             f"{tuple(mask.shape)}")


def _foreground_mean(values: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """(B,) mean of ``values`` (B, C, h, w) over the pixels where ``fg`` (B, 1, h, w) is 1; NaN where there are none."""
    fg = fg.expand_as(values)
    return (values * fg).sum((1, 2, 3)) / fg.sum((1, 2, 3))  # 0 / 0 → NaN for an empty mask


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B,) PSNR in dB, data range 1: ``−10 · log10(MSE)``, MSE over all pixels and channels, or with ``mask`` over
    the foreground pixels only (all 3 channels); MSE is clamped at 1e-10 (identical images: 100 dB)."""
    _check(pred, target, mask)
    err = (pred.double() - target.double()) ** 2
    mse = err.mean((1, 2, 3)) if mask is None else _foreground_mean(err, (mask > 0.5).double())
    return (-10.0 * torch.log10(mse.clamp(min=MSE_FLOOR))).float()


def mean_psnr(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scalar PSNR of a set of images as the evaluation literature reports it: :func:`psnr` per image, then the mean
    over the images (an image whose mask has no foreground has no masked PSNR and is left out). ``pred`` and
    ``target`` are (..., 3, H, W), ``mask`` (..., 1, H, W); the leading dims (objects, views) are flattened into
    images. Training logs this as ``psnr``; ``lift3d evaluate`` averages the same per-image values over each object's
    views, then over objects (the same number when the objects have as many views each)."""
    def images(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(0, -4)

    return torch.nanmean(psnr(images(pred), images(target), None if mask is None else images(mask)))


def _gaussian_window(device) -> torch.Tensor:
    """(11,) float64 Gaussian taps, sigma 1.5, normalised to sum 1 (as scipy.ndimage.gaussian_filter builds them)."""
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * x ** 2 / SSIM_SIGMA ** 2)
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of (B, C, H, W) per channel, 'valid' only: (B, C, H − 10, W − 10)."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B,) SSIM (Wang et al. 2004): Gaussian window 11 × 11, sigma 1.5, K1 0.01, K2 0.03, data range 1, population
    (co)variances; the SSIM map per channel, averaged over channels and pixels.

    Without a mask this equals ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)``: the mean excludes a 5-pixel border (where the
    window would leave the image), as skimage crops it.

    With a mask: the mean of the SSIM map over foreground pixels (same 5-pixel border excluded), where each pixel's
    local means, variances and covariance are Gaussian-weighted over the foreground pixels of its window only
    (normalised convolution). So background never leaks into the score: an image identical to the target on the
    foreground scores 1 whatever its background, and an all-foreground mask gives the unmasked value.
    """
    _check(pred, target, mask)
    b, _, h, w = pred.shape
    if min(h, w) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least {2 * SSIM_RADIUS + 1}×{2 * SSIM_RADIUS + 1} pixels (its "
                         f"Gaussian window), got {h}×{w}")
    x, y = pred.double(), target.double()
    g = _gaussian_window(x.device)
    if mask is None:
        weight = torch.ones(b, 1, h, w, dtype=torch.float64, device=x.device)
    else:
        weight = (mask > 0.5).double()
    norm = _filter(weight, g).clamp(min=1e-12)  # (B, 1, h', w'): the foreground weight of each window

    def local_mean(v: torch.Tensor) -> torch.Tensor:
        return _filter(v * weight, g) / norm

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x ** 2
    var_y = local_mean(y * y) - mu_y ** 2
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2  # data range 1
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    r = SSIM_RADIUS
    if mask is None:
        return ssim_map.mean((1, 2, 3)).float()
    return _foreground_mean(ssim_map, weight[..., r:h - r, r:w - r]).float()


class LPIPSMetric(nn.Module):
    """(B,) LPIPS (VGG backbone) per image, reusing :class:`lightning_modules.losses.LPIPSLoss` and its weight loading.

    Build it from ``vgg_weights`` (a local torchvision ``vgg16-397923af.pth`` or LPIPS state dict) or
    ``pretrained_backbone=False`` (random backbone: tests), or hand it an existing ``loss`` (e.g. a training module's
    ``LPIPSLoss``) to share its network.

    Masked LPIPS is the mean over foreground pixels of LPIPS' spatial map (each VGG layer's distance upsampled to the
    image, summed over layers; its mean over all pixels is the unmasked value). Deep VGG features see most of the
    image, so background differences still bleed into the foreground map: the masked value down-weights the
    background, it does not ignore it.
    """

    def __init__(self, vgg_weights: Optional[str] = None, pretrained_backbone: bool = True,
                 loss: Optional[LPIPSLoss] = None):
        super().__init__()
        self.loss = loss if loss is not None else LPIPSLoss(vgg_weights, pretrained_backbone)

    @torch.no_grad()
    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        _check(pred, target, mask)
        pred, target = pred.float(), target.float()
        if mask is None:
            return self.loss.distance(pred, target).flatten().float()
        spatial = self.loss.distance(pred, target, spatial=True)  # (B, 1, H, W)
        return _foreground_mean(spatial, (mask > 0.5).to(spatial.dtype)).float()


class CLIPSimilarity:
    """(B,) cosine similarity of CLIP image embeddings of two image batches (the "CLIP similarity" single-image-to-3D
    papers report between renders and reference views), with transformers' ``CLIPModel`` and ``CLIPImageProcessor``
    loaded only from a local directory.

    Images are quantised to 8 bits (as saved renders are) and preprocessed by the processor saved with the model
    (resize, centre crop, CLIP normalisation).
    """

    def __init__(self, model, processor):
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_path(cls, path: Optional[str]) -> Optional["CLIPSimilarity"]:
        """Load from a directory written by ``CLIPModel.save_pretrained`` and ``CLIPImageProcessor.save_pretrained``
        (``local_files_only``: nothing is downloaded). ``None`` → returns None and logs that CLIP is skipped."""
        if path is None:
            log.warning(CLIP_SKIP_MESSAGE)
            return None
        path = os.fspath(path)
        fix = ("save one with transformers: CLIPModel.from_pretrained('openai/clip-vit-base-patch32')"
               ".save_pretrained(DIR) and CLIPImageProcessor.from_pretrained(...).save_pretrained(DIR), then set "
               "clip_weights to DIR")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"CLIP weights directory {path!r} does not exist; {fix}")
        for name in ("config.json", "preprocessor_config.json"):
            if not os.path.isfile(os.path.join(path, name)):
                raise FileNotFoundError(f"CLIP weights directory {path!r} has no {name}, so it was not saved by "
                                        f"save_pretrained; {fix}")
        from transformers import CLIPImageProcessor, CLIPModel  # heavy import, only when CLIP is used

        model = CLIPModel.from_pretrained(path, local_files_only=True)
        processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        return cls(model, processor)

    @torch.no_grad()
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) unit CLIP image embeddings of (N, 3, H, W) images in [0, 1]."""
        uint8 = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        arrays = list(uint8.permute(0, 2, 3, 1).cpu().numpy())  # N × (H, W, 3), as PIL would give them
        pixels = self.processor(images=arrays, return_tensors="pt")["pixel_values"]
        param = next(self.model.parameters())
        out = self.model.get_image_features(pixel_values=pixels.to(device=param.device, dtype=param.dtype))
        features = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output
        return F.normalize(features.float(), dim=-1)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(pred, target)
        features = self._embed(torch.cat([pred, target]))  # one batch: both sides go through the same path
        a, b = features.chunk(2)
        return (a * b).sum(-1).cpu()


def image_metrics(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor],
                  lpips: Optional[LPIPSMetric] = None, clip: Optional[CLIPSimilarity] = None) -> dict:
    """Per-image (B,) metrics: ``psnr``, ``ssim``, and with a mask ``psnr_masked``, ``ssim_masked``; ``lpips`` and
    ``lpips_masked`` (the latter with a mask) when ``lpips`` is given; ``clip`` when ``clip`` is given."""
    _check(pred, target, mask)
    out = {"psnr": psnr(pred, target), "ssim": ssim(pred, target)}
    if mask is not None:
        out["psnr_masked"] = psnr(pred, target, mask)
        out["ssim_masked"] = ssim(pred, target, mask)
    if lpips is not None:
        out["lpips"] = lpips(pred, target)
        if mask is not None:
            out["lpips_masked"] = lpips(pred, target, mask)
    if clip is not None:
        out["clip"] = clip(pred, target)
    return out
