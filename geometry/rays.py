"""Torch side of the camera convention (``geometry.cameras`` states it): projection, rays, ray–box clipping,
canonical cameras.

All functions take batched tensors on any device; ``c2w`` is OpenCV camera-to-world (…, 4, 4), ``K`` is in pixels
(skew ``K[0, 1]`` honoured). :func:`project` is the torch twin of ``geometry.cameras.project_points``.

Ray directions are **not** unit vectors: a ray's direction is ``R @ K⁻¹ (u, v, 1)``, whose camera-frame z is 1, so
the ray parameter ``t`` of a point *is* its z-depth — rendered depth compares with the shards' z-depth as it is.
A step Δt along a ray is Δt·|d| long (:func:`section_lengths`, the one rule both renderers integrate with).
"""

from __future__ import annotations

import torch

from geometry.cameras import spherical_c2w


def pixel_centres(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H, W, 2) pixel-centre coordinates (u + 0.5, v + 0.5) — the torch twin of ``cameras.pixel_grid``."""
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype) + 0.5,
                          torch.arange(width, device=device, dtype=dtype) + 0.5, indexing="ij")
    return torch.stack([u, v], dim=-1)


def camera_rays(c2w: torch.Tensor, K: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through every pixel centre: origins and directions (…, H, W, 3) for cameras (…, 4, 4) / (…, 3, 3)."""
    uv = pixel_centres(height, width, device=c2w.device, dtype=c2w.dtype)  # (H, W, 2)
    lead = c2w.shape[:-2]
    fx, fy, skew = K[..., 0, 0, None, None], K[..., 1, 1, None, None], K[..., 0, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    y = (uv[..., 1] - cy) / fy  # (…, H, W)
    x = (uv[..., 0] - cx - skew * y) / fx
    cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # camera-frame direction with z = 1
    dirs = torch.einsum("...ij,...hwj->...hwi", c2w[..., :3, :3], cam)
    origins = c2w[..., None, None, :3, 3].expand(*lead, height, width, 3)
    return origins, dirs


def project(points: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, near: float = 1e-3
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (…, N, 2) and z-depths (…, N) of world points (…, N, 3) in cameras ``c2w`` (…, 4, 4),
    ``K`` (…, 3, 3); leading dimensions broadcast (points (B, 1, N, 3) with cameras (B, V, 4, 4) → (B, V, N, …)).

    u = (fx·x + s·y)/z + cx, v = fy·y/z + cy in the camera frame (s = K[0, 1], the skew). The division uses z clamped
    to ``near``, so uv is finite everywhere but means nothing where z ≤ near; callers cull or mask those points.
    """
    w2c = invert_rigid(c2w.to(points.dtype))
    K = K.to(points.dtype)
    cam = torch.einsum("...ij,...nj->...ni", w2c[..., :3, :3], points) + w2c[..., None, :3, 3]
    x, y, z = cam.unbind(dim=-1)
    safe_z = z.clamp(min=near)
    u = (K[..., 0, 0, None] * x + K[..., 0, 1, None] * y) / safe_z + K[..., 0, 2, None]
    v = K[..., 1, 1, None] * y / safe_z + K[..., 1, 2, None]
    return torch.stack([u, v], dim=-1), z


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, lo: float = -1.0, hi: float = 1.0,
            min_near: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test against the axis-aligned cube [lo, hi]^3: ``near``, ``far`` (…,) and ``hit`` (…,) bool.

    ``near`` is clamped to ``min_near`` (a camera inside the box starts there); rays that miss get near = far.
    """
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (lo - origins) / safe, (hi - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=min_near)
    far = torch.maximum(t0, t1).amin(dim=-1)
    hit = far > near
    far = torch.where(hit, far, near)
    return near, far, hit


def section_lengths(edges: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Metric lengths (…, K−1) of the sections between sorted ray parameters ``edges`` (…, K) of rays with
    directions ``dirs`` (…, 3): Δt·|d|.

    ``t`` is z-depth (the directions have camera-frame z = 1, see above), so a step Δt covers Δt·|d| along the ray;
    renderers integrate density (σ·length) or step an SDF over these lengths, never over Δt itself."""
    return edges.diff(dim=-1) * dirs.norm(dim=-1, keepdim=True)


def canonical_c2w(distance: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """The canonical source camera: ``distance`` in front of the object (azimuth 0, elevation 0, i.e. on −Y),
    looking at the origin, image-up = +Z."""
    return torch.as_tensor(spherical_c2w(0.0, 0.0, float(distance)), dtype=dtype, device=device)


def invert_rigid(m: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid (…, 4, 4) transforms — the torch twin of ``cameras.invert_rigid``."""
    rot_t = m[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(m)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ m[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def _scale_translation(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    out = m.clone()
    out[..., :3, 3] = m[..., :3, 3] * s[..., None]
    return out


def canonical_transform(source_c2w: torch.Tensor, distance: float | None = 2.0
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(C, M, s)`` for source cameras (B, 4, 4): the canonical camera C, the rigid move M and the scale s of
    :func:`canonicalize_cameras` (a world point x goes to ``M (s·x)``)."""
    centre_dist = source_c2w[..., :3, 3].norm(dim=-1)
    scale = torch.ones_like(centre_dist) if distance is None else distance / centre_dist.clamp(min=1e-8)
    src = _scale_translation(source_c2w, scale)
    dist = src[..., :3, 3].norm(dim=-1)  # = distance, or the source's own
    # the canonical rotation does not depend on the distance: one unit camera, its centre scaled per sample
    unit = canonical_c2w(1.0, source_c2w.dtype, source_c2w.device)
    canon = _scale_translation(unit.expand_as(source_c2w), dist)
    return canon, canon @ invert_rigid(src), scale


def canonicalize_cameras(source_c2w: torch.Tensor, c2w: torch.Tensor, distance: float | None = 2.0
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move each sample's world so its source camera becomes the canonical camera (LRM's camera normalisation).

    ``source_c2w`` (B, 4, 4), ``c2w`` (B, N, 4, 4) the sample's other cameras. The world is first scaled by
    ``s = distance / |source camera centre|`` (``distance=None``: s = 1 and the canonical camera sits at the
    source's own distance), then moved rigidly by ``M = C · S⁻¹`` (C canonical, S the scaled source), so that the
    source lands exactly on C. Relative poses are unchanged up to that scale (``c2w_i⁻¹ c2w_j`` keeps its rotation,
    its translation is scaled by s), and a source camera that looks at the origin keeps the origin fixed.

    Returns ``(canonical source c2w (B, 4, 4), moved c2w (B, N, 4, 4), s (B,))``; depths of the moved scene are
    the original depths × s.
    """
    canon, move, scale = canonical_transform(source_c2w, distance)
    moved = move[:, None] @ _scale_translation(c2w, scale[:, None])
    return canon, moved, scale


def world_to_canonical(points: torch.Tensor, source_c2w: torch.Tensor, distance: float | None = 2.0
                       ) -> torch.Tensor:
    """World points (P, 3) of one sample (source camera (4, 4)) → the canonical frame."""
    _, move, scale = canonical_transform(source_c2w[None], distance)
    return (points * scale[0]) @ move[0, :3, :3].T + move[0, :3, 3]


def canonical_to_world(points: torch.Tensor, source_c2w: torch.Tensor, distance: float | None = 2.0
                       ) -> torch.Tensor:
    """Inverse of :func:`world_to_canonical`: canonical-frame points (e.g. an exported mesh) → the sample's world."""
    _, move, scale = canonical_transform(source_c2w[None], distance)
    inv = invert_rigid(move[0])
    return (points @ inv[:3, :3].T + inv[:3, 3]) / scale[0]
