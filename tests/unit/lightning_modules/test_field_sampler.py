"""The triplane field's sampler choice per device: ``auto`` → embedding_bag on CUDA, grid_sample elsewhere."""

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.networks.lrm import renderer
from lightning_modules.networks.lrm.renderer import TriplaneField, channel_groups, sampler_for


def test_auto_resolves_by_device_type_and_explicit_samplers_are_kept():
    """``auto`` is embedding_bag on CUDA, grid_sample on a CPU (no GPU needed: a pure function of the device type);
    an explicit sampler is used on every device."""
    assert sampler_for("auto", torch.device("cuda")) == "embedding_bag"
    assert sampler_for("auto", torch.device("cuda", 1)) == "embedding_bag"
    assert sampler_for("auto", torch.device("cpu")) == "grid_sample"
    for explicit in ("grid_sample", "embedding_bag"):
        for device in ("cpu", "cuda"):
            assert sampler_for(explicit, torch.device(device)) == explicit


def _fail(name):
    def called(*args, **kwargs):
        raise AssertionError(f"{name} called")
    return called


@pytest.mark.parametrize("sampler, unused", [("auto", "embedding_bag"), ("grid_sample", "embedding_bag"),
                                             ("embedding_bag", "grid_sample")])
def test_field_on_cpu_runs_the_resolved_sampler(monkeypatch, sampler, unused):
    """On a CPU an ``auto`` field samples with grid_sample (same features, bitwise, as an explicit grid_sample field)
    and never calls embedding_bag; explicit choices run their own kernel. The memory estimate follows the sampler
    run."""
    torch.manual_seed(0)
    planes = torch.randn(2, 3, 5, 8, 8)
    points = torch.rand(2, 50, 3) * 2 - 1
    field = TriplaneField(5, sampler=sampler)
    assert field.sampler == sampler  # the configured value is kept as given (a saved config says "auto")
    resolved = field.sampler_on(planes.device)
    assert resolved == ("grid_sample" if sampler == "auto" else sampler)
    reference = TriplaneField(5, sampler=resolved)
    assert field.training_bytes_per_point() == reference.training_bytes_per_point()
    monkeypatch.setattr(F, unused, _fail(unused))
    torch.testing.assert_close(field.features(planes, points), reference.features(planes, points), atol=0, rtol=0)


def test_unknown_sampler_names_the_choices():
    with pytest.raises(ValueError, match="'auto', 'grid_sample' or 'embedding_bag'"):
        TriplaneField(5, sampler="bilinear")


def test_channel_groups_split_the_planes_evenly_over_the_cpu_threads():
    cpu, threads = torch.device("cpu"), torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert channel_groups(3, 40, cpu) == 2  # lrm_small, batch 1: 6 entries, 3 a thread
        assert channel_groups(6, 40, cpu) == 1  # batch 2: already even
        assert channel_groups(3, 7, cpu) == 1  # no divisor with ≥ 8 channels a group
        torch.set_num_threads(1)
        assert channel_groups(3, 40, cpu) == 1
        torch.set_num_threads(4)
        assert channel_groups(3, 40, cpu) == 4
    finally:
        torch.set_num_threads(threads)
    assert channel_groups(3, 40, torch.device("meta")) == 1  # off the CPU the kernels spread the points


@pytest.mark.parametrize("aggregate", ["sum", "concat"])
def test_channel_groups_give_the_same_features_and_plane_gradients_bitwise(monkeypatch, aggregate):
    """grid_sample over (B·3·G, F/G, P, P) entries computes the one-entry-per-plane numbers in the same memory."""
    torch.manual_seed(0)
    planes = torch.randn(1, 3, 16, 8, 8)
    points = torch.rand(1, 300, 3) * 2.2 - 1.1  # some outside the box: border padding
    grad = torch.randn(1, 300, 16 * (3 if aggregate == "concat" else 1))
    field = TriplaneField(16, aggregate=aggregate, sampler="grid_sample")
    outputs = {}
    for groups in (1, 2):
        monkeypatch.setattr(renderer, "channel_groups", lambda entries, channels, device, g=groups: g)
        p = planes.clone().requires_grad_()
        features = field.features(p, points)
        features.backward(grad)
        outputs[groups] = features.detach(), p.grad
    assert torch.equal(outputs[1][0], outputs[2][0]) and torch.equal(outputs[1][1], outputs[2][1])
