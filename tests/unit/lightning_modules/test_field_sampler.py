"""The triplane field's sampler choice per device: ``auto`` → embedding_bag on CUDA, grid_sample elsewhere."""

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.networks.lrm.renderer import TriplaneField, sampler_for


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
