"""One2345Module: trains One-2-3-45's reconstruction module (``lightning_modules.networks.one2345``) from shards.

Per step (batch = ``datamodules.one2345`` dict: M source views and one ground-truth target view per object):

    source views (8 gt + 32 neighbours: Zero123's predictions or rendered) + ground-truth poses ─► One2345.encode
    target view ─► ``num_rays`` pixels, a ``foreground_fraction`` share drawn from the mask (foreground importance)
    rays ─► NeuS rendering ─► loss = L1(rgb)
                                   + λ_eik · eikonal (|∇f| − 1)²           (samples inside the box)
                                   + λ_sparse · mean exp(−τ|f|)            (random points in the box: no stray surfaces)
                                   [+ λ_mask · BCE(opacity, mask)          from step ``mask_start_step`` on]
                                   [+ λ_depth · L1(depth, target depth)    on the target's surface pixels]

Adam (lr 2e-4) with optional linear warm-up, then step decay (× ``lr_decay_gamma`` every ``lr_decay_steps``). Every
step reseeds the RNG from (seed, step, rank), so a resumed run draws the same rays as the uninterrupted one. Meshes:
marching cubes on the SDF at level 0, in the shard's world frame, vertex colours from the blending network.

spconv's CPU kernels return wrong float32 values with more than one thread (``networks/one2345/sparse_cnn.py``), so
on the CPU this module runs fit, validation and prediction with one intra-op thread and restores the count after.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from lightning.pytorch.utilities import rank_zero_info

from geometry.mesh import marching_cubes, query_grid
from geometry.rays import camera_rays
from lightning_modules.base import ReconstructionModule
from lightning_modules.callbacks import image_grid
from lightning_modules.losses import step_decay_with_warmup
from lightning_modules.metrics import mean_psnr
from lightning_modules.networks.config import plain_block
from lightning_modules.networks.one2345.config import (
    ColourConfig,
    CostVolumeConfig,
    FeaturesConfig,
    RendererConfig,
    SDFConfig,
    SparseCNNConfig,
)
from lightning_modules.networks.one2345.model import One2345, Scene
from lightning_modules.networks.one2345.renderer import eikonal_loss
from lightning_modules.one2345_inference import One2345Views
from lightning_modules.prediction import Prediction

log = logging.getLogger(__name__)


def sample_pixels(masks: torch.Tensor, num_rays: int, foreground_fraction: float) -> torch.Tensor:
    """Pixel indices (B, R) into flattened (H·W) views, drawn with replacement from the mixture
    ``foreground_fraction`` · uniform-over-the-mask + (1 − ``foreground_fraction``) · uniform-over-the-image.
    masks (B, H, W) in [0, 1]; an empty mask falls back to uniform."""
    flat = (masks.flatten(1) > 0.5).float()  # (B, HW)
    uniform = torch.full_like(flat, 1.0 / flat.shape[1])
    fg = flat / flat.sum(dim=1, keepdim=True).clamp(min=1.0)
    fg = torch.where(flat.sum(dim=1, keepdim=True) > 0, fg, uniform)
    probs = foreground_fraction * fg + (1.0 - foreground_fraction) * uniform
    return torch.multinomial(probs, num_rays, replacement=True)


@contextlib.contextmanager
def autograd_on():
    """Leave Lightning's ``torch.inference_mode`` (validation, prediction) for ``no_grad``: NeuS takes SDF gradients
    (normals, the cosine in its opacity) by autograd even when nothing is trained — the renderer and
    ``One2345.colour`` enable grad for exactly that — which inference mode forbids. Tensors made under inference mode
    must go through :func:`plain` first."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def plain(batch: dict) -> dict:
    """The batch with inference-mode tensors cloned into normal ones (autograd may save those for backward)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) and v.is_inference() else v for k, v in batch.items()}


class One2345Module(ReconstructionModule):
    # mesh, prediction and single-image settings: chosen per run, not part of the trained model (lightning_modules.base)
    RUNTIME = (*ReconstructionModule.RUNTIME, "zero123_weights", "zero123_steps", "zero123_guidance_scale",
               "zero123_dtype", "elevation_deg", "source_size", "max_nonfinite_steps")
    net: One2345
    zero123_weights: Optional[str]
    zero123_steps: int
    zero123_guidance_scale: float
    zero123_dtype: str
    elevation_deg: Optional[float]
    source_size: int

    def __init__(self,
                 # architecture (typed blocks of lightning_modules.networks.one2345.config; defaults = the paper)
                 features: FeaturesConfig = FeaturesConfig(), cost_volume: CostVolumeConfig = CostVolumeConfig(),
                 sparse_cnn: SparseCNNConfig = SparseCNNConfig(), sdf: SDFConfig = SDFConfig(),
                 colour: ColourConfig = ColourConfig(), renderer: RendererConfig = RendererConfig(),
                 # rays and losses
                 num_rays: int = 512, foreground_fraction: float = 0.5, stratified: bool = True,
                 eikonal_weight: float = 0.1, sparseness_weight: float = 0.02, sparseness_scale: float = 100.0,
                 sparseness_points: int = 4096, mask_weight: float = 0.1, mask_start_step: int = 0,
                 depth_weight: float = 1.0, cos_anneal_steps: int = 0,
                 # optimisation
                 lr: float = 2e-4, betas: tuple[float, float] = (0.9, 0.999), warmup_steps: int = 0,
                 lr_decay_steps: int = 100_000, lr_decay_gamma: float = 0.5, seed: int = 0,
                 max_nonfinite_steps: int = 10,  # NaN/inf steps in a row (each skipped) that stop the run
                 # meshes and prediction (run-time settings, kept out of the checkpoint's hparams)
                 mesh_resolution: int = 256, mesh_format: str = "glb", predict_dir: str = "predictions",
                 zero123_weights: Optional[str] = None, zero123_steps: int = 50,
                 zero123_guidance_scale: float = 3.0, zero123_dtype: str = "float32",
                 elevation_deg: Optional[float] = None, source_size: int = 256):
        # the blocks go into hparams (and checkpoints) as plain data; One2345 takes either form
        features, cost_volume, sparse_cnn, sdf, colour, renderer = map(
            plain_block, (features, cost_volume, sparse_cnn, sdf, colour, renderer))
        super().__init__()
        self.save_settings()  # hparams (checkpointed) and RUNTIME settings (attributes)
        if num_rays < 1 or not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"num_rays must be >= 1 and foreground_fraction in [0, 1], got {num_rays!r}, "
                             f"{foreground_fraction!r}")
        self._views: Optional[One2345Views] = None  # the single-image front end, loaded by the first image batch
        self.net = One2345(features, cost_volume, sparse_cnn, sdf, colour, renderer)
        self._threads: Optional[int] = None

    # --- spconv on the CPU: one thread (see the module docstring) ----------------------------------------------
    def _pin_threads(self) -> None:
        if self.device.type == "cpu" and torch.get_num_threads() > 1 and self._threads is None:
            self._threads = torch.get_num_threads()
            rank_zero_info(f"One-2-3-45 on the CPU: 1 intra-op thread instead of {self._threads} (spconv's CPU "
                           "kernels are not thread-safe)")
            torch.set_num_threads(1)

    def _restore_threads(self) -> None:
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None

    on_fit_start = on_validation_start = on_predict_start = on_test_start = _pin_threads
    on_fit_end = on_test_end = _restore_threads

    def on_predict_end(self) -> None:
        self._restore_threads()
        self._views = None  # Zero123's weights are freed with the prediction run

    def on_validation_end(self) -> None:
        if self.trainer.state.fn != "fit":  # inside fit the count stays pinned until on_fit_end
            self._restore_threads()

    # --- the model on a batch ------------------------------------------------------------------------------
    def encode(self, batch: dict) -> Scene:
        return self.net.encode(batch["source_images"].float(), batch["source_c2w"].float(),
                               batch["source_K"].float())

    def target_rays(self, batch: dict, num_rays: Optional[int]) -> dict[str, torch.Tensor]:
        """Rays of the target view (B, R, …) with their ground truth; all pixels when ``num_rays`` is None."""
        h, w = batch["target_images"].shape[-2:]
        origins, dirs = camera_rays(batch["target_c2w"][:, 0].float(), batch["target_K"][:, 0].float(), h, w)
        rays = {"origins": rearrange(origins, "b h w c -> b (h w) c"), "dirs": rearrange(dirs, "b h w c -> b (h w) c"),
                "rgb": rearrange(batch["target_images"][:, 0].float(), "b c h w -> b (h w) c"),
                "mask": rearrange(batch["target_masks"][:, 0, 0].float(), "b h w -> b (h w)"),
                "depth": rearrange(batch["target_depths"][:, 0, 0].float(), "b h w -> b (h w)")}
        if num_rays is None:
            return rays
        idx = sample_pixels(batch["target_masks"][:, 0, 0], num_rays, self.hparams.foreground_fraction)  # (B, R)
        return {k: v.gather(1, idx[..., None].expand(-1, -1, v.shape[-1]) if v.dim() == 3 else idx)
                for k, v in rays.items()}

    def cos_anneal_ratio(self) -> float:
        steps = self.hparams.cos_anneal_steps
        return min(1.0, self.global_step / steps) if steps else 1.0

    def losses(self, scene: Scene, rays: dict, out: dict) -> dict[str, torch.Tensor]:
        hp = self.hparams
        terms = {"colour": (out["rgb"] - rays["rgb"]).abs().mean()}
        loss = terms["colour"]
        if hp.eikonal_weight:
            terms["eikonal"] = eikonal_loss(out["sdf_gradients"], out["inside"])
            loss = loss + hp.eikonal_weight * terms["eikonal"]
        if hp.sparseness_weight:
            b = scene.volume.shape[0]
            pts = (torch.rand(b, hp.sparseness_points, 3, device=scene.volume.device) * 2 - 1) * self.net.bound
            sdf, _ = self.net.sdf_fn(scene)(pts)
            terms["sparseness"] = torch.exp(-hp.sparseness_scale * sdf.abs()).mean()
            loss = loss + hp.sparseness_weight * terms["sparseness"]
        if hp.mask_weight and self.global_step >= hp.mask_start_step:
            terms["mask"] = F.binary_cross_entropy(out["opacity"].clamp(1e-3, 1 - 1e-3), rays["mask"].clamp(0, 1))
            loss = loss + hp.mask_weight * terms["mask"]
        if hp.depth_weight:
            m = ((rays["depth"] > 0) & (rays["mask"] > 0.5)).float()
            terms["depth"] = ((out["depth"] - rays["depth"]).abs() * m).sum() / m.sum().clamp(min=1)
            loss = loss + hp.depth_weight * terms["depth"]
        terms["loss"] = loss
        with torch.no_grad():
            # each object's rays come from its one target view: an image of 1 × R pixels
            terms["psnr"] = mean_psnr(rearrange(out["rgb"].clamp(0, 1), "b r c -> b c 1 r"),
                                      rearrange(rays["rgb"], "b r c -> b c 1 r"))
            terms["inv_s"] = self.net.renderer.variance().detach()
        return terms

    # --- training ------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seed_step()
        scene = self.encode(batch)
        rays = self.target_rays(batch, self.hparams.num_rays)
        out = self.net.render_rays(scene, rays["origins"], rays["dirs"], batch["background"].float(),
                                   stratified=self.hparams.stratified, cos_anneal_ratio=self.cos_anneal_ratio())
        bs = batch["source_images"].shape[0]
        loss = self.log_train_terms(self.losses(scene, rays, out), bs)
        self.log("train/active_voxels", float(scene.active_voxels) / bs, batch_size=bs)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam(self.net.parameters(), lr=hp.lr, betas=tuple(hp.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: step_decay_with_warmup(s, hp.warmup_steps, hp.lr_decay_steps, hp.lr_decay_gamma))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- validation: whole target views --------------------------------------------------------------------
    def render_target(self, batch: dict, scene: Optional[Scene] = None) -> tuple[dict, Scene]:
        """The whole target view of every object (no jitter): ``Model.render``'s dict, and the scene."""
        scene = self.encode(batch) if scene is None else scene
        h, w = batch["target_images"].shape[-2:]
        out = self.net.render(scene, batch["target_c2w"].float(), batch["target_K"].float(), h, w,
                              batch["background"].float())
        return out, scene

    def evaluate_batch(self, batch: dict, stage: str) -> None:
        with autograd_on():  # SDF gradients (normals) need autograd; nothing is backpropagated
            batch = plain(batch)
            out, _ = self.render_target(batch)
            out = {k: v.detach() for k, v in out.items()}
        target = batch["target_images"].float()
        m = batch["target_masks"].float()
        gt_depth = batch["target_depths"].float()
        surface = ((gt_depth > 0) & (m > 0.5)).float()
        terms = {"psnr": mean_psnr(out["images"].clamp(0, 1), target),
                 "psnr_masked": mean_psnr(out["images"].clamp(0, 1), target, m),
                 "mask_iou": ((out["opacity"] > 0.5) & (m > 0.5)).sum() / ((out["opacity"] > 0.5) | (m > 0.5)).sum()
                 .clamp(min=1),
                 "depth_l1": ((out["depth"] - gt_depth).abs() * surface).sum() / surface.sum().clamp(min=1)}
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=target.shape[0], sync_dist=True)

    # --- visuals (lightning_modules.callbacks.VisualLogger) -----------------------------------------------
    def visuals(self, batch: dict, max_samples: int = 4, mesh_resolution: int = 0
                ) -> tuple[np.ndarray, Optional[tuple], str]:
        """(image grid, mesh of the first object or None, caption) of a batch, for the VisualLogger."""
        sub = self.first_samples(batch, max_samples)
        with autograd_on():
            out, scene = self.render_target(plain(sub))
            out = {k: v.detach() for k, v in out.items()}
        normals = (out["normals"] * 0.5 + 0.5) * out["opacity"] + (1 - out["opacity"])  # world normals over white
        grid_batch = {"input_image": sub["source_images"][:, 0], "target_images": sub["target_images"],
                      "target_depths": sub["target_depths"]}
        grid = image_grid(grid_batch, {"images": torch.cat([out["images"], normals], dim=1), "depth": out["depth"]},
                          max_samples)
        mesh = None
        if mesh_resolution:
            try:
                mesh = self.extract_mesh(scene.select(0), resolution=mesh_resolution)
            except ValueError as exc:  # no zero crossing yet (early training): the images still go out
                self.print(f"[visuals] step {self.global_step}: no mesh ({exc})")
        return grid, mesh, "first source view | rendered target | rendered normals | target | depth"

    # --- meshes --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def extract_mesh(self, scene: Scene, resolution: Optional[int] = None, closed: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One object's scene → vertices (world frame of the shard), faces, vertex colours in [0, 1]: marching cubes
        on the SDF at level 0 over the cost volume's box; ``closed`` caps the surface where it leaves the box."""
        bound = self.net.bound
        grid = query_grid(lambda p: self.net.sdf(scene, p), resolution or self.mesh_resolution, (-bound, bound),
                          chunk=1 << 16, device=scene.volume.device)
        verts, faces = marching_cubes(grid, 0.0, (-bound, bound), inside="below", closed=closed)
        v = torch.from_numpy(verts).to(scene.volume.device)
        colours = torch.cat([self.net.colour(scene, c) for c in v.split(1 << 14)]).cpu().numpy()
        return verts, faces, colours

    def predict_step(self, batch: dict, batch_idx: int) -> list[Prediction]:
        """Shard batches (``One2345DataModule.predict_dataloader``: posed source views) or image batches
        (``datamodules.images.ImageDataModule``: one image per object, made into 40 posed views by Zero123 first —
        ``lightning_modules.one2345_inference``) → one mesh per object, in the sources' world frame
        (``PredictionWriter`` writes them). Single images also give the 40 sources and the elevation used."""
        if "source_images" not in batch:
            return [self._predict_image(batch["input_image"][b], key) for b, key in enumerate(batch["key"])]
        with autograd_on():  # vertex colours look along the SDF's normals
            batch = plain(batch)
            scene = self.encode(batch)
            meshes = [(key, self._mesh_or_none(scene.select(b), key)) for b, key in enumerate(batch["key"])]
        return [Prediction(key, mesh, self.mesh_format) for key, mesh in meshes if mesh is not None]

    def _mesh_or_none(self, scene: Scene, key: str) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        try:
            return self.extract_mesh(scene)
        except ValueError as exc:  # no zero crossing: say which object, keep going
            log.warning("no mesh for %s: %s", key, exc)
            return None

    def source_views(self) -> One2345Views:
        """The single-image front end, with Zero123 loaded from ``zero123_weights`` by its first use in a run."""
        if self._views is None:
            self._views = One2345Views.from_pretrained(
                self.zero123_weights, device=str(self.device), dtype=self.zero123_dtype, steps=self.zero123_steps,
                guidance_scale=self.zero123_guidance_scale, source_size=self.source_size,
                elevation_deg=self.elevation_deg, seed=self.hparams.seed)
        return self._views

    def _predict_image(self, image: torch.Tensor, key: str) -> Prediction:
        image = image.float().permute(1, 2, 0).cpu().numpy()  # (H, W, 3) over white
        with autograd_on():
            views = self.source_views()(image)
            sources = {"source_images": torch.from_numpy(views.images).permute(0, 3, 1, 2)[None],
                       "source_c2w": torch.from_numpy(views.c2w)[None], "source_K": torch.from_numpy(views.K)[None]}
            scene = self.encode({k: v.to(self.device) for k, v in sources.items()})
            mesh = self._mesh_or_none(scene, key)
        rank_zero_info(f"[predict] {key}: elevation {views.elevation_deg:.1f}° ({views.elevation_source})")
        return Prediction(key, mesh, self.mesh_format, views=views.images,
                          record={"elevation_deg": views.elevation_deg, "elevation": views.elevation_source,
                                  "matches": views.matches})
