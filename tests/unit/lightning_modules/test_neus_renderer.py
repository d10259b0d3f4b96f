"""NeuS renderer of One-2-3-45 against closed forms: an analytic sphere f(p) = |p| − r seen through real cameras.

The ray–sphere facts are computed here in float64 from the same pixel-centre rays (``geometry.rays``), whose
parameter t is z-depth: a pixel is covered when its ray meets the sphere, its depth is the first root t*.
"""

import math

import pytest
import torch

from geometry.cameras import intrinsics_from_fov, look_at, spherical_to_cartesian
from geometry.rays import camera_rays, ray_box
from lightning_modules.networks.one2345.renderer import LearnedVariance, NeuSRenderer, eikonal_loss

RADIUS = 0.5
SHARP = math.log(1e4) / 10  # LearnedVariance init giving s = exp(10 v) = 1e4
SOFT = 0.3  # NeuS's init: s = exp(3) ≈ 20
GREY = 0.25


def sphere(radius=RADIUS, scale=1.0):
    def sdf_fn(points):  # (B, N, 3) → sdf (B, N), features (B, N, 3)
        return scale * (points.norm(dim=-1) - radius), points
    return sdf_fn


def constant_colour(points, dirs, gradients, features):
    return torch.full_like(points, GREY)


def rays(h=32, w=32, distance=2.0, elevation=20.0, azimuth=30.0, fov=40.0):
    c2w = torch.tensor(look_at(spherical_to_cartesian(distance, elevation, azimuth)), dtype=torch.float32)
    K = torch.tensor(intrinsics_from_fov(fov, w, h), dtype=torch.float32)
    o, d = camera_rays(c2w, K, h, w)
    return o.reshape(1, -1, 3), d.reshape(1, -1, 3)


def analytic(o, d, radius=RADIUS):
    """hit (B, R) bool, first-hit t* (B, R) (0 for a miss), closest distance of the ray line to the centre − r."""
    o, d = o.double(), d.double()
    a, b, c = (d * d).sum(-1), 2 * (o * d).sum(-1), (o * o).sum(-1) - radius ** 2
    disc = b * b - 4 * a * c
    hit = disc > 0
    t = torch.where(hit, (-b - disc.clamp(min=0).sqrt()) / (2 * a), torch.zeros_like(a))
    t_closest = -(o * d).sum(-1) / a
    gap = (o + t_closest[..., None] * d).norm(dim=-1) - radius
    return hit, t.float(), gap.float()


@pytest.fixture(scope="module")
def view():
    o, d = rays()
    out = {v: NeuSRenderer(init_variance=v)(sphere(), constant_colour, o, d, torch.ones(1, 3))
           for v in (SHARP, SOFT)}
    return o, d, analytic(o, d), out


def test_learned_variance_is_exp_10v():
    var = LearnedVariance(0.3)
    assert torch.allclose(var(), torch.tensor(math.exp(3.0)))
    assert [n for n, _ in var.named_parameters()] == ["variance"]


def test_sphere_silhouette_matches_the_projected_disc(view):
    """Bound: at most 2 of 1024 pixels differ, and only pixels whose ray passes within 0.01 of the sphere
    (a pixel is ~0.045 wide at the sphere); at s = 1e4 none differ in practice."""
    _, _, (hit, _, gap), out = view
    silhouette = out[SHARP]["opacity"] > 0.5
    wrong = silhouette != hit
    assert 300 < hit.sum() < 700  # the disc is well inside the image
    assert wrong.sum() <= 2
    assert (gap[wrong].abs() < 0.01).all()


def test_sphere_depth_is_the_first_hit_z_depth(view):
    """Tolerance: on every covered pixel |D − t*| ≤ Δt/4 with Δt = (far − near)/64 the ray's coarse spacing
    (0.02–0.04 here); the up-sampled sections around the surface are far finer, so away from the rim
    (the ray passes ≥ 0.05 inside the silhouette) the error is ≤ 1e-3 ≈ Δt/20."""
    o, d, (hit, t_star, gap), out = view
    near, far, _ = ray_box(o, d)
    spacing = (far - near) / 64
    depth, opacity = out[SHARP]["depth"], out[SHARP]["opacity"]
    covered = hit & (opacity > 0.5)
    assert ((depth - t_star).abs()[covered] <= spacing[covered] / 4).all()
    inner = hit & (gap < -0.05)
    assert inner.sum() > 200
    assert (depth - t_star).abs()[inner].max() < 1e-3
    assert (opacity[inner] > 0.999).all()


