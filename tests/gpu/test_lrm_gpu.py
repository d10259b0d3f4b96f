"""GPU checks of the LRM (skipped without CUDA): bf16-mixed Lightning training steps, fused attention, the paper
config's forward at 512²."""

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_mixed_training_steps_through_lightning(tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader

    from lightning_modules.synthetic import build_lrm, lrm_batch

    module = build_lrm("tiny", grad_ckpt=True, deferred=True, device=torch.device("cpu"))
    batch = lrm_batch(module, 2, 3, 32, torch.device("cpu"))
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


def test_transformer_attention_runs_fused_kernels_in_bf16():
    """The LRM transformer's own Attention (cross-attention to DINO tokens and self-attention over the paper's 3072
    triplane tokens) in bf16, restricted to the fused SDPA kernels (a call no fused kernel can take raises), equals
    multi-head attention written out head by head in fp32 from the module's weights."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lightning_modules.networks.lrm.transformer import Attention

    def reference(attn, x, context):  # the module's parameters as fp32: per-head softmax(q kᵀ/√d) v, then out
        w = {k: v.float() for k, v in attn.state_dict().items()}
        x, context = x.float(), context.float()
        dim, heads = w["q.weight"].shape[0], attn.heads
        d = dim // heads
        q = x @ w["q.weight"].T + w["q.bias"]
        kv = context @ w["kv.weight"].T + w["kv.bias"]
        k, v = kv[..., :dim], kv[..., dim:]
        ys = []
        for h in range(heads):
            s = slice(h * d, (h + 1) * d)
            ys.append(torch.softmax(q[..., s] @ k[..., s].transpose(-1, -2) / d ** 0.5, dim=-1) @ v[..., s])
        return torch.cat(ys, dim=-1) @ w["out.weight"].T + w["out.bias"]

    torch.manual_seed(0)
    x = torch.randn(2, 3072, 1024, device="cuda", dtype=torch.bfloat16)  # triplane tokens (paper: 3·32², width 1024)
    image_tokens = torch.randn(2, 1025, 768, device="cuda", dtype=torch.bfloat16)  # DINO ViT-B/16 at 512²
    for attn, context in ((Attention(1024, 16, kv_dim=768), image_tokens), (Attention(1024, 16), None)):
        attn = attn.to("cuda", torch.bfloat16)
        with torch.no_grad():
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
                out = attn(x, context)
            ref = reference(attn, x, x if context is None else context)
        assert out.dtype == torch.bfloat16 and out.shape == (2, 3072, 1024)
        err = ((out.float() - ref).norm() / ref.norm()).item()
        assert err < 2e-2, f"relative error {err:.4f} of the bf16 fused attention against fp32 multi-head attention"


def test_paper_config_forward_bf16():
    from configs import MODEL_DIR, load_model_block
    from geometry.cameras import intrinsics_from_fov
    from geometry.rays import canonical_c2w
    from lightning_modules.networks.lrm.model import LRM

    cfg = load_model_block(MODEL_DIR / "lrm_paper.yaml").init_args
    net = LRM(dict(cfg["encoder"], pretrained=False), cfg["transformer"], cfg["field"], cfg["renderer"],
              cfg["camera_dim"]).cuda().eval()
    K = torch.tensor(intrinsics_from_fov(50.0, 512, 512), dtype=torch.float32, device="cuda")[None]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        planes = net(torch.rand(1, 3, 512, 512, device="cuda"), canonical_c2w(2.0, device="cuda")[None], K)
    assert planes.shape == (1, 3, 80, 64, 64) and torch.isfinite(planes).all()
