"""Random-weight LRM systems and synthetic batches, for the benchmarks and the tests that time or exercise a step
without shards (as ``render_farm.synthetic`` makes assets for them): one builder both import, no copies.

    module = build_lrm("tiny", grad_ckpt=False, deferred=False, device=torch.device("cpu"))
    batch = lrm_batch(module, batch=2, views=3, crop=32, device=torch.device("cpu"))
    out, planes, scale = module.forward_views(batch, stratified=True)
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from configs import MODEL_DIR, load_model_block
from geometry.rigs import lrm32
from lightning_modules.lrm import LRMModule
from lightning_modules.networks.lrm.model import LRM


def build_lrm(config: str, grad_ckpt: bool, deferred: bool, device: torch.device,
              sampler: Optional[str] = None) -> LRMModule:
    """The LRMModule of ``configs/model/lrm_<config>.yaml`` with random weights (encoder and LPIPS VGG alike: the same
    FLOPs as the real ones), activation checkpointing and deferred back-propagation as given, optionally another
    field sampler."""
    cfg = load_model_block(MODEL_DIR / f"lrm_{config}.yaml").init_args
    cfg["encoder"] = dict(cfg["encoder"], pretrained=False, checkpoint_path=None, grad_checkpointing=grad_ckpt)
    cfg["transformer"] = dict(cfg["transformer"], grad_checkpointing=grad_ckpt)
    cfg["renderer"] = dict(cfg["renderer"], deferred_backprop=deferred)
    if sampler:
        cfg["field"] = dict(cfg["field"], sampler=sampler)
    cfg.update(lpips_weights=None, lpips_pretrained=False)
    return LRMModule(**cfg).to(device)


def lrm_batch(module: LRMModule, batch: int, views: int, crop: int, device: torch.device) -> dict:
    """A training batch as ``datamodules.views.finalize`` makes it: random input images at the encoder's size on the
    ``lrm32`` rig, ``views`` supervision views as centred ``crop``² crops (random colours, full masks, no depth)."""
    assert isinstance(module.net, LRM)
    size = module.net.encoder.img_size
    c2w, K = [], []
    for b in range(batch):
        rig = lrm32(f"bench-{b}", resolution=size, num_views=views + 1)
        c2w.append(rig.c2w)
        k = rig.K.copy()
        k[1:, :2, 2] -= (size - crop) / 2  # a centred crop of the supervision views
        K.append(k)
    c2w_t = torch.tensor(np.stack(c2w), dtype=torch.float32, device=device)
    K_t = torch.tensor(np.stack(K), dtype=torch.float32, device=device)
    g = torch.Generator(device="cpu").manual_seed(0)
    return {"input_image": torch.rand(batch, 3, size, size, generator=g).to(device),
            "input_c2w": c2w_t[:, 0], "input_K": K_t[:, 0], "target_c2w": c2w_t[:, 1:], "target_K": K_t[:, 1:],
            "target_images": torch.rand(batch, views, 3, crop, crop, generator=g).to(device),
            "target_masks": torch.ones(batch, views, 1, crop, crop, device=device),
            "target_depths": torch.zeros(batch, views, 1, crop, crop, device=device),
            "background": torch.ones(batch, 3, device=device)}
