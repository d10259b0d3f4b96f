"""The Zero123 prediction pass of One-2-3-45: render shards (``one2345`` rig) → shards with 32 predicted views.

For every object, a view-conditioned diffusion model (Zero123 / Zero123-XL on diffusers' building blocks, weights
from a local directory) predicts each ground-truth view's 4 neighbours (±10° elevation/azimuth) from that view and
the relative camera. The new sample holds the object's 40 original views byte-for-byte plus the 32 predictions.

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

Pass (one task of ``lift3d-render zero123``)::

    input shards sorted[task::count] ─ per object: meta.json (view_roles, neighbours_of), cameras.npz, PNGs
      ─ gt g = 0..7, its neighbours n in neighbours_of[g] order: cond = rgba[g] over white resized to S²,
        camera = zero123_relative_camera(c2w[g], c2w[n]), seed = view_seed(seed, key, n)
      ─ ShardWriter(out, task): original members byte-for-byte, views 40..71 = predictions (RGBA with alpha 255,
        depth all 0), cameras of the neighbours, meta.json + predictions_of / zero123 / predicted_views

Conventions: Zero123's relative camera comes from ``geometry.cameras.zero123_relative_camera`` (camera centres in
spherical coordinates about the origin, +Z up). Batches never span objects and every pair has its own generator,
so a resumed run writes the same bytes as an uninterrupted one. Defaults follow Zero123: guidance 3.0, DDIM
50 steps, η = 1.0 (Zero123's and One-2-3-45's samplers).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import pickle
import sys
import tarfile
import time
import traceback
import zipfile
from dataclasses import dataclass, field

import cv2
import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.torch_utils import randn_tensor

from geometry.cameras import zero123_relative_camera
from geometry.image import resize
from render_farm.shards import FORMAT, ShardWriter, encode_cameras, encode_png
from render_farm.tasks import report_task, resolve_task, task_slice

#: subfolder → what it must hold (a diffusers Zero123 checkpoint, e.g. kxic/zero123-xl-diffusers)
COMPONENTS = {
    "unet": "UNet2DConditionModel (config.json + weights), 8 input channels",
    "vae": "AutoencoderKL (config.json + weights)",
    "image_encoder": "transformers CLIPVisionModelWithProjection (config.json + weights)",
    "feature_extractor": "transformers CLIPImageProcessor (preprocessor_config.json)",
    "scheduler": "DDIMScheduler (scheduler_config.json)",
    "cc_projection": "CCProjection (config.json + weights: a Linear 'projection', CLIP size + 4 → UNet cross-attention)",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PRED_ROLE = "zero123_pred"
NEIGHBOUR_ROLE = "gt_neighbor"


class WeightsError(Exception):
    """The weights directory is missing or not laid out as a diffusers Zero123 checkpoint."""


class SampleError(Exception):
    """An input sample that cannot be predicted (recorded in the failure manifest; the run goes on)."""


# ------------------------------------------------------------------------------------------------- the pipeline
class CCProjection(ModelMixin, ConfigMixin):
    """Zero123's camera-conditioning projection: [CLIP embedding ⊕ relative camera] → cross-attention states.

    Same config keys and parameter names (``projection.weight``/``projection.bias``) as the ``cc_projection/``
    folder of real diffusers Zero123 checkpoints, so their weights load unchanged.
    """

    @register_to_config
    def __init__(self, in_channel: int = 772, out_channel: int = 768):
        super().__init__()
        self.in_channel, self.out_channel = in_channel, out_channel
        self.projection = torch.nn.Linear(in_channel, out_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
    return torch.device(device)


def view_seed(seed: int, key: str, view: int) -> int:
    """The generator seed of one predicted view: a function of (run seed, object key, view index) only."""
    digest = hashlib.sha256(f"zero123:{seed}:{key}:{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


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


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
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
        self.vae, self.image_encoder, self.unet, self.cc_projection = (
            _place(m, self.device, self.dtype) for m in (vae, image_encoder, unet, cc_projection))
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


# ------------------------------------------------------------------------------------------------ reading shards
def list_shards(patterns: list[str]) -> list[str]:
    """Tar shards named by globs, directories (their ``*.tar``) or files; sorted absolute paths."""
    found = set()
    for pattern in patterns:
        if os.path.isdir(pattern):
            found.update(glob.glob(os.path.join(pattern, "*.tar")))
        elif os.path.isfile(pattern):
            found.add(pattern)
        else:
            found.update(p for p in glob.glob(pattern) if os.path.isfile(p))
    return sorted(os.path.abspath(p) for p in found)


def iter_samples(shard: str):
    """(key, {member suffix: bytes}) per WebDataset sample of a tar (members of a sample are consecutive).

    A tar that cannot be read raises ``tarfile.TarError``/``OSError`` after the samples read before the damage."""
    key, members = None, {}
    with tarfile.open(shard) as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = os.path.basename(info.name)
            k, _, suffix = name.partition(".")
            if k != key and members:
                yield key, members
                members = {}
            key = k
            members[suffix] = tar.extractfile(info).read()
    if members:
        yield key, members


def _read_shard(shard: str, fail):
    """The samples of a shard; damage (after the samples before it) goes to ``fail`` as ``shard:<name>``."""
    try:
        yield from iter_samples(shard)
    except (tarfile.TarError, OSError, EOFError) as exc:
        fail(f"shard:{os.path.basename(shard)}", f"unreadable shard {shard}: {type(exc).__name__}: {exc}",
             traceback.format_exc(), shard=shard)


def _decode_rgba(data: bytes, where: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 3 or img.shape[2] != 4 or img.dtype != np.uint8:
        raise SampleError(f"{where}: not an 8-bit RGBA PNG")
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)


def _parse_object(key: str, members: dict) -> tuple[dict, dict, list[tuple[int, list[int]]]]:
    """(meta, cameras, [(gt view, its neighbour views)]) of a one2345 sample; :class:`SampleError` otherwise."""
    for name in ("meta.json", "cameras.npz"):
        if name not in members:
            raise SampleError(f"member {key}.{name} is missing")
    try:
        meta = json.loads(members["meta.json"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise SampleError(f"{key}.meta.json is not JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SampleError(f"{key}.meta.json: format is not {FORMAT!r}")
    if "predictions_of" in meta:
        raise SampleError("the sample already holds Zero123 predictions (an output of this pass, not a render shard)")
    if "neighbours_of" not in meta:
        rig = meta["render"].get("rig") if isinstance(meta.get("render"), dict) else None
        raise SampleError(f"meta.json has no neighbours_of (rig {rig!r}); the Zero123 pass needs shards rendered "
                          f"with --rig one2345")
    try:
        with np.load(io.BytesIO(members["cameras.npz"]), allow_pickle=False) as npz:
            cams = {k: np.asarray(npz[k]) for k in ("c2w", "K", "hw")}
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise SampleError(f"{key}.cameras.npz is unreadable: {type(exc).__name__}: {exc}") from exc
    roles = meta.get("view_roles", [])
    n = len(roles)
    if meta.get("num_views") != n or cams["c2w"].shape != (n, 4, 4) or cams["K"].shape != (n, 3, 3) \
            or cams["hw"].shape != (n, 2):
        raise SampleError(f"{n} view roles, num_views {meta.get('num_views')}, cameras c2w {cams['c2w'].shape} "
                          f"K {cams['K'].shape} hw {cams['hw'].shape} do not agree")
    pairs = []
    try:
        items = sorted(meta["neighbours_of"].items(), key=lambda kv: int(kv[0]))
    except (AttributeError, TypeError, ValueError) as exc:
        raise SampleError(f"neighbours_of must map gt view indices to lists of views: {exc}") from exc
    for g_str, nbrs in items:
        g = int(g_str)
        if not 0 <= g < n or roles[g] != "gt" or not isinstance(nbrs, list) \
                or not all(isinstance(v, int) and 0 <= v < n for v in nbrs):
            raise SampleError(f"neighbours_of[{g_str}] = {nbrs} does not name a gt view and views within 0..{n - 1}")
        pairs.append((g, list(nbrs)))
    for i in range(n):
        for kind in ("rgba", "depth"):
            if f"{i:03d}.{kind}.png" not in members:
                raise SampleError(f"member {key}.{i:03d}.{kind}.png is missing")
    strays = sorted(k for k in members if k[:3].isdigit() and int(k[:3]) >= n)
    if strays:
        raise SampleError(f"members beyond the {n} views of meta.json: {', '.join(strays[:4])}")
    if n + sum(len(v) for _, v in pairs) > 1000:
        raise SampleError("too many views for format v1 (at most 1000)")
    return meta, cams, pairs


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """``img`` at h × w by lift3d's one resampling rule (``geometry.image.resize``: area when shrinking, bilinear
    when growing), untouched at its size."""
    return resize(img, h, w)


def condition_image(rgba: np.ndarray, size: int) -> np.ndarray:
    """An RGBA view composited over white and resized to size² (float RGB in [0, 1])."""
    rgb, alpha = rgba[..., :3].astype(np.float32) / 255.0, rgba[..., 3:].astype(np.float32) / 255.0
    return np.clip(_resize(rgb * alpha + (1.0 - alpha), size, size), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------- the pass
@dataclass
class PassSettings:
    weights: str
    steps: int = 50
    guidance_scale: float = 3.0
    eta: float = 1.0
    batch_size: int = 32
    seed: int = 0
    dtype: str = "float32"


def predict_object(pipe: Zero123Pipeline, key: str, members: dict, cfg: PassSettings) -> tuple[dict, dict]:
    """(format-v1 sample with the predictions appended, done-list record) of one one2345 render sample."""
    t0 = time.time()
    meta, cams, pairs = _parse_object(key, members)
    n = len(meta["view_roles"])
    size = pipe.image_size
    conds, rel, seeds, targets = {}, [], [], []
    for g, nbrs in pairs:
        if g not in conds:
            conds[g] = condition_image(_decode_rgba(members[f"{g:03d}.rgba.png"], f"{key}.{g:03d}.rgba.png"), size)
        for v in nbrs:
            rel.append(zero123_relative_camera(cams["c2w"][g], cams["c2w"][v]))
            seeds.append(view_seed(cfg.seed, key, n + len(targets)))
            targets.append((g, v))
    images = np.stack([conds[g] for g, _ in targets]) if targets else np.zeros((0, size, size, 3), np.float32)
    rel = np.asarray(rel, np.float64).reshape(-1, 3)
    preds = pipe(images, zero123_condition(rel[:, 0], rel[:, 1], rel[:, 2]), seeds, cfg.steps, cfg.guidance_scale,
                 cfg.eta, cfg.batch_size)

    sample = {"__key__": key}
    sample.update({k: v for k, v in members.items() if k not in ("meta.json", "cameras.npz")})  # byte-for-byte
    predictions_of: dict[str, list[int]] = {}
    for j, ((g, v), pred) in enumerate(zip(targets, preds)):
        idx = n + j
        h, w = (int(x) for x in cams["hw"][v])
        rgb = _resize((np.clip(pred, 0, 1) * 255.0 + 0.5).astype(np.uint8), h, w)
        rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=-1)
        sample[f"{idx:03d}.rgba.png"] = encode_png(rgba)
        sample[f"{idx:03d}.depth.png"] = encode_png(np.zeros((h, w), np.uint16))
        predictions_of.setdefault(str(g), []).append(idx)
    views = np.concatenate([np.arange(n), np.array([v for _, v in targets], dtype=np.int64)])  # ground-truth poses
    sample["cameras.npz"] = encode_cameras(cams["c2w"][views], cams["K"][views], cams["hw"][views])
    meta = dict(meta, num_views=n + len(targets), view_roles=list(meta["view_roles"]) + [PRED_ROLE] * len(targets),
                predictions_of=predictions_of, predicted_views={"alpha": "opaque", "depth": "none"},
                zero123={"weights": os.path.basename(os.path.normpath(cfg.weights)), "steps": cfg.steps,
                         "guidance_scale": cfg.guidance_scale, "eta": cfg.eta, "seed": cfg.seed, "image_size": size,
                         "dtype": cfg.dtype, "diffusers": diffusers.__version__})
    sample["meta.json"] = json.dumps(meta, sort_keys=True).encode()
    return sample, {"views": n + len(targets), "predicted": len(targets), "seconds": round(time.time() - t0, 3)}


@dataclass
class PassSummary:
    task: int
    count: int
    shards: int = 0
    seen: int = 0
    already_done: int = 0
    ok: int = 0
    failed: int = 0
    predicted: int = 0
    seconds: float = 0.0
    failures: list = field(default_factory=list)

    def line(self) -> str:
        rate = self.predicted / self.seconds if self.seconds > 0 else 0.0
        return (f"zero123 task {self.task}/{self.count}: {self.ok} ok, {self.failed} failed, {self.already_done} "
                f"already done of {self.seen} objects in {self.shards} shards; {self.predicted} views predicted in "
                f"{self.seconds:.1f}s = {rate:.2f} views/s")


def predict_task(shards: list[str], out_dir: str, cfg: PassSettings, task: int = 0, count: int = 1,
                 device: str = "auto", retry_failed: bool = False, shard_maxcount: int = 64,
                 progress: bool = True, pipeline: Zero123Pipeline | None = None) -> PassSummary:
    """Predict this task's slice (sorted input shards[task::count]) into ``out_dir``; resumable, crash-safe."""
    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    mine = task_slice(shards, task, count)
    summary = PassSummary(task, count, shards=len(mine))
    pipe = pipeline
    t0 = time.time()
    bar = tqdm(desc=f"zero123 task {task}", unit="obj", disable=not progress, file=sys.stderr)
    with ShardWriter(out_dir, task, maxcount=shard_maxcount) as writer:
        skip = set(writer.done) | (set() if retry_failed else set(writer.failed))

        def fail(key, reason, excerpt="", **extra):
            writer.record_failure(key, reason, excerpt, **extra)
            summary.failed += 1
            summary.failures.append((key, reason))

        for shard in mine:
            shard_key = f"shard:{os.path.basename(shard)}"
            if shard_key in skip:
                continue
            for key, members in _read_shard(shard, fail):
                summary.seen += 1
                bar.update(1)
                if key in skip:
                    summary.already_done += 1
                    continue
                if key in writer.done:  # the same key twice among the inputs
                    fail(key, "duplicate object key: already written from another input shard", shard=shard)
                    continue
                if pipe is None:
                    pipe = Zero123Pipeline.from_pretrained(cfg.weights, device=device, dtype=cfg.dtype)
                try:
                    sample, record = predict_object(pipe, key, members, cfg)
                except (SampleError, ValueError, cv2.error) as exc:
                    fail(key, f"{type(exc).__name__}: {exc}", traceback.format_exc(), shard=shard)
                    continue
                writer.write(sample, dict(record, source_shard=os.path.basename(shard)))
                summary.ok += 1
                summary.predicted += record["predicted"]
    bar.close()
    summary.seconds = time.time() - t0
    return summary


