"""geometry.rays: rays agree with projection, ray–box clipping, and the LRM's canonical camera normalisation."""

import numpy as np
import pytest
import torch

from geometry.cameras import look_at, project_points, spherical_to_cartesian
from geometry.rays import (
    camera_rays,
    canonical_c2w,
    canonical_to_world,
    canonicalize_cameras,
    invert_rigid,
    pixel_centres,
    project,
    ray_box,
    world_to_canonical,
)
from geometry.rigs import lrm32


def _rig(n=6, uid="obj"):
    rig = lrm32(uid, resolution=32, num_views=n)
    return torch.tensor(rig.c2w, dtype=torch.float64), torch.tensor(rig.K, dtype=torch.float64)


def test_rays_pass_through_their_pixels_and_t_is_z_depth():
    c2w, K = _rig(2)
    origins, dirs = camera_rays(c2w, K, 32, 32)
    t = 1.7
    points = (origins + t * dirs)[1].reshape(-1, 3).numpy()
    uv, z = project_points(points, K[1].numpy(), c2w[1].numpy())
    v, u = np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5, indexing="ij")
    np.testing.assert_allclose(uv, np.stack([u.ravel(), v.ravel()], -1), atol=1e-9)
    np.testing.assert_allclose(z, t, atol=1e-12)


def test_project_is_the_numpy_projection_batched_and_honours_skew():
    c2w, K = _rig(3)
    K = K.clone()
    K[1, 0, 1] = 3.0  # one skewed camera: u = (fx·x + s·y)/z + cx
    pts = torch.tensor(np.random.default_rng(0).uniform(-1.0, 1.0, (2, 50, 3)))
    uv, z = project(pts[:, None], c2w.expand(2, -1, -1, -1), K.expand(2, -1, -1, -1))  # (B, 1, N) × (B, V)
    assert uv.shape == (2, 3, 50, 2) and z.shape == (2, 3, 50)
    for b in range(2):
        for v in range(3):
            ref_uv, ref_z = project_points(pts[b].numpy(), K[v].numpy(), c2w[v].numpy())
            np.testing.assert_allclose(uv[b, v].numpy(), ref_uv, atol=1e-9)
            np.testing.assert_allclose(z[b, v].numpy(), ref_z, atol=1e-12)
    w2c = invert_rigid(c2w[1])
    cam = pts[0] @ w2c[:3, :3].T + w2c[:3, 3]
    torch.testing.assert_close(uv[0, 1, :, 0], (K[1, 0, 0] * cam[:, 0] + 3.0 * cam[:, 1]) / cam[:, 2] + K[1, 0, 2])
    # rays of the skewed camera pass through their pixel centres
    origins, dirs = camera_rays(c2w[1], K[1], 8, 8)
    back, depth = project((origins + 2.0 * dirs).reshape(-1, 3), c2w[1], K[1])
    np.testing.assert_allclose(back.numpy(), pixel_centres(8, 8, dtype=torch.float64).reshape(-1, 2).numpy(),
                               atol=1e-9)
    np.testing.assert_allclose(depth.numpy(), 2.0, atol=1e-12)


def test_project_keeps_points_behind_the_camera_finite():
    c2w, K = _rig(1)
    behind = 1.5 * c2w[0, :3, 3][None]  # the camera looks at the origin: this point is behind it
    uv, z = project(behind, c2w[0], K[0], near=1e-3)
    assert z.item() < 0 and torch.isfinite(uv).all()


def test_ray_box_slab_intersection():
    o = torch.tensor([[0.0, 0.0, -3.0], [0.5, -4.0, 0.2], [3.0, 3.0, -3.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    near, far, hit = ray_box(o, d)
    assert hit.tolist() == [True, True, False, True]
    torch.testing.assert_close(near[:2], torch.tensor([2.0, 1.5]))
    torch.testing.assert_close(far[:2], torch.tensor([4.0, 2.5]))
    assert near[2] == far[2]  # a miss is an empty interval
    assert near[3] == pytest.approx(1e-3) and far[3] == pytest.approx(1.0)  # a camera inside the box


def test_canonical_camera_looks_at_the_origin_from_the_front():
    c2w = canonical_c2w(2.0, dtype=torch.float64).numpy()
    np.testing.assert_allclose(c2w, look_at(spherical_to_cartesian(2.0, 0.0, 0.0)), atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 3], [0.0, -2.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("distance", [2.0, None])
def test_canonicalization_keeps_relative_poses(distance):
    c2w, _ = _rig(6)
    canon, moved, s = canonicalize_cameras(c2w[None, 0], c2w[None], distance)
    torch.testing.assert_close(moved[0, 0], canon[0])  # the source lands on the canonical camera
    if distance is None:
        assert s.item() == 1.0
        assert torch.isclose(canon[0, :3, 3].norm(), c2w[0, :3, 3].norm())
    else:
        assert torch.isclose(canon[0, :3, 3].norm(), torch.tensor(2.0, dtype=torch.float64))
    for i in range(1, 6):
        rel_before = invert_rigid(c2w[0]) @ c2w[i]
        rel_after = invert_rigid(moved[0, 0]) @ moved[0, i]
        torch.testing.assert_close(rel_after[:3, :3], rel_before[:3, :3])  # rotation unchanged
        torch.testing.assert_close(rel_after[:3, 3], rel_before[:3, 3] * s[0])  # translation scaled by s
    # the rig's cameras look at the origin, so the object stays centred
    origin = world_to_canonical(torch.zeros(1, 3, dtype=torch.float64), c2w[0], distance)
    torch.testing.assert_close(origin, torch.zeros(1, 3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_world_to_canonical_round_trip_and_projection():
    """A world point projects to the same pixel before and after the move, at depth × s."""
    c2w, K = _rig(3)
    points = torch.rand(20, 3, dtype=torch.float64) * 2 - 1
    canon_pts = world_to_canonical(points, c2w[0])
    torch.testing.assert_close(canonical_to_world(canon_pts, c2w[0]), points)
    _, moved, s = canonicalize_cameras(c2w[None, 0], c2w[None])
    for v in range(3):
        uv0, z0 = project_points(points.numpy(), K[v].numpy(), c2w[v].numpy())
        uv1, z1 = project_points(canon_pts.numpy(), K[v].numpy(), moved[0, v].numpy())
        np.testing.assert_allclose(uv1, uv0, atol=1e-9)
        np.testing.assert_allclose(z1, z0 * s.item(), atol=1e-9)

