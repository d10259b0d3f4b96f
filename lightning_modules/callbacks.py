"""Training callbacks: throughput (samples/s, tokens/s, MFU) and visuals (image grids, meshes) for any logger.

Both work with every Lightning logger; with ``WandbLogger`` images go to W&B as ``wandb.Image`` and meshes as
``wandb.Object3D``, otherwise they are written under the logger's directory (``visuals/``). Rank zero only.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from geometry.image import write_image
from geometry.mesh import save_mesh


def batch_size_of(batch: dict) -> int:
    """Objects in a training batch: LRM (``input_image``) or One-2-3-45 (``source_images``) dicts."""
    for key in ("input_image", "source_images", "target_images"):
        if key in batch:
            return int(batch[key].shape[0])
    raise KeyError(f"cannot tell the batch size of a batch with keys {sorted(batch)}")


class ThroughputLogger(L.Callback):
    """Logs ``perf/samples_per_s`` and ``perf/tokens_per_s`` (global, all ranks) every step, and ``perf/mfu``
    when ``flops_per_sample`` (training FLOPs of one sample, e.g. from ``benchmarks/lrm_throughput.py``) and
    ``peak_flops`` (per device) are given. ``tokens_per_sample``: the module's ``tokens_per_sample`` when None."""

    def __init__(self, flops_per_sample: Optional[float] = None, peak_flops: Optional[float] = None,
                 tokens_per_sample: Optional[int] = None, warmup_steps: int = 2):
        self.flops_per_sample, self.peak_flops = flops_per_sample, peak_flops
        self.tokens_per_sample, self.warmup_steps = tokens_per_sample, warmup_steps
        self._t: Optional[float] = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t is None:
            self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        dt, self._t = (0.0 if self._t is None else now - self._t), now  # 0: no batch start seen, nothing to time
        if trainer.global_step <= self.warmup_steps or dt <= 0:
            return
        samples = batch_size_of(batch) * trainer.world_size
        metrics = {"perf/samples_per_s": samples / dt, "perf/step_time_s": dt}
        tokens = self.tokens_per_sample or getattr(pl_module, "tokens_per_sample", None)
        if tokens:
            metrics["perf/tokens_per_s"] = samples * tokens / dt
        if self.flops_per_sample and self.peak_flops:
            metrics["perf/mfu"] = samples * self.flops_per_sample / dt / (self.peak_flops * trainer.world_size)
        pl_module.log_dict(metrics, batch_size=1)


