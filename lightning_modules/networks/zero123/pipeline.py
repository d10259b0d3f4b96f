"""Zero123 / Zero123-XL novel-view prediction on diffusers' building blocks, weights from a local directory.

A view-conditioned diffusion model (Liu et al., ICCV 2023): one image of an object and a relative camera in, the
object seen from that camera out. ``render_farm.zero123`` runs it over render shards (the One-2-3-45 training
data); ``lightning_modules.one2345_inference`` runs it on a single input image.

Legend (real Zero123 / the tiny test pipeline)
    N   (image, relative camera) pairs in one UNet call (``batch_size``; doubled for classifier-free guidance)
    S   image side of the model = UNet ``sample_size`` × VAE scale factor (256 / 64)
    s   latent side S / f, f = 2^(len(vae.block_out_channels) - 1) (32 / 16)
    E   CLIP image-embedding size (``projection_dim``; 768 / 32); D: UNet ``cross_attention_dim`` (768 / 32)

Pipeline (one denoising run of N pairs)::

    cond image (N,S,S,3) over white ─┬─ CLIPImageProcessor → CLIPVisionModelWithProjection → image_embeds (N,1,E)
                                     │                   ⊕ [Δθ, sin Δφ, cos Δφ, Δr] (N,1,4)
                                     │                   → cc_projection Linear(E+4 → D) → encoder_hidden_states (N,1,D)
                                     └─ ×2 − 1 → VAE encode → latent_dist.mode() (N,4,s,s), *unscaled* (as Zero123)
    noise x_T (N,4,s,s), one torch.Generator per pair ─ DDIM loop:
        UNet([x_t ⊕ image latent] (N,8,s,s), t, hidden states) → ε
        guidance w > 1: the batch is [uncond; cond] (2N): uncond = zero hidden states and zero image latents;
                        ε = ε_u + w (ε_c − ε_u).  w ≤ 1: the conditional branch only.
    x_0 / vae.scaling_factor → VAE decode → (x + 1) / 2 clamped → RGB (N,S,S,3) in [0, 1]

Conventions: the relative camera comes from ``geometry.cameras.zero123_relative_camera`` (camera centres in
spherical coordinates about the origin, +Z up). Every pair has its own generator, so results do not depend on how
pairs are batched. Defaults follow Zero123: guidance 3.0, DDIM 50 steps, η = 1.0.
"""

from __future__ import annotations

import os
from typing import TypeVar

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from lightning_modules.networks.zero123.cc_projection import CCProjection