def test_missed_pixels_show_background(view):
    _, _, (hit, _, gap), out = view
    far_off = ~hit & (gap > 0.05)  # rays clearly missing the sphere (they still cross the box)
    assert far_off.sum() > 200
    o = out[SHARP]
    assert o["opacity"][far_off].max() < 1e-4
    assert o["depth"][far_off].abs().max() < 1e-3
    assert torch.allclose(o["rgb"][far_off], torch.ones(3), atol=1e-4)
    covered = hit & (gap < -0.05)
    assert torch.allclose(o["rgb"][covered], torch.full((3,), GREY), atol=1e-3)


def test_background_is_per_batch_element_and_exact_for_box_misses():
    """Three rays per element: away from the box, through the box past the sphere, into the sphere."""
    o = torch.tensor([[0.0, -3.0, 0.0], [0.0, -3.0, 0.9], [0.0, -3.0, 0.0]]).expand(2, 3, 3)
    d = torch.tensor([[0.0, -1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 3, 3)
    background = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    out = NeuSRenderer(init_variance=SHARP)(sphere(), constant_colour, o, d, background)
    assert torch.equal(out["rgb"][0, 0], torch.ones(3))  # a box miss: exactly white, opacity and depth 0
    assert torch.equal(out["rgb"][1, 0], torch.zeros(3))  # ...and exactly black over a black background
    assert (out["opacity"][:, 0] == 0).all() and (out["depth"][:, 0] == 0).all()
    assert not out["inside"].view(2, 3, -1)[:, 0].any() and out["inside"].view(2, 3, -1)[:, 1:].all()
    assert torch.allclose(out["rgb"][0, 1], torch.ones(3), atol=1e-4)
    assert torch.allclose(out["rgb"][1, 1], torch.zeros(3), atol=1e-4)
    assert torch.allclose(out["rgb"][:, 2], torch.full((2, 3), GREY), atol=1e-4)
    assert torch.allclose(out["depth"][:, 2], torch.full((2,), 2.5), atol=1e-3)  # t* = 3 − r


def test_sdf_gradients_are_the_sphere_normals(view):
    o, d, _, out = view
    res = out[SHARP]
    points = (o[..., None, :] + res["samples"][..., None] * d[..., None, :]).flatten(1, 2)  # (B, R·S, 3)
    assert res["sdf_gradients"].shape == points.shape == (1, 1024 * 128, 3)
    assert torch.allclose(res["sdf_gradients"], points / points.norm(dim=-1, keepdim=True), atol=1e-5)
    assert eikonal_loss(res["sdf_gradients"], res["inside"]) < 1e-10


def test_normals_reach_the_colour_function():
    """Colour = (n + 1)/2 of the SDF gradient: the centre pixel of a camera on −Y sees n = (0, −1, 0)."""
    o, d = rays(h=5, w=5, elevation=0.0, azimuth=0.0)
    shade = lambda p, v, g, f: (g / g.norm(dim=-1, keepdim=True) + 1) / 2
    out = NeuSRenderer(init_variance=SHARP)(sphere(), shade, o, d, torch.ones(1, 3))
    assert torch.allclose(out["rgb"][0, 12], torch.tensor([0.5, 0.0, 0.5]), atol=1e-3)


def test_backprop_reaches_variance_and_sdf_parameters():
    o, d = rays(h=6, w=6)
    renderer = NeuSRenderer(init_variance=SOFT)
    radius = torch.nn.Parameter(torch.tensor(0.45))
    scale = torch.nn.Parameter(torch.tensor(1.2))
    out = renderer(sphere(radius, scale), constant_colour, o, d, torch.ones(1, 3))
    photometric = ((out["rgb"] - 0.5) ** 2).mean()
    eikonal = eikonal_loss(out["sdf_gradients"], out["inside"])
    (photometric + eikonal).backward()
    for p in (renderer.variance.variance, radius, scale):
        assert p.grad is not None and torch.isfinite(p.grad) and p.grad.abs() > 0
    # the eikonal term alone: |∇f| = scale at every sample, so d/dscale (scale − 1)² = 2 (scale − 1)
    scale.grad = None
    out = renderer(sphere(radius, scale), constant_colour, o, d, torch.ones(1, 3))
    eikonal_loss(out["sdf_gradients"], out["inside"]).backward()
    assert torch.allclose(scale.grad, torch.tensor(2 * 0.2), atol=1e-5)


def test_no_graph_under_no_grad():
    o, d = rays(h=4, w=4)
    radius = torch.nn.Parameter(torch.tensor(0.5))
    with torch.no_grad():
        out = NeuSRenderer(init_variance=SOFT)(sphere(radius), constant_colour, o, d, torch.ones(1, 3))
    assert all(not v.requires_grad for v in out.values())


def test_lower_s_gives_a_softer_silhouette(view):
    """The rim pixel (its ray passes closest to the sphere) is ~opaque at s = 1e4 but partial at s ≈ 20."""
    _, _, (hit, _, gap), out = view
    rim = gap.abs().argmin()
    assert hit.flatten()[rim]
    sharp, soft = out[SHARP]["opacity"].flatten()[rim], out[SOFT]["opacity"].flatten()[rim]
    assert sharp > 0.95
    assert 0.1 < soft < 0.9
    partial = {v: ((o["opacity"] > 0.05) & (o["opacity"] < 0.95)).sum() for v, o in out.items()}
    assert partial[SOFT] > 10 * max(partial[SHARP], 1)


def test_chunked_equals_unchunked_and_stratified_agrees():
    o1, d1 = rays(h=8, w=8)
    o2, d2 = rays(h=8, w=8, elevation=-10.0, azimuth=200.0)
    o, d = torch.cat([o1, o2]), torch.cat([d1, d2])
    background = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.3, 0.4]])
    whole = NeuSRenderer(init_variance=SHARP, chunk=1 << 20)(sphere(), constant_colour, o, d, background)
    chunked = NeuSRenderer(init_variance=SHARP, chunk=14)(sphere(), constant_colour, o, d, background)  # 7 rays
    for k in whole:
        assert whole[k].shape == chunked[k].shape
        assert (whole[k].float() - chunked[k].float()).abs().max() <= 1e-6, k
    torch.manual_seed(0)
    jittered = NeuSRenderer(init_variance=SHARP)(sphere(), constant_colour, o, d, background, stratified=True)
    hit, t_star, gap = analytic(o, d)
    inner = hit & (gap < -0.05)
    assert torch.equal(jittered["opacity"] > 0.5, whole["opacity"] > 0.5)
    assert (jittered["depth"] - t_star).abs()[inner].max() < 1e-3
    assert (jittered["samples"].diff(dim=-1) >= 0).all()


def test_cos_annealing_only_thickens_the_rim(view):
    """NeuS's annealed cosine −(relu((1 − cos)/2)(1 − ratio) + relu(−cos)·ratio): ratio 1 (default) is the plain
    min(cos, 0); ratio 0 gives (cos − 1)/2 ≤ min(cos, 0), a steeper SDF drop in every section, so every α and
    hence every pixel's opacity can only grow — and it does only where rays graze the sphere."""
    o, d, (hit, _, gap), out = view
    annealed = NeuSRenderer(init_variance=SHARP)(sphere(), constant_colour, o, d, torch.ones(1, 3),
                                                 cos_anneal_ratio=0.0)
    plain = out[SHARP]
    assert (annealed["opacity"] >= plain["opacity"] - 1e-6).all()
    changed = (annealed["opacity"] - plain["opacity"]).abs() > 1e-3
    assert changed.any()
    assert (gap[changed].abs() < 0.1).all()  # within about two pixels of the rim
    inner = hit & (gap < -0.05)
    assert (annealed["opacity"][inner] > 0.999).all()
