"""Triplane NeRF of the LRM: features from three planes → MLP → density + RGB → volume rendering.

Legend:  B batch · R rays · S samples per ray (coarse + importance; paper 64 + 64) · F triplane channels (80)
         P plane resolution (64) · N points

    point x ∈ [-b, b]^3 ─► bilinear from planes xy, xz, yz (B, 3, F, P, P) ─► sum (F) or concat (3F)
                        ─► MLP (paper: 10 linear layers, width 64, SiLU) ─► σ = softplus(raw₀ + bias), rgb = sigmoid

    ray (o, d) ─► [near, far] where it crosses the box ─► S_c stratified samples ─► weights w_i
               ─► S_f importance samples from w ─► all S sorted ─► C = Σ w_i c_i + (1 − Σ w_i)·background
                                                                     D = Σ w_i t_i (z-depth: d has camera z = 1)

Each sample stands for the interval between the midpoints to its neighbours (the first from ``near``, the last to
``far``), so the intervals tile [near, far] exactly. ``t`` is z-depth, not distance: an interval Δt is Δt·|d| long
along the ray (``geometry.rays.section_lengths``, the rule the One-2-3-45 renderer uses too), and its optical
thickness is σ·Δt·|d|. So a constant density σ over a path of length L through the box gives opacity 1 − exp(−σL)
whatever the sampling and whatever the ray's angle to the optical axis.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from geometry.rays import ray_box, section_lengths
from lightning_modules.networks.lrm.lean_mlp import lean_mlp

Field = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # points (B, N, 3) → σ (B, N), rgb (B, N, 3)


class TriplaneField(nn.Module):
    PLANES = ((0, 1), (0, 2), (1, 2))  # xy, xz, yz: the axes each plane spans

    def __init__(self, triplane_dim: int = 80, aggregate: str = "sum", hidden: int = 64, layers: int = 10,
                 bound: float = 1.0, density_bias: float = -1.0, sampler: str = "auto"):
        super().__init__()
        if aggregate not in ("sum", "concat"):
            raise ValueError(f"field.aggregate {aggregate!r}: expected 'sum' or 'concat'")
        if sampler not in ("auto", "grid_sample", "embedding_bag"):
            raise ValueError(f"field.sampler {sampler!r}: expected 'auto', 'grid_sample' or 'embedding_bag'")
        self.sampler = sampler  # as configured; "auto" is resolved per call from the planes' device (sampler_on)
        if layers < 2:
            raise ValueError(f"field.layers must be at least 2 (input and output layers), got {layers}")
        self.aggregate, self.bound, self.density_bias = aggregate, bound, density_bias
        width_in = triplane_dim * (3 if aggregate == "concat" else 1)
        dims = [width_in] + [hidden] * (layers - 1)
        mlp: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mlp += [nn.Linear(a, b), nn.SiLU()]
        self.mlp = nn.Sequential(*mlp, nn.Linear(hidden, 4))

    def features(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """planes (B, 3, F, P, P), points (B, N, 3) → features (B, N, F or 3F).

        Two samplers compute the same bilinear interpolation (align_corners=False, border padding):
        ``grid_sample``, and ``embedding_bag`` — the planes as a table of texels and each point as a bag of its 4
        (per plane) weighted texels; its backward reduces by sorted index instead of atomic adds, which matters on
        GPUs where millions of samples land on the same 64² texels. ``auto`` picks per device (:func:`sampler_for`)."""
        if self.sampler_on(planes.device) == "embedding_bag":
            return self._features_embedding_bag(planes, points)
        b, _, f, h, w = planes.shape
        coords = torch.stack([points[..., list(axes)] for axes in self.PLANES], dim=1) / self.bound  # (B, 3, N, 2)
        # grid_sample's CPU kernels split the work by batch entry: G channel groups per plane as entries of their
        # own (same grid) keep every thread busy (B·3 = 3 entries on 2 threads left one idle for a third of the
        # backward). Output and gradients are the same numbers, in the same memory: (B·3·G, F/G, …) = (B, 3, F, …)
        g = channel_groups(b * 3, f, planes.device)
        grid = coords.unsqueeze(2).expand(-1, -1, g, -1, -1).reshape(b * 3 * g, -1, 1, 2)  # (B·3·G, N, 1, 2)
        sampled = F.grid_sample(planes.reshape(b * 3 * g, f // g, h, w), grid.to(planes.dtype), mode="bilinear",
                                padding_mode="border", align_corners=False)  # (B·3·G, F/G, N, 1)
        sampled = sampled.view(b, 3, f, -1)  # (B, 3, F, N)
        # reduced where each plane's (F, N) block is contiguous, then viewed (B, N, ·): the MLP's first Linear reads
        # the transposed layout as it is (a strided sum and a gather copy each way, ≈ 20 ms a query at lrm_small)
        aggregated = sampled.sum(dim=1) if self.aggregate == "sum" else sampled.flatten(1, 2)  # (B, F or 3F, N)
        return aggregated.transpose(1, 2)

    def _features_embedding_bag(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        b, _, f, h, w = planes.shape
        n = points.shape[1]
        dtype = torch.promote_types(planes.dtype, torch.float32)  # bf16 planes are sampled in fp32, as grid_sample
        table = planes.permute(0, 1, 3, 4, 2).reshape(b * 3 * h * w, f).to(dtype)  # texel rows (B·3·P·P, F)
        idx, wts = [], []
        for p, axes in enumerate(self.PLANES):
            uv = points[..., list(axes)].to(dtype) / self.bound  # (B, N, 2) in [-1, 1]: x → width, y → height
            x = (((uv[..., 0] + 1) * w - 1) / 2).clamp(0, w - 1)
            y = (((uv[..., 1] + 1) * h - 1) / 2).clamp(0, h - 1)
            x0, y0 = x.floor(), y.floor()
            wx, wy = x - x0, y - y0
            x0, y0 = x0.long(), y0.long()
            x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
            base = (torch.arange(b, device=points.device)[:, None] * 3 + p) * (h * w)  # (B, 1)
            idx.append(torch.stack([base + y0 * w + x0, base + y0 * w + x1, base + y1 * w + x0,
                                    base + y1 * w + x1], dim=-1))  # (B, N, 4)
            wts.append(torch.stack([(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy], dim=-1))
        idx, wts = torch.stack(idx, dim=2), torch.stack(wts, dim=2)  # (B, N, 3, 4)
        bag = 12 if self.aggregate == "sum" else 4  # sum: one bag of all 12 taps; concat: a bag per plane
        out = F.embedding_bag(idx.reshape(-1, bag), table, mode="sum", per_sample_weights=wts.reshape(-1, bag))
        return out.view(b, n, f) if self.aggregate == "sum" else out.view(b, n, 3 * f)

    def sampler_on(self, device: torch.device) -> str:
        """The sampler this field uses for planes on ``device``: the configured one, ``auto`` resolved."""
        return sampler_for(self.sampler, device)

    def training_bytes_per_point(self) -> int:
        """Estimated activation bytes one training sample keeps for backward (fp32): the MLP's layer and activation
        inputs, the sampler's taps and weights (the sampler of the field's device), and the compositing terms."""
        widths = [m.in_features for m in self.mlp if isinstance(m, nn.Linear)]
        mlp = sum(widths)  # the first Linear's input, each SiLU's input (lean_mlp recomputes the SiLU's output)
        first = next(m for m in self.mlp if isinstance(m, nn.Linear))
        sampler = self.sampler_on(first.weight.device)
        taps = 12 * (8 + 4) if sampler == "embedding_bag" else 3 * 2 * 4
        return 4 * (mlp + 32) + taps

    def forward(self, planes: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = lean_mlp(self.mlp, self.features(planes, points))  # = self.mlp(...), half its saved activations
        sigma = F.softplus(raw[..., 0].float() + self.density_bias)
        rgb = torch.sigmoid(raw[..., 1:].float()) * (1 + 2e-3) - 1e-3  # reachable 0 and 1 (as in EG3D)
        return sigma, rgb


def channel_groups(entries: int, channels: int, device: torch.device) -> int:
    """Channel groups G per plane for ``grid_sample`` on ``device``: 1 off the CPU (its kernels spread the points over
    the device); on a CPU, whose kernels give each thread whole batch entries, the fewest groups (a divisor of
    ``channels``, ≥ 8 channels each) that split ``entries``·G entries most evenly over torch's threads: 2 for
    lrm_small's 3 planes on 2 threads (the backward 117 → 74 ms a query), 5 on 16 threads."""
    if device.type != "cpu":
        return 1
    threads = torch.get_num_threads()

    def balance(g: int) -> float:  # the share of thread slots that have work: entries·G over whole waves of threads
        return entries * g / (threads * math.ceil(entries * g / threads))

    options = [g for g in range(1, channels + 1) if channels % g == 0 and (g == 1 or channels // g >= 8)]
    return max(options, key=lambda g: (balance(g), -g))  # the best balance, and of those the fewest groups


def sampler_for(sampler: str, device: torch.device) -> str:
    """``field.sampler`` on ``device``: an explicit ``grid_sample`` / ``embedding_bag`` as given; ``auto`` →
    ``embedding_bag`` on CUDA (its backward reduces by sorted index: 3.4× faster than grid_sample's atomic adds on an
    H200) and ``grid_sample`` elsewhere (on a CPU embedding_bag's backward, an index sort and a dense reduction, takes
    ≈ 0.27 s a query of the small config against grid_sample's ≈ 0.17 s; BENCHMARKS.md, peer section). Same maths
    either way. A function of the device's type alone: no host sync."""
    if sampler != "auto":
        return sampler
    return "embedding_bag" if device.type == "cuda" else "grid_sample"


def device_memory(device: torch.device) -> int:
    """Bytes of memory of ``device``: a GPU's total memory, or the machine's physical memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _edges(t: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Interval edges (…, S+1) of sorted samples t (…, S): near, midpoints, far."""
    mid = 0.5 * (t[..., 1:] + t[..., :-1])
    return torch.cat([near[..., None], mid, far[..., None]], dim=-1)


def composite(sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor, near: torch.Tensor, far: torch.Tensor,
              dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights (…, S), colour (…, 3), opacity (…,), depth (…,) of sorted samples t (…, S) along rays with
    directions ``dirs`` (…, 3); the intervals are measured along the ray (Δt·|d|), the depth is Σ w_i t_i."""
    delta = section_lengths(_edges(t, near, far), dirs).clamp(min=0)
    tau = sigma * delta
    alpha = 1 - torch.exp(-tau)
    # transmittance before each sample: exp(-Σ_{j<i} τ_j) (exclusive cumulative sum; stabler than a product)
    trans = torch.exp(-torch.cumsum(torch.cat([torch.zeros_like(tau[..., :1]), tau[..., :-1]], dim=-1), dim=-1))
    w = alpha * trans
    return w, (w[..., None] * rgb).sum(dim=-2), w.sum(dim=-1), (w * t).sum(dim=-1)


def sample_pdf(edges: torch.Tensor, weights: torch.Tensor, n: int, deterministic: bool) -> torch.Tensor:
    """``n`` samples (…, n) from the piecewise-constant density of ``weights`` (…, S) over bins ``edges`` (…, S+1)."""
    w = weights + 1e-5  # rays with no weight sample uniformly
    pdf = w / w.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, dim=-1)], dim=-1).clamp(max=1)
    if deterministic:
        u = torch.linspace(0.5 / n, 1 - 0.5 / n, n, device=w.device, dtype=w.dtype).expand(*w.shape[:-1], n)
    else:
        u = torch.rand(*w.shape[:-1], n, device=w.device, dtype=w.dtype)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    c0, c1 = cdf.gather(-1, idx - 1), cdf.gather(-1, idx)
    e0, e1 = edges.gather(-1, idx - 1), edges.gather(-1, idx)
    frac = ((u - c0) / (c1 - c0).clamp(min=1e-8)).clamp(0, 1)
    return e0 + frac * (e1 - e0)


class VolumeRenderer(nn.Module):
    """Renders rays through a field: ``num_coarse`` stratified + ``num_fine`` importance samples per ray."""

    def __init__(self, num_coarse: int = 64, num_fine: int = 64, bound: float = 1.0, chunk: int = 32768,
                 deferred_backprop: Optional[bool] = None, defer_above: float = 0.25):
        super().__init__()
        if not 0 < defer_above <= 1:
            raise ValueError(f"renderer.defer_above {defer_above!r}: a fraction of the device's memory in (0, 1]")
        self.num_coarse, self.num_fine, self.bound = num_coarse, num_fine, bound
        self.chunk, self.deferred_backprop, self.defer_above = chunk, deferred_backprop, defer_above

    def defers(self, rays: int, bytes_per_point: int, device: torch.device) -> bool:
        """Whether a training render of ``rays`` rays defers back-propagation. ``deferred_backprop`` true or false
        decides; ``None`` (auto) defers when the render's activations — an estimate: ``bytes_per_point`` for each of
        the rays' samples — would take more than ``defer_above`` of the device's memory. Deferring re-renders every
        chunk during backward (about half the render's time again), so it pays only where the memory is needed."""
        if self.deferred_backprop is not None:
            return self.deferred_backprop
        need = rays * (self.num_coarse + self.num_fine) * bytes_per_point
        return need > self.defer_above * device_memory(device)

    def render_rays(self, field: Field, origins: torch.Tensor, dirs: torch.Tensor, background: torch.Tensor,
                    stratified: bool) -> dict[str, torch.Tensor]:
        """origins, dirs (B, R, 3), background (B, 3) → rgb (B, R, 3), opacity (B, R), depth (B, R)."""
        d32 = dirs.float()  # the box test's and the intervals' (composite) directions
        near, far, hit = ray_box(origins.float(), d32, -self.bound, self.bound)
        bins = torch.linspace(0, 1, self.num_coarse + 1, device=origins.device)
        u = torch.rand(*near.shape, self.num_coarse, device=origins.device) if stratified else 0.5
        t = near[..., None] + (far - near)[..., None] * (bins[:-1] + u / self.num_coarse)  # (B, R, S_c)

        def query(ts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pts = origins[..., None, :] + ts[..., None] * dirs[..., None, :]  # (B, R, S, 3)
            b, r, s, _ = pts.shape
            sigma, rgb = field(pts.reshape(b, r * s, 3))
            sigma = sigma.reshape(b, r, s) * hit[..., None]  # rays that miss the box see nothing
            return sigma, rgb.reshape(b, r, s, 3)

        sigma, rgb = query(t)
        if self.num_fine:
            with torch.no_grad():
                w, _, _, _ = composite(sigma, rgb, t, near, far, d32)
                t_fine = sample_pdf(_edges(t, near, far), w, self.num_fine, deterministic=not stratified)
            sigma_f, rgb_f = query(t_fine)
            t, order = torch.sort(torch.cat([t, t_fine], dim=-1), dim=-1)
            sigma = torch.cat([sigma, sigma_f], dim=-1).gather(-1, order)
            rgb = torch.cat([rgb, rgb_f], dim=-2).gather(-2, order[..., None].expand(-1, -1, -1, 3))
        _, colour, opacity, depth = composite(sigma, rgb, t, near, far, d32)
        colour = colour + (1 - opacity[..., None]) * background[:, None, :].to(colour.dtype)
        return {"rgb": colour, "opacity": opacity, "depth": depth}

    def forward(self, field: Field, origins: torch.Tensor, dirs: torch.Tensor, background: torch.Tensor,
                stratified: bool = False, bytes_per_point: int = 4096) -> dict[str, torch.Tensor]:
        """Chunks of ``chunk`` rays (all samples of the batch together). When the render defers (:meth:`defers`;
        ``bytes_per_point``: the field's activation bytes per sample) each chunk is rendered without keeping its
        activations and re-rendered, chunk by chunk, when the image gradient comes back (deferred back-propagation:
        full-image losses at the memory of one chunk); the re-render replays the chunk's random draws, so both ways
        compute the same images and gradients."""
        outs = []
        defer = torch.is_grad_enabled() and self.defers(origins.shape[0] * origins.shape[1], bytes_per_point,
                                                        origins.device)
        step = max(1, self.chunk // origins.shape[0])  # ``chunk`` counts rays over the whole batch
        for start in range(0, origins.shape[1], step):
            o, d = origins[:, start:start + step], dirs[:, start:start + step]
            if defer:
                outs.append(checkpoint(self.render_rays, field, o, d, background, stratified, use_reentrant=False))
            else:
                outs.append(self.render_rays(field, o, d, background, stratified))
        return {k: torch.cat([o[k] for o in outs], dim=1) for k in outs[0]}