#: subfolder → what it must hold (a diffusers Zero123 checkpoint, e.g. kxic/zero123-xl-diffusers)
COMPONENTS = {
    "unet": "UNet2DConditionModel (config.json + weights), 8 input channels",
    "vae": "AutoencoderKL (config.json + weights)",
    "image_encoder": "transformers CLIPVisionModelWithProjection (config.json + weights)",
    "feature_extractor": "transformers CLIPImageProcessor (preprocessor_config.json)",
    "scheduler": "DDIMScheduler (scheduler_config.json)",
    "cc_projection": "CCProjection (config.json + weights: a Linear 'projection', CLIP size + 4 → UNet "
                     "cross-attention)",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class WeightsError(Exception):
    """The weights directory is missing or not laid out as a diffusers Zero123 checkpoint."""


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
    return torch.device(device)


def check_weights_dir(path: str) -> None:
    """Raises :class:`WeightsError` naming the path and what is expected when the layout is wrong."""
    if not os.path.isdir(path):
        raise WeightsError(f"Zero123 weights directory not found: {path!r}. Expected a local diffusers Zero123 "
                           f"checkpoint (e.g. a download of kxic/zero123-xl-diffusers) with subfolders "
                           f"{', '.join(f'{k}/' for k in COMPONENTS)}.")
    missing = [k for k in COMPONENTS if not os.path.isdir(os.path.join(path, k))]
    if missing:
        raise WeightsError(f"Zero123 weights directory {path!r} lacks " + "; ".join(
            f"{os.path.join(path, k)}/ ({COMPONENTS[k]})" for k in missing))


_M = TypeVar("_M", bound=torch.nn.Module)


def _place(module: _M, device: torch.device, dtype: torch.dtype) -> _M:
    if any(p.dtype != dtype for p in module.parameters()):
        module = module.to(dtype=dtype)
    return module.to(device).eval()


class Zero123Pipeline:
    """Zero123 novel-view prediction from diffusers components; many (image, relative camera) pairs per call."""

    def __init__(self, vae: AutoencoderKL, image_encoder, feature_extractor, unet: UNet2DConditionModel,
                 scheduler: DDIMScheduler, cc_projection: CCProjection, device: str | torch.device = "auto",
                 dtype: str | torch.dtype = "float32"):
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.vae = _place(vae, self.device, self.dtype)
        self.image_encoder = _place(image_encoder, self.device, self.dtype)
        self.unet = _place(unet, self.device, self.dtype)
        self.cc_projection = _place(cc_projection, self.device, self.dtype)
        self.feature_extractor, self.scheduler = feature_extractor, scheduler
        if unet.config.in_channels != 2 * vae.config.latent_channels:
            raise ValueError(f"Zero123's UNet takes the noisy latents and the image latents on channels: "
                             f"in_channels must be {2 * vae.config.latent_channels}, got {unet.config.in_channels}")
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_size = int(unet.config.sample_size) * self.vae_scale_factor

    @classmethod
    def from_pretrained(cls, path: str, device: str = "auto", dtype: str = "float32") -> "Zero123Pipeline":
        """Load each component from its subfolder of a local directory (never the hub, never model_index.json's
        community pipeline module)."""
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        check_weights_dir(path)
        torch_dtype = DTYPES[dtype]
        kw = {"local_files_only": True}
        dkw = dict(kw, low_cpu_mem_usage=False)  # no `accelerate` needed (it is not a dependency)
        try:
            parts = {
                "unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype, **dkw),
                "vae": AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype, **dkw),
                "image_encoder": CLIPVisionModelWithProjection.from_pretrained(
                    path, subfolder="image_encoder", torch_dtype=torch_dtype, **kw),
                "feature_extractor": CLIPImageProcessor.from_pretrained(path, subfolder="feature_extractor", **kw),
                "scheduler": DDIMScheduler.from_pretrained(path, subfolder="scheduler", **kw),
                "cc_projection": CCProjection.from_pretrained(path, subfolder="cc_projection",
                                                              torch_dtype=torch_dtype, **dkw),
            }
        except (OSError, ValueError) as exc:
            raise WeightsError(f"cannot load the Zero123 checkpoint in {path!r}: {exc}") from exc
        return cls(**parts, device=device, dtype=dtype)

    # --- conditioning ---------------------------------------------------------------------------------------
    def _to_float_images(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be RGB (N, H, W, 3), got shape {images.shape}")
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"images must be the model's size {self.image_size}×{self.image_size}, got "
                             f"{images.shape[1]}×{images.shape[2]} (resize them first)")
        if images.dtype == np.uint8:
            return images.astype(np.float32) / 255.0
        return np.clip(images.astype(np.float32), 0.0, 1.0)

    @torch.no_grad()
    def encode_condition(self, images: np.ndarray, cameras: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder_hidden_states (N,1,D), unscaled image latents (N,4,s,s)) of float RGB images in [0, 1]."""
        pixels = self.feature_extractor(images=list(images), do_rescale=False, return_tensors="pt").pixel_values
        embeds = self.image_encoder(pixels.to(self.device, self.dtype)).image_embeds[:, None]  # (N,1,E)
        cam = torch.as_tensor(np.asarray(cameras, np.float32), device=self.device, dtype=self.dtype)[:, None]
        hidden = self.cc_projection(torch.cat([embeds, cam], dim=-1))  # (N,1,E+4) → (N,1,D)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).to(self.device, self.dtype) * 2.0 - 1.0  # (N,3,S,S)
        latents = self.vae.encode(x).latent_dist.mode()  # (N,4,s,s); Zero123 does not scale c_concat
        return hidden, latents

    # --- sampling -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, images, relative_cameras, seeds, num_inference_steps: int = 50, guidance_scale: float = 3.0,
                 eta: float = 1.0, batch_size: int = 32) -> np.ndarray:
        """Predict the view of each pair. ``images``: (N,S,S,3) RGB over white, float [0,1] or uint8;
        ``relative_cameras``: (N,4) rows [Δθ, sin Δφ, cos Δφ, Δr] (see :func:`zero123_condition`) or (N,3)
        rows (Δθ, Δφ, Δr) in radians; ``seeds``: one generator seed per pair. Returns (N,S,S,3) float32 in [0,1].
        """
        images = self._to_float_images(images)
        cams = np.asarray(relative_cameras, np.float64).reshape(len(images), -1)
        if cams.shape[1] == 3:
            cams = zero123_condition(cams[:, 0], cams[:, 1], cams[:, 2])
        if cams.shape[1] != 4 or len(seeds) != len(images):
            raise ValueError(f"{len(images)} images need {len(images)} relative cameras of 3 or 4 numbers and "
                             f"{len(images)} seeds; got cameras {cams.shape} and {len(seeds)} seeds")
        if num_inference_steps < 1 or batch_size < 1:
            raise ValueError(f"num_inference_steps ({num_inference_steps}) and batch_size ({batch_size}) must be ≥ 1")
        out = [self._sample(images[i:i + batch_size], cams[i:i + batch_size], seeds[i:i + batch_size],
                            num_inference_steps, guidance_scale, eta) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.image_size, self.image_size, 3), np.float32)

    def _sample(self, images, cams, seeds, steps, guidance_scale, eta) -> np.ndarray:
        n = len(images)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        hidden, image_latents = self.encode_condition(images, cams)
        guided = guidance_scale > 1.0
        if guided:  # [uncond; cond]: zero cross-attention states and zero image latents (Zero123's uc)
            hidden = torch.cat([torch.zeros_like(hidden), hidden])
            image_latents = torch.cat([torch.zeros_like(image_latents), image_latents])
        s = self.image_size // self.vae_scale_factor
        latents = randn_tensor((n, self.vae.config.latent_channels, s, s), generator=generators, device=self.device,
                               dtype=self.dtype) * self.scheduler.init_noise_sigma  # x_T (N,4,s,s)
        self.scheduler.set_timesteps(steps, device=self.device)
        for t in self.scheduler.timesteps:
            x = torch.cat([latents] * 2) if guided else latents
            x = torch.cat([self.scheduler.scale_model_input(x, t), image_latents], dim=1)  # (N or 2N, 8, s, s)
            eps = self.unet(x, t, encoder_hidden_states=hidden).sample
            if guided:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            latents = self.scheduler.step(eps, t, latents, eta=eta, generator=generators).prev_sample
        rgb = self.vae.decode(latents / self.vae.config.scaling_factor).sample  # (N,3,S,S) in [-1,1]
        return ((rgb.float() / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).cpu().numpy()


def zero123_condition(d_theta, d_azimuth, d_radius) -> np.ndarray:
    """Zero123's conditioning rows [Δθ, sin Δφ, cos Δφ, Δr] (radians) of relative cameras, (N, 4) float32."""
    d_theta, d_azimuth, d_radius = (np.atleast_1d(np.asarray(v, np.float64)) for v in (d_theta, d_azimuth, d_radius))
    return np.stack([d_theta, np.sin(d_azimuth), np.cos(d_azimuth), d_radius], axis=-1).astype(np.float32)
