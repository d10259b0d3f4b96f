"""One-2-3-45's sparse 3-D CNN (spconv) on CPU: a SubMConv3d against a dense conv3d, the submanifold property,
forward + backward of SparseGeometryNet on a real CostVolume output, the CPU compatibility step, and to_dense."""

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import spconv.pytorch as spconv
import torch
import torch.nn.functional as F

from geometry.cameras import intrinsics_from_fov, look_at, spherical_to_cartesian
from lightning_modules.networks.one2345.cost_volume import CostVolume, SparseVolume
from lightning_modules.networks.one2345.sparse_cnn import SparseGeometryNet, to_dense
from lightning_modules.networks.one2345.spconv_compat import ensure_cpu_backward


@pytest.fixture(autouse=True)
def one_thread():
    """spconv 2.3.8's CPU kernels have returned wrong float32 values with > 1 thread (sparse_cnn.py's docstring):
    these tests check the maths, so they run single-threaded, as sparse_cnn.py asks of CPU runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def full_block(res, batch=1):
    """coords (B·R³, 4) int32 of every voxel of a dense R³ block, batch-major then i, j, k ("ij" order)."""
    b, i, j, k = torch.meshgrid(*(torch.arange(n) for n in (batch, res, res, res)), indexing="ij")
    return torch.stack([b, i, j, k], dim=-1).reshape(-1, 4).to(torch.int32)


def random_sites(res, batch, fraction, seed=0):
    keep = torch.rand(batch * res ** 3, generator=torch.Generator().manual_seed(seed)) < fraction
    return full_block(res, batch)[keep]


# ---------------------------------------------------------------------------------------------- spconv itself


def test_subm_conv_equals_dense_conv3d_on_a_fully_active_block():
    """spconv is a cross-correlation like F.conv3d; its weight is (out, kD, kH, kW, in) against conv3d's
    (out, in, kD, kH, kW). With all sites active, submanifold = ordinary conv with zero padding 1."""
    torch.manual_seed(0)
    res, c_in, c_out = 4, 2, 3
    coords = full_block(res)
    feats = torch.randn(res ** 3, c_in, dtype=torch.float64)  # row n = voxel (i, j, k), n = (i·R + j)·R + k
    conv = spconv.SubMConv3d(c_in, c_out, 3, padding=1, bias=True).double()
    assert conv.weight.shape == (c_out, 3, 3, 3, c_in)
    out = conv(spconv.SparseConvTensor(feats, coords, [res] * 3, 1))
    assert torch.equal(out.indices, coords)

    dense_in = feats.T.reshape(1, c_in, res, res, res)  # [0, c, i, j, k]
    ref = F.conv3d(dense_in, conv.weight.permute(0, 4, 1, 2, 3), conv.bias, padding=1)  # (1, c_out, R, R, R)
    torch.testing.assert_close(out.features, ref.reshape(c_out, -1).T, rtol=1e-12, atol=1e-12)

    # one output by hand: the corner voxel (0, 0, 0) sees only (0..1)³ of the input, kernel taps 1..2
    w = conv.weight.detach()
    by_hand = conv.bias.detach().clone()
    for di in range(2):
        for dj in range(2):
            for dk in range(2):
                by_hand += w[:, 1 + di, 1 + dj, 1 + dk, :] @ feats[(di * res + dj) * res + dk]
    torch.testing.assert_close(out.features[0], by_hand, rtol=1e-12, atol=1e-12)


def test_subm_conv_keeps_the_active_sites():
    res = 6
    coords = random_sites(res, batch=2, fraction=0.2)
    feats = torch.randn(len(coords), 3)
    conv = spconv.SubMConv3d(3, 5, 3, padding=1, indice_key="s")
    out = conv(spconv.SparseConvTensor(feats, coords, [res] * 3, 2))
    assert torch.equal(out.indices, coords)
    assert out.features.shape == (len(coords), 5)


# ---------------------------------------------------------------------------------------------- SparseGeometryNet


def tiny_cost_volume(channels=4, res=6):
    """A CostVolume output of B = 2 samples × V = 3 look_at views (16×16 images, random 8×8 feature maps, stride 2);
    feats require grad."""
    rng = np.random.default_rng(1)
    eyes = [spherical_to_cartesian(2.5, rng.uniform(-20, 40), rng.uniform(0, 360)) for _ in range(6)]
    c2w = torch.tensor(np.stack([look_at(eye, (0.0, 0.0, 0.0)) for eye in eyes]), dtype=torch.float32)
    K = torch.tensor(np.stack([intrinsics_from_fov(50.0, 16, 16)] * 6), dtype=torch.float32)
    features = torch.randn(2, 3, channels, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    volume = CostVolume(resolution=res)(features, c2w.reshape(2, 3, 4, 4), K.reshape(2, 3, 3, 3), stride=2)
    return features, volume


@pytest.mark.parametrize("channels", [(4,), (4, 8)])
def test_forward_backward_on_cpu_on_a_cost_volume(channels):
    torch.manual_seed(0)
    features, volume = tiny_cost_volume()
    assert set(volume.coords[:, 0].tolist()) == {0, 1} and len(volume.coords) > 20
    net = SparseGeometryNet(in_channels=8, out_channels=5, channels=channels, blocks=1)
    out = net(volume)
    assert isinstance(out, SparseVolume)
    assert out.feats.shape == (len(volume.coords), 5) and torch.isfinite(out.feats).all()
    assert torch.equal(out.coords, volume.coords)  # the input's active voxels, same row order
    assert out.spatial_shape == volume.spatial_shape and out.batch_size == 2

    loss = (out.feats * torch.randn_like(out.feats)).sum()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert features.grad is not None and torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_feature_rows_follow_their_voxels():
    """Permuting the input rows permutes the output rows the same way (eval mode: BN uses running stats)."""
    torch.manual_seed(0)
    _, volume = tiny_cost_volume()
    feats = volume.feats.detach()
    net = SparseGeometryNet(in_channels=8, out_channels=3, channels=(4, 8)).eval()
    perm = torch.randperm(len(feats), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = net(volume._replace(feats=feats)).feats
        b = net(volume._replace(feats=feats[perm], coords=volume.coords[perm])).feats
    torch.testing.assert_close(b, a[perm], rtol=1e-5, atol=1e-6)


def test_tiny_config_is_tiny_and_bad_inputs_are_named():
    net = SparseGeometryNet(in_channels=8, out_channels=4, channels=(4,), blocks=1)
    assert sum(p.numel() for p in net.parameters()) < 2000
    with pytest.raises(ValueError, match="channels"):
        SparseGeometryNet(channels=(4, 8, 16))
    coords = full_block(2)
    with pytest.raises(ValueError, match=r"feats \(M, 8\)"):
        net(SparseVolume(torch.randn(8, 6), coords, [2, 2, 2], 1))
    with pytest.raises(ValueError, match="coords must be integer"):
        net(SparseVolume(torch.randn(8, 8), coords.float(), [2, 2, 2], 1))
    with pytest.raises(ValueError, match="no active voxels"):
        net(SparseVolume(torch.zeros(0, 8), coords[:0], [2, 2, 2], 1))


# ---------------------------------------------------------------------------------------------- CPU compat step


@pytest.mark.skipif(torch.cuda.is_available(), reason="the step is a no-op with CUDA; the failure is CPU-only")
def test_cpu_backward_needs_the_compat_step():
    """In a fresh interpreter that never runs ensure_cpu_backward, spconv's CPU backward asks torch.cuda for a
    stream and fails; after the step the same backward works. When this test starts failing because the first
    backward succeeds, spconv fixed the getter and spconv_compat.py can go."""
    script = textwrap.dedent("""
        import torch, spconv.pytorch as spconv
        torch.set_num_threads(1)
        coords = torch.tensor([[0, i, j, k] for i in range(3) for j in range(3) for k in range(3)],
                              dtype=torch.int32)
        feats = torch.randn(27, 2, requires_grad=True)
        conv = spconv.SubMConv3d(2, 3, 3, padding=1)
        def backward():
            conv(spconv.SparseConvTensor(feats, coords, [3, 3, 3], 1)).features.sum().backward()
        try:
            backward()
            print("WITHOUT-STEP: ok")
        except RuntimeError as err:
            print("WITHOUT-STEP: RuntimeError:", str(err).splitlines()[0])
        from lightning_modules.networks.one2345.spconv_compat import ensure_cpu_backward
        print("PATCHED:", ",".join(ensure_cpu_backward()))
        backward()
        print("WITH-STEP: ok", bool(feats.grad.abs().sum() > 0))
    """)
    run = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in run.stdout.splitlines() if ": " in line)
    assert lines["WITHOUT-STEP"].startswith("RuntimeError:"), run.stdout
    assert "NVIDIA driver" in lines["WITHOUT-STEP"] or "CUDA" in lines["WITHOUT-STEP"], run.stdout
    assert "spconv.pytorch.cppcore" in lines["PATCHED"].split(","), run.stdout
    assert "spconv.pytorch.ops" in lines["PATCHED"].split(","), run.stdout
    assert lines["WITH-STEP"] == "ok True", run.stdout


def test_compat_step_is_idempotent_and_no_op_with_cuda(monkeypatch):
    from spconv.pytorch import cppcore, ops

    ensure_cpu_backward()
    assert ensure_cpu_backward() == []  # nothing left to patch
    if not torch.cuda.is_available():
        assert cppcore.get_current_stream() == 0 and ops.get_current_stream() == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ensure_cpu_backward() == []


# ---------------------------------------------------------------------------------------------- to_dense


def test_to_dense_puts_features_at_b_i_j_k():
    res = 5
    coords = random_sites(res, batch=2, fraction=0.3, seed=3)
    feats = torch.randn(len(coords), 3, requires_grad=True)
    dense = to_dense(SparseVolume(feats, coords, [res] * 3, 2))
    assert dense.shape == (2, 3, res, res, res)
    for row, (b, i, j, k) in enumerate(coords.tolist()):
        assert torch.equal(dense[b, :, i, j, k], feats[row])
    mask = torch.zeros(2, res, res, res, dtype=torch.bool)
    mask[tuple(coords.long().T)] = True
    assert not dense.permute(0, 2, 3, 4, 1)[~mask].any()  # zero elsewhere
    # hand-checked single voxel
    one = to_dense(SparseVolume(torch.tensor([[7.0]]), torch.tensor([[1, 2, 0, 3]], dtype=torch.int32), [4, 4, 4], 2))
    assert one[1, 0, 2, 0, 3] == 7.0 and one.sum() == 7.0
    dense.sum().backward()
    assert torch.equal(feats.grad, torch.ones_like(feats))


def test_cpu_run_with_several_threads_warns_once(monkeypatch):
    from lightning_modules.networks.one2345 import sparse_cnn

    monkeypatch.setattr(sparse_cnn, "_WARNED_THREADS", False)
    torch.set_num_threads(2)  # the autouse fixture restores the count
    net = SparseGeometryNet(in_channels=2, out_channels=2, channels=(2,), blocks=0)
    volume = SparseVolume(torch.randn(8, 2, dtype=torch.float64), full_block(2), [2, 2, 2], 1)
    net = net.double()
    with pytest.warns(RuntimeWarning, match="set_num_threads"):
        net(volume)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net(volume)  # once only
