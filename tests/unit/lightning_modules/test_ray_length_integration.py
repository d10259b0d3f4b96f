"""The LRM renderer integrates density along the ray, not along the optical axis (issue 15, part 3).

Ray directions have camera-frame z = 1 (``geometry.rays``), so the ray parameter t is z-depth and a step Δt is
Δt·|d| long. A constant density σ in the unit box [-½, ½]³ seen by any ray must give opacity 1 − exp(−σ·L), L the
length of the ray's path through the box — on the optical axis and 20° off it alike — while the rendered depth stays
z-depth. The field is a real module (its density a parameter), rendered by the real ``VolumeRenderer`` on every path:
coarse only, coarse + importance, and chunked with deferred back-propagation.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from geometry.rays import section_lengths
from lightning_modules.networks.lrm.renderer import VolumeRenderer

SIGMA = 0.5
HALF = 0.5  # the box is [-HALF, HALF]^3 (the unit box); the renderer's bound stays 1
TAN20 = math.tan(math.radians(20.0))


class ConstantDensityBox(nn.Module):
    """σ inside the box [-half, half]³, 0 outside; white everywhere. σ is a parameter, so gradients flow to it."""

    def __init__(self, sigma: float, half: float):
        super().__init__()
        self.sigma, self.half_size = nn.Parameter(torch.tensor(float(sigma))), half

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inside = (points.abs() <= self.half_size).all(dim=-1)
        return self.sigma * inside.float(), torch.ones(*points.shape[:-1], 3)


def _rays() -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 4, 3) origins and directions (camera-frame z = 1, cameras with the world's rotation), from 3 behind:
    on the optical axis; 20° off it in x and y through the centre; 20° in x only; 20° in x and y through (0.4, 0.4, 0),
    which leaves the box through its side faces."""
    dirs = torch.tensor([[0.0, 0.0, 1.0], [TAN20, TAN20, 1.0], [TAN20, 0.0, 1.0], [TAN20, TAN20, 1.0]])
    through = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.4, 0.4, 0.0]])
    return (through - 3.0 * dirs)[None], dirs[None]


def _path_lengths(origins: torch.Tensor, dirs: torch.Tensor, half: float = HALF) -> np.ndarray:
    """Length of each ray's path through [-half, half]³ (slab test in float64, with the rays' true lengths)."""
    o, d = origins[0].double().numpy(), dirs[0].double().numpy()
    d_unit = d / np.linalg.norm(d, axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        t0, t1 = (-half - o) / d_unit, (half - o) / d_unit
    enter, leave = np.minimum(t0, t1).max(axis=-1), np.maximum(t0, t1).min(axis=-1)
    return np.clip(leave - enter, 0.0, None)


def _first_hit_depth(origins: torch.Tensor, dirs: torch.Tensor) -> np.ndarray:
    """z-depth (ray parameter t, camera z = 1) where each ray enters the box."""
    o, d = origins[0].double().numpy(), dirs[0].double().numpy()
    with np.errstate(divide="ignore"):
        t0, t1 = (-HALF - o) / d, (HALF - o) / d
    return np.minimum(t0, t1).max(axis=-1)


def test_the_rays_cross_the_box_along_the_paths_the_test_means():
    """The geometry the opacity test relies on: |d| = 1.125 at 20° in x and y; paths 1, |d|, √(1 + tan²20°) and a
    shorter one that leaves through the side."""
    origins, dirs = _rays()
    path = _path_lengths(origins, dirs)
    np.testing.assert_allclose(path[:3], [1.0, math.sqrt(1 + 2 * TAN20 ** 2), math.sqrt(1 + TAN20 ** 2)], rtol=1e-6)
    assert 0.5 < path[3] < path[1]
    assert dirs[0, 1].norm().item() == pytest.approx(1.125, abs=1e-3)


def test_section_lengths_are_metric():
    """Δt·|d|: a step of t covers |d| along a ray whose direction has camera z = 1."""
    edges = torch.tensor([[1.0, 1.5, 2.5], [0.0, 2.0, 3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0], [3.0, 4.0, 12.0]])  # |d| = 1 and 13
    torch.testing.assert_close(section_lengths(edges, dirs), torch.tensor([[0.5, 1.0], [26.0, 13.0]]))


@pytest.mark.parametrize("num_coarse,num_fine", [(256, 0), (64, 64)])
def test_constant_density_box_gives_the_opacity_of_its_path_on_and_off_axis(num_coarse, num_fine):
    """Opacity 1 − exp(−σL) for each ray, to the samples' resolution of the box faces: an interval straddling a face
    counts wholly inside or outside, half a coarse interval at each face at most, so σ·(one coarse interval) in
    optical thickness (importance samples only refine it). Intervals measured along the optical axis instead give
    0.3935 for 0.4301 on the 20° ray, outside that tolerance in both configurations."""
    origins, dirs = _rays()
    field = ConstantDensityBox(SIGMA, HALF)
    renderer = VolumeRenderer(num_coarse=num_coarse, num_fine=num_fine, bound=1.0)
    with torch.no_grad():
        out = renderer(field, origins, dirs, torch.zeros(1, 3))
    expected = 1 - np.exp(-SIGMA * _path_lengths(origins, dirs))
    resolution = SIGMA * _path_lengths(origins, dirs, half=renderer.bound) / num_coarse  # per ray
    got = out["opacity"][0].double().numpy()
    print(f"coarse {num_coarse} + fine {num_fine}: opacity {got.round(4)}, expected {expected.round(4)}, "
          f"tolerance {resolution.round(4)}")
    assert np.all(np.abs(got - expected) <= resolution), (got, expected, resolution)


def test_depth_stays_z_depth_on_oblique_rays():
    """An opaque box: the depth is the z-depth of the face the ray enters (the shards' convention), not the distance
    along the ray, on and off axis."""
    origins, dirs = _rays()
    renderer = VolumeRenderer(num_coarse=64, num_fine=64, bound=1.0)
    with torch.no_grad():
        out = renderer(ConstantDensityBox(1e3, HALF), origins, dirs, torch.zeros(1, 3))
    torch.testing.assert_close(out["opacity"], torch.ones(1, 4), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["depth"][0].double().numpy(), _first_hit_depth(origins, dirs), atol=2.0 / 64 / 2)


@pytest.mark.parametrize("deferred", [False, True])
def test_chunked_and_deferred_renders_integrate_along_the_ray(deferred):
    """Chunks of one ray, with and without deferred back-propagation: the same opacities, and the gradient of the
    opacity with respect to σ is the closed form L·exp(−σL) of each ray's own path length."""
    origins, dirs = _rays()
    field = ConstantDensityBox(SIGMA, HALF)
    renderer = VolumeRenderer(num_coarse=256, num_fine=0, bound=1.0, chunk=1, deferred_backprop=deferred)
    path = _path_lengths(origins, dirs)
    for i in range(4):
        field.zero_grad()
        out = renderer(field, origins, dirs, torch.zeros(1, 3))
        out["opacity"][0, i].backward()
        np.testing.assert_allclose(out["opacity"][0, i].item(), 1 - math.exp(-SIGMA * path[i]), atol=4e-3)
        np.testing.assert_allclose(field.sigma.grad.item(), path[i] * math.exp(-SIGMA * path[i]), atol=1e-2)
