"""One-2-3-45's feature pyramid and sparse cost volume against hand-computed cases and ``geometry.cameras``.

Pixel convention (``geometry.cameras``): pixel centres at integer + 0.5; a stride-s feature map sees image point
(u, v) at (u/s, v/s); bilinear weights are computed here by hand from the pixel centres.
"""

import numpy as np
import pytest
import torch

from geometry.cameras import intrinsics_from_fov, look_at, project_points, spherical_to_cartesian
from lightning_modules.networks.one2345.cost_volume import (
    CostVolume,
    SparseVolume,
    aggregate,
    project,
    sample_features,
    voxel_grid,
)
from lightning_modules.networks.one2345.features import FeatureFPN


def cameras(specs, fov=40.0, width=64, height=48):
    """c2w (V, 4, 4), K (V, 3, 3) float64 tensors of look_at cameras given as (eye, target) pairs."""
    c2w = np.stack([look_at(eye, target) for eye, target in specs])
    K = np.stack([intrinsics_from_fov(fov, width, height)] * len(specs))
    return torch.tensor(c2w), torch.tensor(K)


def orbit(n, distance=2.5, seed=0):
    rng = np.random.default_rng(seed)
    return [(spherical_to_cartesian(distance, rng.uniform(-30, 60), rng.uniform(0, 360)), (0.0, 0.0, 0.0))
            for _ in range(n)]


# ---------------------------------------------------------------------------------------------- voxel grid


def test_voxel_grid_is_the_mesh_corner_grid_in_ij_order():
    grid = voxel_grid(3, bound=0.5)
    assert grid.shape == (27, 3) and grid.dtype == torch.float32
    assert torch.equal(grid[0], torch.tensor([-0.5, -0.5, -0.5]))
    assert torch.equal(grid[1], torch.tensor([-0.5, -0.5, 0.0]))  # k runs fastest
    assert torch.equal(grid[3], torch.tensor([-0.5, 0.0, -0.5]))
    assert torch.equal(grid[-1], torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="bound"):
        voxel_grid(4, bound=0.0)


# ---------------------------------------------------------------------------------------------- projection


