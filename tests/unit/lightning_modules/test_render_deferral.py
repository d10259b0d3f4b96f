"""Deferred back-propagation only where it pays: the renderer defers when told to, and in auto mode (the default)
only when the render's estimated activations exceed ``defer_above`` of the device's memory; both ways give the same
images and gradients."""

import pytest
import torch

from lightning_modules.networks.lrm.renderer import TriplaneField, VolumeRenderer, device_memory


def _render_counting(renderer: VolumeRenderer, field: TriplaneField, planes: torch.Tensor):
    """(image, planes' gradient, field calls in forward, field calls in backward) of one stratified training render."""
    calls = {"n": 0}

    def query(pts):
        calls["n"] += 1
        return field(planes, pts)

    torch.manual_seed(3)
    origins = torch.tensor([0.0, -3.0, 0.0]).expand(1, 64, 3).contiguous()
    dirs = torch.nn.functional.normalize(torch.randn(1, 64, 3) * 0.2 + torch.tensor([0.0, 1.0, 0.0]), dim=-1)
    torch.manual_seed(4)
    out = renderer(query, origins, dirs, torch.ones(1, 3), stratified=True,
                   bytes_per_point=field.training_bytes_per_point())
    forward_calls = calls["n"]
    planes.grad = None
    out["rgb"].square().sum().backward()
    assert planes.grad is not None
    return out["rgb"].detach(), planes.grad.clone(), forward_calls, calls["n"] - forward_calls


@pytest.fixture
def field_and_planes():
    torch.manual_seed(0)
    field = TriplaneField(triplane_dim=8, hidden=16, layers=3)
    planes = torch.randn(1, 3, 8, 16, 16, requires_grad=True)
    return field, planes


def test_auto_defers_only_above_its_share_of_the_device_memory(field_and_planes):
    field, planes = field_and_planes
    auto = VolumeRenderer(num_coarse=8, num_fine=8, chunk=32)  # deferred_backprop None: auto
    small = auto.defers(64, field.training_bytes_per_point(), planes.device)
    huge = auto.defers(int(device_memory(planes.device) // (16 * field.training_bytes_per_point())),
                       field.training_bytes_per_point(), planes.device)
    assert (small, huge) == (False, True)
    assert VolumeRenderer(deferred_backprop=True).defers(1, 1, planes.device)
    assert not VolumeRenderer(deferred_backprop=False).defers(10 ** 12, 10 ** 6, planes.device)
    with pytest.raises(ValueError, match="defer_above"):
        VolumeRenderer(defer_above=0.0)


def test_auto_renders_once_where_the_render_fits_and_computes_what_deferral_computes(field_and_planes):
    field, planes = field_and_planes
    auto = VolumeRenderer(num_coarse=8, num_fine=8, chunk=32)
    deferred = VolumeRenderer(num_coarse=8, num_fine=8, chunk=32, deferred_backprop=True)
    rgb_a, grad_a, fwd_a, bwd_a = _render_counting(auto, field, planes)
    rgb_d, grad_d, fwd_d, bwd_d = _render_counting(deferred, field, planes)
    assert fwd_a == fwd_d == 4  # two chunks of 32 rays × (coarse + fine) queries
    assert bwd_a == 0 and bwd_d == 4  # deferral re-renders every chunk in backward; auto, here, does not
    torch.testing.assert_close(rgb_a, rgb_d)
    torch.testing.assert_close(grad_a, grad_d)


def test_the_estimate_bounds_the_measured_activation_memory(field_and_planes):
    """The per-sample estimate is of the order of what autograd keeps (within a factor of 3 of the saved tensors)."""
    field, planes = field_and_planes
    renderer = VolumeRenderer(num_coarse=8, num_fine=8, chunk=1 << 20, deferred_backprop=False)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size() if t.data_ptr() != planes.data_ptr() else 0)
        return t

    origins = torch.tensor([0.0, -3.0, 0.0]).expand(1, 4096, 3).contiguous()
    dirs = torch.nn.functional.normalize(torch.randn(1, 4096, 3) * 0.2 + torch.tensor([0.0, 1.0, 0.0]), dim=-1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        renderer(lambda p: field(planes, p), origins, dirs, torch.ones(1, 3), stratified=True)
    per_point = sum(saved) / (4096 * 16)
    assert field.training_bytes_per_point() / 3 < per_point < 3 * field.training_bytes_per_point()
