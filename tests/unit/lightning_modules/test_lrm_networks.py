"""LRM networks: shapes, parameter counts, ModLN, the volume renderer against closed forms, deferred backprop."""

import math

import pytest
import torch

from configs import MODEL_DIR, load_model_block
from geometry.cameras import intrinsics_from_fov
from geometry.rays import canonical_c2w
from lightning_modules.networks.lrm.model import LRM
from lightning_modules.networks.lrm.renderer import VolumeRenderer, composite
from lightning_modules.networks.lrm.transformer import ModLN
from tests.unit.lightning_modules.conftest import tiny_lrm_args


def _paper_blocks():
    cfg = load_model_block(MODEL_DIR / "lrm_paper.yaml").init_args
    enc = dict(cfg["encoder"], pretrained=False)
    return enc, cfg["transformer"], cfg["field"], cfg["renderer"], cfg["camera_dim"]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_config_parameter_count_and_breakdown():
    """Built on the meta device (no memory): ~0.45 B parameters, the paper's "~500M" class."""
    with torch.device("meta"):
        net = LRM(*_paper_blocks())
    parts = {name: _count(child) for name, child in net.named_children()}
    block = {name: _count(child) for name, child in net.transformer.blocks[0].named_children()}
    total = _count(net)
    print(f"LRM paper config: {total / 1e6:.1f} M parameters; "
          + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in parts.items())
          + "; per transformer layer " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in block.items()))
    assert 84e6 < parts["encoder"] < 88e6  # ViT-B/16 without a head
    assert len(net.transformer.blocks) == 16
    assert net.transformer.pos_embed.shape == (3 * 32 * 32, 1024)
    assert 22e6 < sum(block.values()) < 23e6  # 3 ModLN (3 × 2.1 M) + cross 3.7 M + self 4.2 M + MLP 8.4 M
    assert 400e6 < total < 550e6
    # the field is the paper's 10 × 64 SiLU MLP
    linears = [m for m in net.field.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 10 and linears[0].in_features == 80 and linears[1].in_features == 64


def test_paper_config_shapes_on_meta_device():
    with torch.device("meta"):
        net = LRM(*_paper_blocks())
        image = torch.empty(2, 3, 512, 512)
        tokens = net.encoder(image)
        planes = net(image, canonical_c2w(2.0)[None].expand(2, 4, 4).to("meta"), torch.empty(2, 3, 3))
    assert tokens.shape == (2, 1 + 32 * 32, 768)
    assert planes.shape == (2, 3, 80, 64, 64)


def test_tiny_shapes_render_and_backward():
    torch.manual_seed(0)
    net = LRM(**tiny_lrm_args())
    b, n, h, w = 2, 3, 8, 6
    K = torch.tensor(intrinsics_from_fov(50.0, w, h), dtype=torch.float32).expand(b, n, 3, 3)
    c2w = canonical_c2w(2.0).expand(b, n, 4, 4)
    planes = net(torch.rand(b, 3, 64, 64), c2w[:, 0], K[:, 0])
    assert planes.shape == (b, 3, 16, 16, 16)
    out = net.render(planes, c2w, K, h, w, torch.ones(b, 3), stratified=True)
    assert out["images"].shape == (b, n, 3, h, w)
    assert out["opacity"].shape == out["depth"].shape == (b, n, 1, h, w)
    out["images"].mean().backward()
    assert all(p.grad is not None for p in net.transformer.parameters())


def test_encoder_rejects_wrong_input_size():
    net = LRM(**tiny_lrm_args())
    with pytest.raises(ValueError, match="expects 64"):
        net.encoder(torch.rand(1, 3, 32, 32))


def test_encoder_loads_a_local_checkpoint(tmp_path):
    args = tiny_lrm_args()
    src = LRM(**args).encoder.vit
    path = tmp_path / "dino.pth"
    torch.save(src.state_dict(), path)
    loaded = LRM(**dict(args, encoder=dict(args["encoder"], checkpoint_path=str(path)))).encoder.vit
    for (k, a), (_, b) in zip(src.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_encoder_missing_checkpoint_names_the_file():
    args = tiny_lrm_args()
    with pytest.raises(FileNotFoundError, match="nowhere/dino.pth"):
        LRM(**dict(args, encoder=dict(args["encoder"], checkpoint_path="nowhere/dino.pth")))


def test_unknown_config_key_names_the_block():
    args = tiny_lrm_args()
    with pytest.raises(TypeError, match="'field'"):
        LRM(**dict(args, field=dict(args["field"], widht=3)))


def test_frozen_encoder_has_no_gradients():
    args = tiny_lrm_args()
    net = LRM(**dict(args, encoder=dict(args["encoder"], freeze=True)))
    assert not any(p.requires_grad for p in net.encoder.parameters())
    net.train()
    assert not net.encoder.vit.training


def test_modln_is_layernorm_when_gamma_and_beta_are_zero():
    torch.manual_seed(0)
    mod = ModLN(16, 8)
    torch.nn.init.zeros_(mod.mlp[1].weight)
    torch.nn.init.zeros_(mod.mlp[1].bias)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 8)
    expected = torch.nn.functional.layer_norm(x, (16,), mod.norm.weight, mod.norm.bias, eps=mod.norm.eps)
    torch.testing.assert_close(mod(x, c), expected)
    # and modulation does act otherwise: β shifts every token
    torch.nn.init.constant_(mod.mlp[1].bias, 0.5)
    assert not torch.allclose(mod(x, c), expected)


@pytest.mark.parametrize("batch", [1, 3])  # one sample: a single LayerNorm pass; a batch: LayerNorm + addcmul
def test_modln_folded_affine_matches_layernorm_then_modulation(batch):
    """ModLN folds LN's affine into the modulation: outputs and every gradient equal the three-pass
    LN(f)·(1 + γ) + β to fp32 rounding."""
    torch.manual_seed(0)
    mod = ModLN(64, 32)
    with torch.no_grad():  # a trained LN: weight and bias away from 1 and 0
        mod.norm.weight.uniform_(0.5, 1.5)
        mod.norm.bias.uniform_(-0.5, 0.5)
    x, c = torch.randn(batch, 48, 64, requires_grad=True), torch.randn(batch, 32, requires_grad=True)
    g = torch.randn(batch, 48, 64)

    def grads(fn):
        x.grad = c.grad = None
        mod.zero_grad(set_to_none=True)
        y = fn()
        y.backward(g)
        return [y.detach(), x.grad, c.grad] + [p.grad for p in mod.parameters()]

    def three_pass():
        gamma, beta = mod.mlp(c).unsqueeze(1).chunk(2, dim=-1)
        return mod.norm(x) * (1 + gamma) + beta

    for got, want in zip(grads(lambda: mod(x, c)), grads(three_pass)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --- volume rendering against closed forms -------------------------------------------------------------------------
def _axis_rays(n=4):
    """Rays from z = -3 along +z through x, y in (-0.5, 0.5): they cross the [-1, 1]^3 box over t ∈ [2, 4]."""
    xy = torch.linspace(-0.5, 0.5, n)
    origins = torch.stack([xy, xy.flip(0), torch.full((n,), -3.0)], dim=-1)[None]
    dirs = torch.tensor([0.0, 0.0, 1.0]).expand(1, n, 3)
    return origins, dirs


@pytest.mark.parametrize("stratified", [False, True])
@pytest.mark.parametrize("sigma", [0.1, 0.7, 3.0])
def test_constant_density_box_transmittance(sigma, stratified):
    """Opacity of a constant density σ over the box (length L = 2) is 1 − exp(−σL); colour is its mix with
    the background."""
    renderer = VolumeRenderer(num_coarse=16, num_fine=16)
    origins, dirs = _axis_rays()
    red = torch.tensor([1.0, 0.0, 0.0])

    def field(p):
        return torch.full(p.shape[:-1], sigma), red.expand(*p.shape[:-1], 3)

    out = renderer(field, origins, dirs, torch.tensor([[0.0, 0.0, 1.0]]), stratified=stratified)
    alpha = 1 - math.exp(-sigma * 2.0)
    torch.testing.assert_close(out["opacity"], torch.full((1, 4), alpha), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["rgb"], torch.tensor([alpha, 0.0, 1 - alpha]).expand(1, 4, 3), atol=1e-5,
                               rtol=1e-5)


def test_empty_field_renders_background_and_zero_depth():
    renderer = VolumeRenderer(num_coarse=8, num_fine=8)
    origins, dirs = _axis_rays()
    bg = torch.tensor([[0.2, 0.4, 0.6]])
    out = renderer(lambda p: (torch.zeros(p.shape[:-1]), torch.ones(*p.shape[:-1], 3)), origins, dirs, bg)
    assert torch.all(out["opacity"] == 0) and torch.all(out["depth"] == 0)
    torch.testing.assert_close(out["rgb"], bg[:, None].expand(1, 4, 3))


def test_rays_that_miss_the_box_see_nothing():
    renderer = VolumeRenderer(num_coarse=8, num_fine=8)
    origins = torch.tensor([[[5.0, 5.0, -3.0]]])
    out = renderer(lambda p: (torch.full(p.shape[:-1], 100.0), torch.ones(*p.shape[:-1], 3)), origins,
                   torch.tensor([[[0.0, 0.0, 1.0]]]), torch.zeros(1, 3))
    assert out["opacity"].item() == 0.0


@pytest.mark.parametrize("plane_z", [-0.5, 0.0, 0.6])
def test_depth_of_an_opaque_plane(plane_z):
    """A dense half-space z > c seen from z = −3: depth = 3 + c, opacity 1. Each sample stands for the interval
    around it, so the depth is exact to within half a coarse step (importance samples refine the interval of the
    first opaque coarse sample, which holds the edge or lies just behind it)."""
    renderer = VolumeRenderer(num_coarse=32, num_fine=64)
    origins, dirs = _axis_rays()
    out = renderer(lambda p: ((p[..., 2] > plane_z).float() * 1e3, torch.ones(*p.shape[:-1], 3)), origins, dirs,
                   torch.zeros(1, 3))
    torch.testing.assert_close(out["opacity"], torch.ones(1, 4), atol=1e-4, rtol=0)
    step = 2.0 / 32
    assert torch.all((out["depth"] - (3.0 + plane_z)).abs() <= step / 2)


def test_composite_weights_sum_to_opacity():
    t = torch.linspace(0.1, 0.9, 10).expand(3, 10)
    sigma = torch.rand(3, 10) * 5
    w, rgb, opacity, depth = composite(sigma, torch.rand(3, 10, 3), t, torch.zeros(3), torch.ones(3),
                                       torch.tensor([0.0, 0.0, 1.0]).expand(3, 3))
    torch.testing.assert_close(w.sum(-1), opacity)
    assert torch.all(depth <= opacity * 0.9 + 1e-6)


def test_deferred_backprop_gives_the_same_gradients():
    """Re-rendering chunk by chunk in backward changes memory, not the gradients."""
    torch.manual_seed(0)
    args = tiny_lrm_args()
    plain = LRM(**dict(args, renderer=dict(args["renderer"], chunk=64, deferred_backprop=False)))
    deferred = LRM(**dict(args, renderer=dict(args["renderer"], chunk=64, deferred_backprop=True)))
    deferred.load_state_dict(plain.state_dict())
    K = torch.tensor(intrinsics_from_fov(50.0, 12, 12), dtype=torch.float32).expand(1, 2, 3, 3)
    c2w = canonical_c2w(2.0).expand(1, 2, 4, 4)
    image = torch.rand(1, 3, 64, 64)
    grads = []
    for net in (plain, deferred):
        torch.manual_seed(1)
        out = net.render(net(image, c2w[:, 0], K[:, 0]), c2w, K, 12, 12, torch.ones(1, 3), stratified=True)
        (out["images"].square().mean() + out["depth"].mean()).backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("aggregate", ["sum", "concat"])
def test_embedding_bag_sampler_matches_grid_sample(aggregate):
    """Both triplane samplers give the same features and the same plane gradients (points inside and outside
    the box: border padding)."""
    from lightning_modules.networks.lrm.renderer import TriplaneField

    torch.manual_seed(0)
    planes = torch.randn(2, 3, 5, 8, 8, dtype=torch.float64)
    points = torch.rand(2, 300, 3, dtype=torch.float64) * 2.4 - 1.2
    feats, grads = [], []
    for sampler in ("grid_sample", "embedding_bag"):
        field = TriplaneField(5, aggregate=aggregate, sampler=sampler)
        p = planes.clone().requires_grad_(True)
        out = field.features(p, points)
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=torch.float64)).sum().backward()
        feats.append(out.double())
        grads.append(p.grad)
    torch.testing.assert_close(feats[1], feats[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-6)
