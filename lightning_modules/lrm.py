"""LRMModule: trains the LRM (``lightning_modules.networks.lrm``) from format-v1 shards; exports meshes.

Per step (batch = ``datamodules.views.finalize`` dict, N supervision views of H×W):

    cameras ─► canonical frame (source camera at ``camera_distance`` on −Y looking at the origin; depths × s)
    input image + canonical source camera ─► LRM ─► planes ─► render the N target cameras
    loss = mean over views of  MSE(rgb) + λ_lpips·LPIPS-VGG(rgb)  [+ λ_mask·MSE(opacity, mask)]
                               [+ λ_depth·L1(depth, target depth) on the mask]  [+ λ_tv·TV(planes)]

AdamW (β 0.9/0.95, weight decay 0.05 on weight matrices only), linear warm-up then cosine to 0 (per step), optional
EMA of the weights (validation, prediction and mesh export use it). Every step reseeds the RNG from (seed, step,
rank), so a run resumed from a checkpoint draws the same ray samples as the uninterrupted run. Gradient clipping and
precision are Trainer settings (``configs/experiments/lrm_*.yaml``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from geometry.mesh import marching_cubes, opacity_level, query_grid, save_mesh
from geometry.raster import render_turntable
from geometry.rays import canonical_to_world, canonicalize_cameras
from lightning_modules.base import ReconstructionModule
from lightning_modules.callbacks import image_grid
from lightning_modules.ema import EMA
from lightning_modules.losses import LPIPSLoss, cosine_with_warmup, triplane_tv
from lightning_modules.metrics import mean_psnr
from lightning_modules.networks.config import plain_block
from lightning_modules.networks.lrm.config import EncoderConfig, FieldConfig, RendererConfig, TransformerConfig
from lightning_modules.networks.lrm.model import LRM
from lightning_modules.prediction import Prediction

log = logging.getLogger(__name__)
NO_DECAY = ("bias", "norm", "pos_embed", "cls_token")


class LRMModule(ReconstructionModule):
    # mesh and prediction settings: chosen per run, not part of the trained model (lightning_modules.base)
    RUNTIME = (*ReconstructionModule.RUNTIME, "mesh_level", "turntable", "turntable_frames", "turntable_size",
               "max_nonfinite_steps")
    net: LRM
    mesh_level: Optional[float]
    turntable: Optional[str]
    turntable_frames: int
    turntable_size: int

    def __init__(self,
                 # architecture (typed blocks of lightning_modules.networks.lrm.config; defaults = the paper)
                 encoder: EncoderConfig = EncoderConfig(), transformer: TransformerConfig = TransformerConfig(),
                 field: FieldConfig = FieldConfig(), renderer: RendererConfig = RendererConfig(),
                 camera_dim: int = 1024, camera_distance: Optional[float] = 4.3,
                 # loss
                 lpips_weight: float = 2.0, lpips_weights: Optional[str] = None, lpips_pretrained: bool = True,
                 mask_weight: float = 0.0, depth_weight: float = 0.0, tv_weight: float = 0.0,
                 stratified: bool = True,
                 # optimisation
                 lr: float = 4e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.05,
                 warmup_steps: int = 3000, total_steps: Optional[int] = None, final_lr_ratio: float = 0.0,
                 ema_decay: Optional[float] = None, seed: int = 0,
                 max_nonfinite_steps: int = 10,  # NaN/inf steps in a row (each skipped) that stop the run
                 # meshes and prediction
                 mesh_resolution: int = 256, mesh_level: Optional[float] = 10.0, mesh_format: str = "glb",
                 predict_dir: str = "predictions", turntable: Optional[str] = "gif", turntable_frames: int = 36,
                 turntable_size: int = 256):
        # the blocks go into hparams (and checkpoints) as plain data; LRM takes either form
        encoder, transformer, field, renderer = map(plain_block, (encoder, transformer, field, renderer))
        super().__init__()
        self.save_settings()  # hparams (checkpointed) and RUNTIME settings (attributes)
        self.net = LRM(encoder, transformer, field, renderer, camera_dim)
        self.lpips = LPIPSLoss(lpips_weights, lpips_pretrained) if lpips_weight > 0 else None
        self.ema = EMA(self.net, ema_decay) if ema_decay else None

    def check_runtime(self, name: str, value):
        if name == "turntable":
            if value not in (None, "none", "gif", "mp4"):
                raise ValueError(f"turntable {value!r}: expected gif, mp4, or none (no turntable)")
            return None if value == "none" else value
        for setting, least in (("turntable_frames", 1), ("turntable_size", 8)):
            if name == setting and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        return super().check_runtime(name, value)

    @property
    def tokens_per_sample(self) -> int:
        """Transformer tokens one sample puts through the model: image tokens + triplane tokens."""
        return self.net.encoder.num_tokens + self.net.transformer.pos_embed.shape[0]

    # --- the model on a batch --------------------------------------------------------------------------------
    def reconstruct(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Planes of the batch's input images, the target cameras in the canonical frame, and the scale s."""
        canon, c2w, scale = canonicalize_cameras(batch["input_c2w"].float(),
                                                 batch.get("target_c2w", batch["input_c2w"][:, None]).float(),
                                                 self.hparams.camera_distance)
        planes = self.net(batch["input_image"], canon, batch["input_K"].float())
        return planes, c2w, scale

    def forward_views(self, batch: dict, stratified: bool) -> tuple[dict, torch.Tensor, torch.Tensor]:
        planes, c2w, scale = self.reconstruct(batch)
        h, w = batch["target_images"].shape[-2:]
        out = self.net.render(planes, c2w, batch["target_K"], h, w, batch["background"].float(), stratified)
        return out, planes, scale

    def losses(self, batch: dict, out: dict, planes: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        hp = self.hparams
        pred, target = out["images"].float(), batch["target_images"].float()
        terms = {"mse": F.mse_loss(pred, target)}
        loss = terms["mse"]
        if self.lpips is not None:
            terms["lpips"] = self.lpips(pred, target)
            loss = loss + hp.lpips_weight * terms["lpips"]
        if hp.mask_weight:
            terms["mask"] = F.mse_loss(out["opacity"].float(), batch["target_masks"].float())
            loss = loss + hp.mask_weight * terms["mask"]
        if hp.depth_weight:
            target_depth = batch["target_depths"].float() * scale.view(-1, 1, 1, 1, 1)  # metres of the moved scene
            m = (target_depth > 0).float()
            terms["depth"] = ((out["depth"].float() - target_depth).abs() * m).sum() / m.sum().clamp(min=1)
            loss = loss + hp.depth_weight * terms["depth"]
        if hp.tv_weight:
            terms["tv"] = triplane_tv(planes.float())
            loss = loss + hp.tv_weight * terms["tv"]
        terms["loss"] = loss
        with torch.no_grad():
            terms["psnr"] = mean_psnr(pred.clamp(0, 1), target)
        return terms

    # --- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seed_step()
        out, planes, scale = self.forward_views(batch, stratified=self.hparams.stratified)
        return self.log_train_terms(self.losses(batch, out, planes, scale), batch["input_image"].shape[0])

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # here, not in on_train_batch_end: checkpoint callbacks run before that hook
            self.ema.update(self.net)

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.net.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or any(k in name for k in NO_DECAY) else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr, betas=tuple(hp.betas),
                                **self.adam_implementation())
        total = hp.total_steps or int(self.trainer.estimated_stepping_batches)
        if total <= hp.warmup_steps:
            rank_zero_info(f"LRM: warm-up ({hp.warmup_steps} steps) is not shorter than the run ({total} steps): "
                           "the learning rate never reaches its cosine phase")
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_with_warmup(s, hp.warmup_steps, total, hp.final_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- EMA in checkpoints, validation and prediction ---------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])

    def eval_weights(self):
        """Context: the EMA weights when there are any, else the trained ones."""
        return self.ema.swapped_in(self.net) if self.ema is not None else contextlib.nullcontext(self.net)

    def evaluate_batch(self, batch: dict, stage: str) -> None:
        """Losses and PSNR of the target views rendered without ray jitter, with the evaluation weights."""
        with self.eval_weights():
            out, planes, scale = self.forward_views(batch, stratified=False)
            terms = self.losses(batch, out, planes, scale)
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=batch["input_image"].shape[0],
                      sync_dist=True)

    # --- visuals (lightning_modules.callbacks.VisualLogger) -----------------------------------------------
    @torch.no_grad()
    def visuals(self, batch: dict, max_samples: int = 4, mesh_resolution: int = 0
                ) -> tuple[np.ndarray, Optional[tuple], str]:
        """(image grid, mesh of the first object or None, caption) of a batch, rendered with the evaluation weights
        and no ray jitter."""
        mesh = None
        with self.eval_weights():
            sub = self.first_samples(batch, max_samples)
            out, planes, _ = self.forward_views(sub, stratified=False)
            grid = image_grid(sub, out, max_samples)
            if mesh_resolution:
                try:
                    mesh = self.extract_mesh(planes[:1], resolution=mesh_resolution)
                except ValueError as exc:  # no surface yet (early training): the images still go out
                    self.print(f"[visuals] step {self.global_step}: no mesh ({exc})")
        return grid, mesh, "input | rendered views | targets | depth"

    # --- meshes -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def extract_mesh(self, planes: torch.Tensor, resolution: Optional[int] = None, level: Optional[float] = None,
                     closed: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One object's planes (1, 3, F, P, P) → vertices (canonical frame), faces, vertex colours in [0, 1].

        The surface is where the density crosses ``mesh_level`` (``None``: :func:`geometry.mesh.opacity_level`, the
        density where rays from outside turn half opaque, for models whose density scale is not known in advance,
        e.g. briefly trained ones; ``ValueError`` "no surface" when none does).
        ``closed``: cap the surface where density reaches the grid's boundary (a watertight mesh, for volume IoU)."""
        bound = self.net.field.bound
        grid = query_grid(lambda p: self.net.density(planes, p), resolution or self.mesh_resolution,
                          (-bound, bound), device=planes.device)
        level = self.mesh_level if level is None else level
        if level is None:  # automatic: the density where rays from outside turn half opaque (the rendered surface)
            level = opacity_level(grid, (-bound, bound))
        verts, faces = marching_cubes(grid, level, (-bound, bound), inside="above", closed=closed)
        v = torch.from_numpy(verts).to(planes.device)
        colours = torch.cat([self.net.colour(planes, c) for c in v.split(1 << 18)]).cpu().numpy()
        return verts, faces, colours

    def to_world(self, verts: np.ndarray, source_c2w: torch.Tensor) -> np.ndarray:
        """(V, 3) canonical-frame vertices → the sample's world (float64), given its input camera ``source_c2w``."""
        return canonical_to_world(torch.from_numpy(verts).double(), source_c2w.double().cpu(),
                                  self.hparams.camera_distance).numpy()

    @torch.no_grad()
    def export_mesh(self, planes: torch.Tensor, path: str, source_c2w: Optional[torch.Tensor] = None,
                    normalization: Optional[dict] = None, mesh: Optional[tuple] = None) -> str:
        """Mesh of one object's planes to ``path`` (.glb/.obj/.ply). With ``source_c2w`` (the input camera in the
        sample's world) the canonical frame is undone; with ``normalization`` (meta.json's) the asset's own.
        ``mesh``: these planes' :meth:`extract_mesh` result when the caller already has it."""
        verts, faces, colours = self.extract_mesh(planes) if mesh is None else mesh
        if source_c2w is not None:
            verts = self.to_world(verts, source_c2w).astype(np.float32)
        return save_mesh(path, verts, faces, colours, normalization=normalization)

    def predict_step(self, batch: dict, batch_idx: int) -> list[Prediction]:
        """Input images (a ``datamodules.images.ImageDataModule`` or shard batch) → a mesh per object (canonical
        frame), with its turntable frames unless ``turntable`` is off; ``PredictionWriter`` writes them."""
        predictions = []
        with self.eval_weights():
            planes, _, _ = self.reconstruct(batch)
            for b, key in enumerate(batch["key"]):
                try:
                    mesh = self.extract_mesh(planes[b:b + 1])
                except ValueError as exc:  # an empty density field: say which input, keep going
                    log.warning("no mesh for %s: %s", key, exc)
                    continue
                frames = render_turntable(*mesh, n_frames=self.turntable_frames, size=self.turntable_size,
                                          device=planes.device) if self.turntable else None
                predictions.append(Prediction(key, mesh, self.mesh_format, frames, self.turntable))
        return predictions
