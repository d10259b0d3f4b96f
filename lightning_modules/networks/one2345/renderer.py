"""NeuS volume rendering of an SDF (Wang et al., NeurIPS 2021), as One-2-3-45's SparseNeuS-style module uses it.

Legend:  B batch · R rays · S sections per ray (64 coarse + 64 up-sampled = 128) · K = S + 1 section edges
         N points (R·S) · F SDF feature channels

    ray (o, d) ─► [near, far] where it crosses [-1, 1]^3 ─► K_c = 65 edges (64 equal sections, jittered if stratified)
               ─► NeuS up-sampling: 4 steps × 16 edges from sample_pdf on the weights of a fixed s = 64·2^i
               ─► section midpoints m_i ─► sdf_fn ─► f_i, features; ∇f_i by autograd ─► colour_fn ─► c_i
               ─► f at the section ends: f_i ± ½ cos_i δ_i ─► α_i = max(1 − Φ_s(f_i⁺)/Φ_s(f_i⁻), 0)
               ─► w_i = α_i Π_{j<i}(1 − α_j) ─► C = Σ w_i c_i + (1 − Σ w_i)·background, D = Σ w_i m_i

t is the ray parameter of ``geometry.rays``: directions have camera-frame z = 1, so t (and the depth D) is
z-depth. SDF values and the cosines are metric, so a section's length is δ_i = Δt_i·|d| (``section_lengths``, the
rule the LRM renderer integrates with too) and cos_i = d̂·∇f_i.
Sections tile [near, far] exactly (the edges run from near to far); rays that miss the box have near = far and
render background, opacity 0, depth 0. Φ_s(x) = sigmoid(s·x) with s = exp(10·v) learned (``LearnedVariance``).

α is computed in log space: log(1 − α_i) = min(log Φ_s(f_i⁺) − log Φ_s(f_i⁻), 0), which is NeuS's α without its
+1e-5 guards (no NaN where Φ_s underflows inside a surface, and no spurious opacity in empty space); the
transmittance is then exp of an exclusive cumulative sum, as in the LRM's compositing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from geometry.rays import ray_box, section_lengths
from lightning_modules.networks.lrm.renderer import sample_pdf

SDF = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # points (B, N, 3) → sdf (B, N), features (B, N, F)
# points (B, N, 3), unit view directions (B, N, 3), SDF gradients (B, N, 3), features (B, N, F) → rgb (B, N, 3)
Colour = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class LearnedVariance(nn.Module):
    """NeuS's single variance parameter: s = exp(10·v), the inverse standard deviation of the logistic Φ_s."""

    def __init__(self, init: float = 0.3):
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        """s (a 0-d tensor), clipped to [1e-6, 1e6] as in NeuS."""
        return torch.exp(self.variance * 10.0).clamp(1e-6, 1e6)