def image_grid(batch: dict, out: Optional[dict] = None, max_samples: int = 4) -> np.ndarray:
    """(H', W', 3) uint8: one row per sample — input | rendered views | target views | depth (rendered when
    ``out`` is given, else the targets'; each normalised to its maximum)."""
    rows = []
    size = batch["target_images"].shape[-1]
    for b in range(min(max_samples, batch["input_image"].shape[0])):
        inp = torch.nn.functional.interpolate(batch["input_image"][b:b + 1].float(), size=(size, size),
                                              mode="area")[0]
        depth = (out["depth"] if out is not None else batch["target_depths"])[b].float()
        depth = depth / depth.amax().clamp(min=1e-6)
        rendered = list(out["images"][b].float()) if out is not None else []
        tiles = [inp, *rendered, *batch["target_images"][b].float(), *[d.expand(3, -1, -1) for d in depth]]
        rows.append(torch.cat([t.clamp(0, 1).cpu() for t in tiles], dim=-1))
    return (torch.cat(rows, dim=-2).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


class VisualLogger(L.Callback):
    """Every ``every_n_steps`` training steps: an image grid of the current batch (rendered without ray jitter)
    and, with ``mesh_resolution`` > 0, the mesh of its first object — whatever the module's ``visuals(batch,
    max_samples, mesh_resolution)`` returns as (grid, (verts, faces, colours) or None, caption)."""

    def __init__(self, every_n_steps: int = 1000, max_samples: int = 4, mesh_resolution: int = 128):
        self.every_n_steps, self.max_samples, self.mesh_resolution = every_n_steps, max_samples, mesh_resolution

    def _out_dir(self, trainer) -> str:
        root = trainer.logger.log_dir if trainer.logger and getattr(trainer.logger, "log_dir", None) else \
            trainer.default_root_dir
        path = os.path.join(root or ".", "visuals")
        os.makedirs(path, exist_ok=True)
        return path

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step % self.every_n_steps:
            return
        was_training = pl_module.training
        pl_module.eval()
        mesh_path = None
        try:
            # the module's own picture of a batch: (grid, mesh or None, caption) — LRMModule and One2345Module
            grid, mesh, caption = pl_module.visuals(batch, self.max_samples, self.mesh_resolution)
            if mesh is not None:
                mesh_path = save_mesh(os.path.join(self._out_dir(trainer), f"mesh-step{step:07d}.glb"), *mesh)
        finally:
            pl_module.train(was_training)
        self._emit(trainer, step, grid, mesh_path, caption)

    def _emit(self, trainer, step: int, grid: np.ndarray, mesh_path: Optional[str], caption: str) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb_loggers:
            import wandb
            payload: dict[str, Any] = {"visuals/views": wandb.Image(grid, caption=caption)}
            if mesh_path:
                payload["visuals/mesh"] = wandb.Object3D(mesh_path)
            for lg in wandb_loggers:
                lg.experiment.log(payload, step=step)
        else:
            write_image(os.path.join(self._out_dir(trainer), f"views-step{step:07d}.png"), grid)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressPrinter(L.Callback):
    """Plain progress lines for batch-job logs (where the progress bar is off), rank zero only: where the fit starts
    (step, epoch, world size — a resumed run shows the step it resumed at), then every ``every_n_steps`` steps
    (default: the Trainer's ``log_every_n_steps``) ``lift3d: step S epoch E loss L`` with this rank's loss and the
    logged throughput, then ``[S/max_steps, elapsed 1m05s, ETA 3m10s]`` (the ETA from this fit's pace so far; without
    a ``max_steps`` only the elapsed time)."""

    def __init__(self, every_n_steps: Optional[int] = None):
        self.every_n_steps = every_n_steps
        self._start: Optional[tuple[float, int]] = None  # (time, global step) where this fit's first step began

    @rank_zero_only
    def on_train_start(self, trainer, pl_module) -> None:
        print(f"lift3d: fit starts at step {trainer.global_step} epoch {trainer.current_epoch}: world size "
              f"{trainer.world_size} ({trainer.num_nodes} node(s) × {trainer.num_devices} device(s), "
              f"{type(trainer.strategy).__name__}), max_steps {trainer.max_steps}", flush=True)
        self._start = (time.monotonic(), trainer.global_step)

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.every_n_steps or trainer.log_every_n_steps or 1
        step = trainer.global_step
        if step % every:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        parts = [f"lift3d: step {step} epoch {trainer.current_epoch}"]
        if loss is not None:
            parts.append(f"loss {float(loss):.6f}")
        for key in ("perf/samples_per_s", "perf/mfu"):
            if key in trainer.callback_metrics:
                parts.append(f"{key.split('/')[1]} {float(trainer.callback_metrics[key]):.4g}")
        parts.append(self._timing(trainer))
        print(" ".join(parts), flush=True)

    def _timing(self, trainer) -> str:
        """``[S/max_steps, elapsed E, ETA T]``: elapsed since this fit's first step, the ETA at that pace."""
        start_time, start_step = self._start or (time.monotonic(), trainer.global_step)
        elapsed, step, total = time.monotonic() - start_time, trainer.global_step, trainer.max_steps
        if total is None or total < 0:
            return f"[step {step}, elapsed {format_duration(elapsed)}]"
        eta = format_duration(elapsed / (step - start_step) * max(0, total - step)) if step > start_step else "?"
        return f"[{step}/{total}, elapsed {format_duration(elapsed)}, ETA {eta}]"

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        print(f"lift3d: fit stops at step {trainer.global_step} epoch {trainer.current_epoch}", flush=True)
