"""GPU checks of the LRM (skipped without CUDA): bf16-mixed Lightning training steps, fused attention, the paper
config's forward at 512²."""

import os
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def test_bf16_mixed_training_steps_through_lightning(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader

    from benchmarks.lrm_throughput import build, synthetic_batch

    module = build("tiny", grad_ckpt=True, deferred=True, device=torch.device("cpu"))
    batch = synthetic_batch(module, 2, 3, 32, torch.device("cpu"))
    samples = [{k: v[i] for k, v in batch.items()} for i in range(2)] * 4
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=4, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, gradient_clip_val=1.0,
                        default_root_dir=str(tmp_path))
    trainer.fit(module, DataLoader(samples, batch_size=2))
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    after = module.net.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)


def test_fused_attention_kernel_runs_in_bf16():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, 16, 3072, 64, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(2, 16, 1025, 64, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        out = torch.nn.functional.scaled_dot_product_attention(q, kv, kv)
    ref = torch.softmax((q.float() @ kv.float().transpose(-1, -2)) / 8.0, dim=-1) @ kv.float()
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_paper_config_forward_bf16():
    import yaml

    from geometry.cameras import intrinsics_from_fov
    from geometry.rays import canonical_c2w
    from lightning_modules.networks.lrm.model import LRM

    cfg = yaml.safe_load(open(os.path.join(ROOT, "configs", "model", "lrm_paper.yaml")))["init_args"]
    net = LRM(dict(cfg["encoder"], pretrained=False), cfg["transformer"], cfg["field"], cfg["renderer"],
              cfg["camera_dim"]).cuda().eval()
    K = torch.tensor(intrinsics_from_fov(50.0, 512, 512), dtype=torch.float32, device="cuda")[None]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        planes = net(torch.rand(1, 3, 512, 512, device="cuda"), canonical_c2w(2.0, device="cuda")[None], K)
    assert planes.shape == (1, 3, 80, 64, 64) and torch.isfinite(planes).all()