def log_transmit(f_prev: torch.Tensor, f_next: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """log(1 − α) of sections whose SDF goes from ``f_prev`` to ``f_next``:
    min(log Φ_s(f_next) − log Φ_s(f_prev), 0)."""
    return (F.logsigmoid(s * f_next) - F.logsigmoid(s * f_prev)).clamp(max=0)


def weights_from_log_transmit(log_t: torch.Tensor) -> torch.Tensor:
    """w_i = α_i · Π_{j<i}(1 − α_j) from log(1 − α) (…, S)."""
    alpha = -torch.expm1(log_t)
    before = torch.cumsum(torch.cat([torch.zeros_like(log_t[..., :1]), log_t[..., :-1]], dim=-1), dim=-1)
    return alpha * torch.exp(before)


def upsample_weights(t: torch.Tensor, sdf: torch.Tensor, dirs: torch.Tensor, s: float) -> torch.Tensor:
    """NeuS's up-sampling weights (…, K−1) of the sections between edges ``t`` (…, K) with SDF ``sdf`` (…, K) on
    rays with directions ``dirs`` (…, 3).

    Each section's slope is the finite difference of its ends, replaced by the previous section's when that is
    steeper downhill (``min``) and clamped to [−1e3, 0]; the SDF at the section ends is re-estimated from the
    mid-point value along that slope (NeuS ``up_sample``)."""
    dist = section_lengths(t, dirs)  # metric section lengths (…, K−1)
    mid = 0.5 * (sdf[..., 1:] + sdf[..., :-1])
    cos = (sdf[..., 1:] - sdf[..., :-1]) / dist.clamp(min=1e-5)
    prev_cos = torch.cat([torch.zeros_like(cos[..., :1]), cos[..., :-1]], dim=-1)
    cos = torch.minimum(cos, prev_cos).clamp(-1e3, 0.0)
    return weights_from_log_transmit(log_transmit(mid - 0.5 * cos * dist, mid + 0.5 * cos * dist, s))


def eikonal_loss(sdf_gradients: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Mean of (|∇f| − 1)² over the samples inside the box: gradients (B, N, 3), inside (B, N) bool."""
    err = (sdf_gradients.norm(dim=-1) - 1.0) ** 2
    mask = inside.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp(min=1.0)


class NeuSRenderer(nn.Module):
    """Renders rays through an SDF field with NeuS's unbiased, occlusion-aware weights.

    ``num_coarse`` equal sections, then ``num_importance`` edges in ``upsample_steps`` NeuS up-sampling steps with
    the fixed s = ``base_inv_s``·2^i (NeuS: 64 + 64 in 4 steps from s = 64). The final s is the learned one."""

    def __init__(self, num_coarse: int = 64, num_importance: int = 64, upsample_steps: int = 4,
                 base_inv_s: float = 64.0, bound: float = 1.0, chunk: int = 4096, init_variance: float = 0.3):
        super().__init__()
        if num_importance and (upsample_steps < 1 or num_importance % upsample_steps):
            raise ValueError(f"num_importance {num_importance} must split evenly into upsample_steps "
                             f"{upsample_steps} (NeuS: 64 in 4 steps of 16)")
        self.num_coarse, self.num_importance, self.upsample_steps = num_coarse, num_importance, upsample_steps
        self.base_inv_s, self.bound, self.chunk = base_inv_s, bound, chunk
        self.variance = LearnedVariance(init_variance)

    def edges(self, sdf_fn: SDF, origins: torch.Tensor, dirs: torch.Tensor, near: torch.Tensor, far: torch.Tensor,
              stratified: bool) -> torch.Tensor:
        """Sorted section edges (B, R, K) from near to far: coarse, then NeuS up-sampling (no gradients)."""
        b, r = near.shape
        k = torch.arange(self.num_coarse + 1, device=near.device, dtype=near.dtype)
        if stratified:  # interior edges jitter within ±½ section: still sorted, ends stay at near and far
            k = k + (torch.rand(b, r, self.num_coarse + 1, device=near.device) - 0.5)
            k[..., 0], k[..., -1] = 0.0, float(self.num_coarse)
        t = near[..., None] + (far - near)[..., None] * k / self.num_coarse  # (B, R, K_c)
        if not self.num_importance:
            return t

        def sdf_at(ts: torch.Tensor) -> torch.Tensor:
            pts = rearrange(origins[..., None, :] + ts[..., None] * dirs[..., None, :], "b r k c -> b (r k) c")
            return rearrange(sdf_fn(pts)[0].float(), "b (r k) -> b r k", r=r)

        sdf = sdf_at(t)
        per_step = self.num_importance // self.upsample_steps
        for i in range(self.upsample_steps):
            w = upsample_weights(t, sdf, dirs, self.base_inv_s * 2 ** i)  # (B, R, K−1)
            t_new = sample_pdf(t, w, per_step, deterministic=True)  # NeuS up-samples deterministically
            t, order = torch.sort(torch.cat([t, t_new], dim=-1), dim=-1)
            if i + 1 < self.upsample_steps:  # the last step's SDF is not needed
                sdf = torch.cat([sdf, sdf_at(t_new)], dim=-1).gather(-1, order)
        return t

    def render_rays(self, sdf_fn: SDF, colour_fn: Colour, origins: torch.Tensor, dirs: torch.Tensor,
                    background: torch.Tensor, stratified: bool, cos_anneal_ratio: float = 1.0
                    ) -> dict[str, torch.Tensor]:
        """One chunk: origins, dirs (B, R, 3), background (B, 3) → the outputs of :meth:`forward`."""
        origins, dirs = origins.float(), dirs.float()
        near, far, hit = ray_box(origins, dirs, -self.bound, self.bound)
        with torch.no_grad():
            t = self.edges(sdf_fn, origins, dirs, near, far, stratified)  # (B, R, K)
        mid = 0.5 * (t[..., 1:] + t[..., :-1])  # (B, R, S) section midpoints
        dist = section_lengths(t, dirs)  # (B, R, S) metric section lengths
        unit = dirs / dirs.norm(dim=-1, keepdim=True)
        s = mid.shape[-1]

        # SDF and its gradient at the midpoints; create_graph when the caller will backpropagate (training,
        # eikonal loss), so the normals stay differentiable w.r.t. the field's parameters
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            pts = rearrange(origins[..., None, :] + mid[..., None] * dirs[..., None, :], "b r s c -> b (r s) c")
            if not pts.requires_grad:
                pts.requires_grad_(True)
            sdf, feats = sdf_fn(pts)  # (B, N), (B, N, F)
            grads = torch.autograd.grad(sdf, pts, torch.ones_like(sdf), create_graph=create_graph,
                                        retain_graph=create_graph)[0]  # (B, N, 3)
        if not create_graph:
            sdf, feats, grads, pts = sdf.detach(), feats.detach(), grads.detach(), pts.detach()
        view = repeat(unit, "b r c -> b (r s) c", s=s)
        rgb = rearrange(colour_fn(pts, view, grads, feats).float(), "b (r s) c -> b r s c", s=s)

        # NeuS's section opacity from the SDF at the section ends, estimated along the (annealed) cosine
        sdf = rearrange(sdf.float(), "b (r s) -> b r s", s=s)
        true_cos = rearrange((view * grads).sum(dim=-1).float(), "b (r s) -> b r s", s=s)
        iter_cos = -(F.relu(-true_cos * 0.5 + 0.5) * (1.0 - cos_anneal_ratio) + F.relu(-true_cos) * cos_anneal_ratio)
        inv_s = self.variance()
        log_t = log_transmit(sdf - iter_cos * dist * 0.5, sdf + iter_cos * dist * 0.5, inv_s)
        log_t = log_t * hit[..., None]  # rays that miss the box see nothing (their sections have length 0 anyway)
        weights = weights_from_log_transmit(log_t)  # (B, R, S)

        opacity = weights.sum(dim=-1)
        colour = (weights[..., None] * rgb).sum(dim=-2) + (1 - opacity[..., None]) * background[:, None, :].float()
        return {"rgb": colour, "opacity": opacity, "depth": (weights * mid).sum(dim=-1), "weights": weights,
                "samples": mid, "sdf_gradients": grads,
                "inside": repeat(hit, "b r -> b (r s)", s=s)}

    def forward(self, sdf_fn: SDF, colour_fn: Colour, origins: torch.Tensor, dirs: torch.Tensor,
                background: torch.Tensor, stratified: bool = False, cos_anneal_ratio: float = 1.0
                ) -> dict[str, torch.Tensor]:
        """origins, dirs (B, R, 3) (``geometry.rays`` directions), background (B, 3) →

        rgb (B, R, 3), opacity (B, R), depth (B, R) (Σ w_i t_i: z-depth, 0 for a miss; divide by opacity for the
        expected depth of the surface alone), weights and samples (B, R, S) (section midpoints t_i),
        sdf_gradients (B, R·S, 3) (ray-major, as the points passed to ``sdf_fn``; for the eikonal loss and normals)
        and inside (B, R·S) (the sample's ray crosses the box; the mask for :func:`eikonal_loss`).

        Rays go in chunks of ``chunk`` rays over the whole batch; ``cos_anneal_ratio`` < 1 is NeuS's early-training
        cosine annealing (1 = none)."""
        outs = []
        step = max(1, self.chunk // origins.shape[0])
        for start in range(0, origins.shape[1], step):
            outs.append(self.render_rays(sdf_fn, colour_fn, origins[:, start:start + step], dirs[:, start:start + step],
                                         background, stratified, cos_anneal_ratio))
        return {k: torch.cat([o[k] for o in outs], dim=1) for k in outs[0]}