@pytest.mark.parametrize("stride", [1, 4])
def test_project_matches_geometry_cameras(stride):
    width, height = 64, 48
    c2w, K = cameras(orbit(3), width=width, height=height)
    # also a camera inside the box, so that some points are behind it
    c2w2, K2 = cameras([((0.2, -0.3, 0.1), (1.0, 1.0, 0.0))], width=width, height=height)
    c2w, K = torch.cat([c2w, c2w2]), torch.cat([K, K2])
    rng = np.random.default_rng(1)
    pts = rng.uniform(-1.0, 1.0, size=(2, 200, 3))
    uv, z, visible = project(torch.tensor(pts), c2w.expand(2, -1, -1, -1), K.expand(2, -1, -1, -1),
                             (height // stride, width // stride), stride)
    assert uv.shape == (2, 4, 200, 2) and z.shape == visible.shape == (2, 4, 200) and visible.dtype == torch.bool
    assert torch.isfinite(uv).all()
    for b in range(2):
        for v in range(4):
            ref_uv, ref_z = project_points(pts[b], K[v].numpy(), c2w[v].numpy())
            np.testing.assert_allclose(z[b, v].numpy(), ref_z, atol=1e-9)
            front = ref_z > 1e-3
            np.testing.assert_allclose(uv[b, v].numpy()[front] * stride, ref_uv[front], atol=1e-6)
            inside = (ref_uv[:, 0] >= 0) & (ref_uv[:, 0] < width) & (ref_uv[:, 1] >= 0) & (ref_uv[:, 1] < height)
            ref_vis = front & inside
            np.testing.assert_array_equal(visible[b, v].numpy(), ref_vis)
    assert visible.any() and not visible.all()
    assert (~visible[:, 3] & (z[:, 3] <= 0)).any()  # behind the inside camera: invisible


# ---------------------------------------------------------------------------------------------- sampling


def random_map(h=6, w=8, channels=3, seed=0):
    return torch.tensor(np.random.default_rng(seed).normal(size=(1, 1, channels, h, w)))


def bilinear_by_hand(fmap, u, v):
    """fmap (C, h, w); (u, v) in pixel coordinates with centres at +0.5, strictly inside the centres' hull."""
    x, y = u - 0.5, v - 0.5
    i0, j0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - i0, y - j0
    return ((1 - fx) * (1 - fy) * fmap[:, j0, i0] + fx * (1 - fy) * fmap[:, j0, i0 + 1]
            + (1 - fx) * fy * fmap[:, j0 + 1, i0] + fx * fy * fmap[:, j0 + 1, i0 + 1])


def test_sample_features_is_bilinear_in_the_pixel_centre_convention():
    h, w = 6, 8
    fmap = random_map(h, w)
    # a map whose value at pixel (col, row) is its centre (col + 0.5, row + 0.5): bilinear returns uv itself
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    uv_map = torch.stack([cols + 0.5, rows + 0.5])[None, None]  # (1, 1, 2, h, w)
    uv = torch.tensor([[[[3.5, 5.5], [3.7, 5.2], [0.5, 0.5], [6.25, 1.9], [0.2, 5.5], [2.0, 3.0]]]],
                      dtype=torch.float64)  # (1, 1, 6, 2)
    visible = torch.tensor([[[True, True, True, True, True, False]]])
    out = sample_features(fmap, uv, visible)[0, 0]  # (6, C)
    expected_uv = uv[0, 0, :5].clone()
    expected_uv[4, 0] = 0.5  # left of the first centre: clamped to the edge pixel (border padding)
    torch.testing.assert_close(sample_features(uv_map, uv, visible)[0, 0, :5], expected_uv, rtol=0, atol=1e-12)
    f = fmap[0, 0]
    torch.testing.assert_close(out[0], f[:, 5, 3])  # exactly pixel (col 3, row 5)'s feature
    torch.testing.assert_close(out[1], bilinear_by_hand(f, 3.7, 5.2))
    torch.testing.assert_close(out[2], f[:, 0, 0])
    torch.testing.assert_close(out[3], bilinear_by_hand(f, 6.25, 1.9))
    torch.testing.assert_close(out[4], f[:, 5, 0])  # between the image edge and the first centre: the edge pixel
    assert torch.equal(out[5], torch.zeros(3, dtype=torch.float64))  # not visible: zero


def test_projected_point_at_a_pixel_centre_samples_that_pixel():
    """Camera at the origin looking along +z; image 16×12, f = 10, principal point (8, 6), features at stride 2."""
    fmap = random_map(6, 8)
    c2w = torch.eye(4, dtype=torch.float64)[None, None]
    K = torch.tensor([[10.0, 0.0, 8.0], [0.0, 10.0, 6.0], [0.0, 0.0, 1.0]], dtype=torch.float64)[None, None]
    # image pixel (7, 11) ↔ feature pixel (3.5, 5.5): the centre of feature column 3, row 5
    point = torch.tensor([[[(7.0 - 8.0) * 2.0 / 10.0, (11.0 - 6.0) * 2.0 / 10.0, 2.0]]], dtype=torch.float64)
    uv, z, visible = project(point, c2w, K, (6, 8), stride=2)
    torch.testing.assert_close(uv[0, 0, 0], torch.tensor([3.5, 5.5], dtype=torch.float64))
    assert visible.all() and z.item() == pytest.approx(2.0)
    torch.testing.assert_close(sample_features(fmap, uv, visible)[0, 0, 0], fmap[0, 0, :, 5, 3])


# ---------------------------------------------------------------------------------------------- aggregation

VOXEL = (0.5, -0.5, 0.0)  # a corner of the R = 5 grid over [-1, 1]^3: (i, j, k) = (3, 1, 2)
VOXEL_IJK = (3, 1, 2)
VALUES = np.array([1.0, 4.0, 10.0, 20.0])  # view v's constant feature is VALUES[v] · (1, 2, 3)


def k_view_rig(k):
    """4 cameras (16×16 images, 30° fov) of which exactly the first k see VOXEL: the others alternately look away
    from it (VOXEL behind them) or past it (VOXEL in front but outside the frustum, 37° off the optical axis)."""
    p = np.array(VOXEL)
    specs = []
    for v in range(4):
        d = spherical_to_cartesian(2.0, 10.0 + 15.0 * v, 40.0 + 80.0 * v)
        if v < k:
            specs.append((p + d, p))  # looks at VOXEL
        elif v % 2:
            specs.append((p + d, p + 2 * d))  # looks away
        else:
            side = np.cross(d, (0.0, 0.0, 1.0))
            specs.append((p + d, p + 1.5 * side / np.linalg.norm(side)))  # looks past
    c2w, K = cameras(specs, fov=30.0, width=16, height=16)
    channels = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    feats = (torch.tensor(VALUES)[:, None] * channels)[:, :, None, None].expand(4, 3, 16, 16)
    return feats[None], c2w[None], K[None]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_voxel_seen_by_exactly_k_views_gets_their_mean_and_variance(k):
    feats, c2w, K = k_view_rig(k)
    uv, z, visible = project(torch.tensor([[VOXEL]], dtype=torch.float64), c2w, K, (16, 16))
    assert visible[0, :, 0].tolist() == [True] * k + [False] * (4 - k)
    assert (z[0, k:, 0] < 0).any() or k == 3  # a looking-away camera among the others
    mean, var, count = aggregate(sample_features(feats, uv, visible), visible)
    seen = VALUES[:k]
    channels = np.array([1.0, 2.0, 3.0])
    assert count.item() == k
    np.testing.assert_allclose(mean[0, 0].numpy(), seen.mean() * channels, rtol=1e-12)
    np.testing.assert_allclose(var[0, 0].numpy(), seen.var() * channels ** 2, rtol=1e-12, atol=1e-12)

    # the same numbers come out of the cost volume, at the voxel's (i, j, k)
    volume = CostVolume(resolution=5)(feats, c2w, K)
    row = (volume.coords == torch.tensor([0, *VOXEL_IJK], dtype=torch.int32)).all(dim=1)
    assert row.sum() == 1
    expected = np.concatenate([seen.mean() * channels, seen.var() * channels ** 2])
    np.testing.assert_allclose(volume.feats[row][0].numpy(), expected, rtol=1e-6, atol=1e-9)


def test_voxel_seen_by_no_view_is_dropped():
    feats, c2w, K = k_view_rig(0)
    uv, _, visible = project(torch.tensor([[VOXEL]], dtype=torch.float64), c2w, K, (16, 16))
    assert not visible.any()
    mean, var, count = aggregate(sample_features(feats, uv, visible), visible)
    assert count.item() == 0 and not mean.any() and not var.any()
    volume = CostVolume(resolution=5)(feats, c2w, K)
    assert len(volume.coords) > 0  # other voxels are seen …
    assert not (volume.coords == torch.tensor([0, *VOXEL_IJK], dtype=torch.int32)).all(dim=1).any()  # … this one not


# ---------------------------------------------------------------------------------------------- cost volume


def two_camera_batch(channels=4):
    """B = 2 samples × V = 2 views of 16×16 images with random 8×8 feature maps (stride 2); sample 1's second camera
    looks away from the object."""
    c2w0, K = cameras(orbit(2, seed=3), fov=50.0, width=16, height=16)
    eye = spherical_to_cartesian(2.5, 20.0, 200.0)
    c2w1, _ = cameras([orbit(1, seed=4)[0], (eye, 2 * eye)], width=16, height=16)
    c2w, K = torch.stack([c2w0, c2w1]).float(), torch.stack([K, K]).float()
    feats = torch.randn(2, 2, channels, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    return feats, c2w, K


def test_cost_volume_sparse_output_matches_a_dense_reference():
    feats, c2w, K = two_camera_batch()
    res = 8
    volume = CostVolume(resolution=res, chunk=10 ** 6)(feats, c2w, K, stride=2)
    assert isinstance(volume, SparseVolume)
    assert volume.coords.dtype == torch.int32 and volume.coords.shape[1] == 4
    assert volume.feats.shape == (len(volume.coords), 8)  # 2C = [mean | var]
    assert volume.spatial_shape == [res, res, res] and volume.batch_size == 2
    assert set(volume.coords[:, 0].tolist()) == {0, 1}
    assert torch.equal(volume.coords[:, 0], volume.coords[:, 0].sort().values)  # batch-major
    assert (volume.coords[:, 1:] >= 0).all() and (volume.coords[:, 1:] < res).all()

    # dense reference over all voxels at once
    pts = voxel_grid(res)[None].expand(2, -1, -1)
    uv, _, visible = project(pts, c2w, K, (8, 8), stride=2)
    mean, var, count = aggregate(sample_features(feats, uv, visible), visible)
    b, n = (count >= 1).nonzero(as_tuple=True)
    assert len(b) < 2 * res ** 3  # some voxels are dropped …
    assert (count[1] <= 1).all()  # … and sample 1 sees everything through one camera at most
    ijk = torch.stack([n // res ** 2, (n // res) % res, n % res], dim=-1)
    assert torch.equal(volume.coords, torch.cat([b[:, None], ijk], dim=-1).to(torch.int32))
    torch.testing.assert_close(volume.feats, torch.cat([mean[b, n], var[b, n]], dim=-1))
    # a kept voxel's coordinates point back at its world position
    grid = voxel_grid(res)
    i, j, k = volume.coords[0, 1:].tolist()
    assert torch.equal(grid[(i * res + j) * res + k], pts[0, n[0]])

    two = CostVolume(resolution=res, min_views=2)(feats, c2w, K, stride=2)
    assert torch.equal(two.coords, volume.coords[(count[b, n] >= 2)])
    assert (two.coords[:, 0] == 0).all()  # sample 1 has no voxel seen twice


def test_cost_volume_chunked_equals_unchunked_and_passes_gradients():
    feats, c2w, K = two_camera_batch()
    whole = CostVolume(resolution=8, chunk=10 ** 6)(feats, c2w, K, stride=2)
    chunked = CostVolume(resolution=8, chunk=37)(feats, c2w, K, stride=2)
    assert torch.equal(whole.coords, chunked.coords)
    torch.testing.assert_close(whole.feats, chunked.feats)
    chunked.feats.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0 and torch.isfinite(feats.grad).all()


def test_cost_volume_rejects_mismatched_cameras():
    feats, c2w, K = two_camera_batch()
    with pytest.raises(ValueError, match="c2w"):
        CostVolume(resolution=4)(feats, c2w[:, :1], K, stride=2)
    with pytest.raises(ValueError, match="min_views"):
        CostVolume(resolution=4, min_views=0)


# ---------------------------------------------------------------------------------------------- feature pyramid


def test_feature_fpn_default_is_sparseneus_sized():
    fpn = FeatureFPN()
    out, stride = fpn(torch.rand(1, 2, 3, 32, 48))
    assert out.shape == (1, 2, 56, 32, 48) and stride == 1
    assert isinstance(fpn.fuse, torch.nn.Identity)  # 8 + 16 + 32 = 56 channels concatenated, no projection


def test_feature_fpn_tiny_config_shapes_and_gradients():
    fpn = FeatureFPN(base_channels=2, out_channels=6, out_stride=4)
    assert sum(p.numel() for p in fpn.parameters()) < 5000  # vs ≈ 60k for the default
    images = torch.rand(2, 3, 3, 16, 24, requires_grad=True)
    out, stride = fpn(images)
    assert out.shape == (2, 3, 6, 4, 6) and stride == 4
    # into the cost volume: features at stride 4 of 16×24 images
    c2w, K = cameras(orbit(3, seed=5), width=24, height=16)
    volume = CostVolume(resolution=6)(out, c2w[None].float().expand(2, -1, -1, -1),
                                      K[None].float().expand(2, -1, -1, -1), stride=stride)
    assert volume.feats.shape[1] == 12 and len(volume.coords) > 0
    volume.feats.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    for name, p in fpn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_feature_fpn_rejects_bad_inputs():
    with pytest.raises(ValueError, match="divisible by 4"):
        FeatureFPN(base_channels=2)(torch.rand(1, 1, 3, 18, 16))
    with pytest.raises(ValueError, match="out_stride"):
        FeatureFPN(out_stride=3)
