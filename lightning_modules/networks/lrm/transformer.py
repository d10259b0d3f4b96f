"""Camera-modulated image-to-triplane transformer of the LRM.

Legend:  B batch · T = 3·h·w triplane tokens (paper: 3·32·32 = 3072) · D transformer width (1024)
         L image tokens (1 + 32·32) · E image-token width (768) · C_cam camera-embedding width (1024)
         P = 2·h plane resolution after upsampling (64) · F triplane feature channels (80)

    camera (B, 20) ──MLP──► c (B, C_cam)
    learnable tokens (T, D) ─► [ ModLN_c → cross-attn(image tokens) → ModLN_c → self-attn → ModLN_c → MLP ] × layers
                             ─► LN ─► (B, 3, D, h, w) ─► ConvTranspose 2×2/2 ─► triplane (B, 3, F, P, P)

    ModLN_c(f) = LN(f) · (1 + γ(c)) + β(c)       (γ, β from an MLP of the camera embedding)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

CAMERA_DIM = 20  # 4×4 extrinsic flattened (16) + fx, fy, cx, cy normalised by the image size (4)


def camera_features(c2w: torch.Tensor, K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4, 4) c2w + (B, 3, 3) K in pixels → (B, 20) camera features (intrinsics divided by the image size)."""
    intr = torch.stack([K[:, 0, 0] / width, K[:, 1, 1] / height, K[:, 0, 2] / width, K[:, 1, 2] / height], dim=-1)
    return torch.cat([c2w.flatten(1), intr], dim=-1)


class CameraEmbedder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(CAMERA_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, cam: torch.Tensor) -> torch.Tensor:  # (B, 20) → (B, C_cam)
        return self.mlp(cam)


class ModLN(nn.Module):
    """LayerNorm whose scale and shift are modulated by a condition: LN(f)·(1 + γ) + β, γ, β = MLP(c).

    LN's own affine (w, b) and the modulation fold into one per-sample affine on the normalised f̂:
    LN(f)·(1 + γ) + β = f̂·w(1 + γ) + (b(1 + γ) + β). One sample takes a single LayerNorm pass with that affine; a
    batch normalises without affine and applies it in one ``addcmul``. Same maths as the three-pass form (outputs and
    gradients equal to fp32 rounding) with fewer passes over (B, T, D) each way: a ModLN's forward + backward takes 0.6
    of the CPU time at lrm_small's sizes (17 → 10 ms on one thread), a few percent of a transformer block's
    (``benchmarks/lrm_attention_ab.py``).
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # x (B, T, D), cond (B, C)
        gamma, beta = self.mlp(cond).chunk(2, dim=-1)  # (B, D) each
        scale = 1 + gamma
        weight, bias = self.norm.weight * scale, self.norm.bias * scale + beta  # (B, D): the folded affine
        shape, eps = self.norm.normalized_shape, self.norm.eps
        if x.shape[0] == 1:
            return F.layer_norm(x, shape, weight[0], bias[0], eps)
        return torch.addcmul(bias.unsqueeze(1), F.layer_norm(x, shape, eps=eps), weight.unsqueeze(1))


class Attention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        kv_dim = kv_dim or dim
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = rearrange(self.q(x), "b t (h d) -> b h t d", h=self.heads)
        k, v = rearrange(self.kv(context), "b l (two h d) -> two b h l d", two=2, h=self.heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(rearrange(y, "b h t d -> b t (h d)"))


class TriplaneBlock(nn.Module):
    def __init__(self, dim: int, heads: int, image_dim: int, cond_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_cross, self.cross = ModLN(dim, cond_dim), Attention(dim, heads, kv_dim=image_dim)
        self.norm_self, self.attn = ModLN(dim, cond_dim), Attention(dim, heads)
        self.norm_mlp = ModLN(dim, cond_dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, image_tokens: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        x = x + self.cross(self.norm_cross(x, cam), image_tokens)
        x = x + self.attn(self.norm_self(x, cam))
        return x + self.mlp(self.norm_mlp(x, cam))


class TriplaneTransformer(nn.Module):
    def __init__(self, image_dim: int = 768, dim: int = 1024, layers: int = 16, heads: int = 16,
                 cond_dim: int = 1024, token_res: int = 32, triplane_dim: int = 80, mlp_ratio: float = 4.0,
                 grad_checkpointing: bool = False):
        super().__init__()
        self.token_res, self.dim = token_res, dim
        self.grad_checkpointing = grad_checkpointing
        self.pos_embed = nn.Parameter(torch.randn(3 * token_res ** 2, dim) * (1.0 / dim) ** 0.5)
        self.blocks = nn.ModuleList(TriplaneBlock(dim, heads, image_dim, cond_dim, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.upsample = nn.ConvTranspose2d(dim, triplane_dim, kernel_size=2, stride=2)

    def forward(self, image_tokens: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        """image tokens (B, L, E), camera embedding (B, C_cam) → triplane (B, 3, F, 2h, 2w)."""
        x = self.pos_embed.unsqueeze(0).expand(image_tokens.shape[0], -1, -1)  # (B, T, D)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, image_tokens, cam, use_reentrant=False)
            else:
                x = block(x, image_tokens, cam)
        x = self.norm(x)
        x = rearrange(x, "b (p h w) d -> (b p) d h w", p=3, h=self.token_res)  # (B·3, D, h, w)
        planes = self.upsample(x)  # (B·3, F, 2h, 2w)
        return rearrange(planes, "(b p) f h w -> b p f h w", p=3)
