"""Training parts of the LRM module: LR schedule, EMA, LPIPS weight loading, PSNR, mesh level."""

import math

import pytest
import torch
import torchvision

from lightning_modules.ema import EMA
from lightning_modules.losses import LPIPSLoss, cosine_with_warmup
from lightning_modules.metrics import psnr


def test_warmup_then_cosine_to_the_final_ratio():
    lrs = [cosine_with_warmup(s, warmup=10, total=110) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.5) and lrs[110] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay
    assert cosine_with_warmup(110, 10, 110, final_ratio=0.1) == pytest.approx(0.1)


def test_ema_tracks_the_average_and_swaps_back():
    net = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = EMA(net, decay=0.5)
    ema.updates = 100  # past the decay warm-up: d = 0.5
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.5))
    with ema.swapped_in(net):
        assert torch.allclose(net.weight, torch.full((1, 2), 0.5))
    assert torch.allclose(net.weight, torch.ones(1, 2))  # the trained weights are back
    state = ema.state_dict()
    other = EMA(net, decay=0.9)
    other.load_state_dict(state)
    assert other.updates == 101 and other.decay == 0.5 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(net, decay=1.5)


def test_lpips_loads_torchvision_vgg16_weights(tmp_path):
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16()
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    loss = LPIPSLoss(str(path))
    assert torch.equal(loss.net.net.slice1[0].weight, vgg.features[0].weight)
    assert torch.equal(getattr(loss.net.net.slice5, "28").weight, vgg.features[28].weight)
    img = torch.rand(2, 3, 32, 32)
    assert loss(img, img).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(img, torch.rand(2, 3, 32, 32)).item() > 0


def test_lpips_without_weights_says_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        LPIPSLoss(None, pretrained_backbone=True)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        LPIPSLoss(str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"something.else": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a VGG-16 or LPIPS state dict"):
        LPIPSLoss(str(bad))


def test_psnr_of_a_known_error():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a + 0.1, a).item() == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    b = a.clone()
    b[..., 2:, :] = 1.0  # errors only outside the mask
    assert psnr(b + 0.01 * mask, a, mask).item() == pytest.approx(40.0, abs=1e-3)
    assert math.isfinite(psnr(a, a).item())