# ------------------------------------------------------------------------------------------------ command line
def run(args: argparse.Namespace) -> int:
    """``lift3d-render zero123``: prints one summary line; 0 when the pass ran (failures are in the manifest),
    2 for unusable arguments."""
    if args.steps < 1 or args.batch_size < 1 or args.shard_maxcount < 1:
        print(f"zero123: --steps {args.steps}, --batch-size {args.batch_size} and --shard-maxcount "
              f"{args.shard_maxcount} must be ≥ 1", file=sys.stderr)
        return 2
    try:
        check_weights_dir(args.weights)
        resolve_device(args.device)
        task, count = resolve_task(args.rank, args.world_size)
    except (WeightsError, ValueError) as exc:
        print(f"zero123: {exc}", file=sys.stderr)
        return 2
    shards = list_shards(args.shards)
    out = os.path.abspath(args.out)
    shards_in_out = [s for s in shards if os.path.dirname(s) == out]
    if shards_in_out:
        print(f"zero123: --out {args.out} is where input shards are ({shards_in_out[0]}); write the predictions to "
              f"another directory", file=sys.stderr)
        return 2
    if not shards:
        print(f"zero123: no .tar shards match --shards {' '.join(args.shards)} (give globs in quotes, directories "
              f"or files)", file=sys.stderr)
        return 2
    cfg = PassSettings(weights=args.weights, steps=args.steps, guidance_scale=args.guidance_scale, eta=args.eta,
                       batch_size=args.batch_size, seed=args.seed, dtype=args.dtype)
    try:
        summary = predict_task(shards, args.out, cfg, task, count, device=args.device,
                               retry_failed=args.retry_failed, shard_maxcount=args.shard_maxcount,
                               progress=not args.no_progress)
    except WeightsError as exc:
        print(f"zero123: {exc}", file=sys.stderr)
        return 2
    report_task(summary, args.out, task)
    return 0
