"""The model side of ``lift3d evaluate``: the held-out objects of the shards, each object's batch as training
prepares it, and an LRM checkpoint that reconstructs from the input view, renders the held-out cameras and extracts a
mesh in the sample's world.

The input view (``--input-view``: the ``source`` role when the sample has one, else view 0, or an index) is prepared
exactly as training prepares it (``datamodules.views``: resized to the encoder's input size, composited over
``--background``); every other view is a held-out camera, rendered with no ray jitter and the EMA weights when the
checkpoint has them.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from datamodules.views import ViewSampler, collate, finalize
from render_farm.shards import LazySample, TarScanError, read_header, resolve_shards, scan_samples


class LRMReconstructor:
    """An LRM checkpoint as the evaluation needs it: reconstruct from an input view, render cameras, extract a mesh
    in the sample's world. Training-only parts are not re-created from files: the encoder is built without fetching
    pretrained weights and the LPIPS backbone without its file (both are restored from the checkpoint's state)."""

    def __init__(self, ckpt: str, device: torch.device, mesh_resolution: Optional[int] = None,
                 mesh_level: Optional[str] = None, model_config: Optional[str] = None):
        from lightning_modules.lrm import LRMModule

        hparams, runtime = read_checkpoint_settings(ckpt, model_config)
        encoder = dict(hparams.get("encoder") or {}, pretrained=False, checkpoint_path=None)
        self.module = LRMModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True, encoder=encoder,
                                                     lpips_pretrained=False, lpips_weights=None)
        self.module.to(device).eval()
        # meshing settings are run-time choices, not in the checkpoint: the model YAML's, then the command line's
        if runtime:
            self.module.set_runtime(**runtime)
        if mesh_resolution:
            self.module.set_runtime(mesh_resolution=mesh_resolution)
        if mesh_level is not None:
            self.module.set_runtime(mesh_level=None if mesh_level == "auto" else float(mesh_level))
        self.device = device
        self.input_size = int(self.module.net.encoder.img_size)

    def weights(self):
        return self.module.eval_weights()

    @torch.no_grad()
    def render_views(self, batch: dict) -> tuple[dict, torch.Tensor]:
        """Renders of the batch's target cameras (B = 1) and the object's planes."""
        out, planes, _ = self.module.forward_views(batch, stratified=False)
        return out, planes

    @torch.no_grad()
    def mesh(self, planes: torch.Tensor, source_c2w: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vertices in the sample's normalised world, faces, vertex colours; closed where the density reaches the
        edge of the model's volume, so a mesh is watertight (volume IoU) unless marching cubes leaves it open."""
        verts, faces, colours = self.module.extract_mesh(planes, closed=True)
        return self.module.to_world(verts, source_c2w), faces, colours


def _import_class(class_path: str, where: str) -> type:
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module or "lightning_modules.lrm"), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{where}: class_path {class_path!r} cannot be imported ({exc})") from None


def read_checkpoint_settings(ckpt: str, model_config: Optional[str] = None) -> tuple[dict, dict]:
    """An LRM checkpoint's hyper-parameters (read as tensors and plain data only) and the run-time settings of
    ``model_config`` (a model YAML, or an experiment YAML's model block) after checking that the YAML configures the
    checkpoint's module class. Cheap (the weights stay on disk): ``lift3d evaluate`` calls it before any work.
    ``FileNotFoundError`` / ``ValueError`` naming the file and the fix."""
    from configs import load_model_block
    from lightning_modules.launch.checkpoints import CheckpointError, load_checkpoint
    from lightning_modules.lrm import LRMModule

    if not os.path.isfile(ckpt):
        raise FileNotFoundError(f"checkpoint {ckpt!r} does not exist: point --ckpt at a Lightning checkpoint of "
                                "`lift3d fit` (e.g. logs/<run>/checkpoints/last.ckpt)")
    try:  # mmap: the weights stay on disk (they are read once, by load_from_checkpoint)
        state = load_checkpoint(ckpt)
    except CheckpointError as exc:
        raise ValueError(f"--ckpt: {exc}") from None
    hparams = state.get("hyper_parameters") if isinstance(state, dict) else None
    if hparams is None:
        raise ValueError(f"{ckpt!r} holds no hyper_parameters: not a checkpoint written by `lift3d fit`")
    stored = hparams.get("_class_path")  # what LightningCLI built; a plain Trainer's checkpoint does not say
    if stored and not issubclass(_import_class(stored, f"--ckpt {ckpt}"), LRMModule):
        raise ValueError(f"--ckpt {ckpt} is a {stored} checkpoint: lift3d evaluate reconstructs with LRM checkpoints "
                         f"({LRMModule.__module__}.LRMModule)")
    runtime: dict = {}
    if model_config:
        if not os.path.isfile(model_config):
            raise FileNotFoundError(f"--model-config {model_config!r} does not exist: give the model YAML the "
                                    "checkpoint was trained with (e.g. configs/model/lrm_small.yaml)")
        block = load_model_block(model_config)  # a model YAML or an experiment YAML's model block
        cls = _import_class(block.class_path, f"--model-config {model_config}")
        expected = stored or f"{LRMModule.__module__}.LRMModule"
        if not (isinstance(cls, type) and issubclass(cls, _import_class(expected, f"--ckpt {ckpt}"))):
            raise ValueError(f"--model-config {model_config} configures {block.class_path}, but --ckpt {ckpt} holds "
                             f"a {expected}: give the model or experiment YAML the checkpoint was trained with (e.g. "
                             f"configs/model/lrm_small.yaml)")
        runtime = LRMModule.runtime_settings(block.init_args)
    return hparams, runtime


def list_objects(shards) -> tuple[list[LazySample], list[dict]]:
    """Every readable sample of the shards, in order (each reads its members on access, so holding them all costs
    only their offsets), and the shard damage found on the way."""
    urls, _ = resolve_shards(shards)
    remote = [u for u in urls if "://" in u or u.startswith("pipe:")]
    if remote:
        raise ValueError(f"evaluation reads local shards (random access); {remote[0]!r} is remote: copy the shards "
                         "to a local or shared filesystem first")
    objects, damage = [], []
    for url in urls:
        try:
            objects += list(scan_samples(url))
        except TarScanError as exc:  # the intact samples before the damage were kept
            damage.append({"key": exc.dropped or exc.key, "shard": url, "stage": "read", "reason": exc.reason})
    return objects, damage


def held_out_batch(sample, input_view: str, input_size: int, render_size: int, background: str, device
                   ) -> tuple[dict, dict, dict, int]:
    """One object as the training code prepares it (``datamodules.views``, batch of 1): the input view (``auto``:
    the ``source`` role, else view 0; or an index) and every other view as a target, in view order. Returns the
    batch on ``device``, meta.json, the cameras and the input view's index."""
    meta, cams, roles = read_header(sample)
    inp = (roles.index("source") if "source" in roles else 0) if input_view == "auto" else int(input_view)
    if not 0 <= inp < len(roles) or len(roles) < 2:
        raise ValueError(f"input view {inp} with {len(roles)} views: need the input plus at least one held-out view")
    sampler = ViewSampler(num_target_views=len(roles) - 1, input_view=inp, input_size=input_size,
                          target_size=render_size, background=background)
    raw = sampler(sample, np.random.default_rng(0))
    order = torch.argsort(raw["target_views"])  # held-out views in index order
    batch = finalize(collate([raw]))
    for k in ("target_views", "target_images", "target_masks", "target_depths", "target_c2w", "target_K"):
        batch[k] = batch[k][:, order]
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}, meta, cams, inp
