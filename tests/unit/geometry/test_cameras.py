import math

import numpy as np
import pytest

from geometry.cameras import (
    GL_TO_CV,
    backproject_depth,
    crop_intrinsics,
    fov_from_intrinsics,
    intrinsics_from_blender,
    intrinsics_from_fov,
    invert_rigid,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
    project_points,
    scale_intrinsics,
    spherical_c2w,
    spherical_cameras,
    spherical_to_cartesian,
)


@pytest.mark.parametrize("eye", [(0, -3, 0), (2, 1, 1.5), (0.1, 0.0, 4.0), (0, 0, -2.5)])
def test_look_at_is_a_rotation_looking_at_the_target(eye):
    c2w = look_at(eye, target=(0.1, -0.2, 0.3))
    R = c2w[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    forward = np.array([0.1, -0.2, 0.3]) - np.asarray(eye, float)
    np.testing.assert_allclose(R[:, 2], forward / np.linalg.norm(forward), atol=1e-12)  # +z forward
    np.testing.assert_allclose(c2w[:3, 3], eye)


def test_front_camera_sees_x_right_and_z_up():
    c2w = look_at(spherical_to_cartesian(3.0, 0.0, 0.0))  # azimuth 0 = the front (-Y)
    np.testing.assert_allclose(c2w[:3, 3], [0, -3, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 0], [1, 0, 0], atol=1e-12)   # image right = world +X
    np.testing.assert_allclose(c2w[:3, 1], [0, 0, -1], atol=1e-12)  # image down = world -Z
    K = intrinsics_from_fov(50, 64, 64)
    uv, z = project_points(np.array([[0.0, 0.0, 0.5], [0.5, 0.0, 0.0]]), K, c2w)
    assert uv[0, 1] < 32 and uv[1, 0] > 32 and np.all(z == pytest.approx(3.0))


def test_look_at_straight_down_still_proper():
    c2w = look_at((0, 0, 3))
    assert np.linalg.det(c2w[:3, :3]) == pytest.approx(1.0)


def test_gl_cv_conversion_is_an_involution_and_flips_y_z():
    c2w = look_at((1, -2, 1))
    gl = opencv_to_opengl(c2w)
    np.testing.assert_allclose(opengl_to_opencv(gl), c2w)
    np.testing.assert_allclose(gl[:3, 1], -c2w[:3, 1])
    np.testing.assert_allclose(gl[:3, 2], -c2w[:3, 2])
    np.testing.assert_allclose(GL_TO_CV @ GL_TO_CV, np.eye(4))


def test_invert_rigid_matches_matrix_inverse():
    c2w = look_at((1.3, -2.0, 0.7), target=(0.2, 0.1, 0.0))
    np.testing.assert_allclose(invert_rigid(c2w), np.linalg.inv(c2w), atol=1e-12)
    batch = np.stack([c2w, look_at((0, 3, 1))])
    np.testing.assert_allclose(invert_rigid(batch) @ batch, np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-12)


def test_fov_round_trip_and_blender_intrinsics():
    K = intrinsics_from_fov(50.0, 640, 480)
    assert fov_from_intrinsics(K, 640, 480) == pytest.approx(50.0)
    # Blender: 50° on a 36 mm sensor is lens = 18 / tan(25°)
    lens = 18.0 / math.tan(math.radians(25.0))
    np.testing.assert_allclose(intrinsics_from_blender(lens, 36.0, 24.0, "AUTO", 640, 480), K, atol=1e-9)
    np.testing.assert_allclose(intrinsics_from_blender(lens, 36.0, 24.0, "AUTO", 480, 640),
                               intrinsics_from_fov(50.0, 480, 640), atol=1e-9)
    with pytest.raises(ValueError, match="sensor_fit"):
        intrinsics_from_blender(lens, 36, 24, "DIAGONAL", 10, 10)
    with pytest.raises(ValueError, match="field of view"):
        intrinsics_from_fov(180.0, 10, 10)


def test_backproject_inverts_project():
    rng = np.random.default_rng(0)
    c2w = look_at((0.5, -2.5, 1.0))
    K = intrinsics_from_fov(45.0, 48, 32)
    depth = rng.uniform(1.0, 3.0, size=(32, 48))
    depth[0, :5] = 0  # no surface
    pts = backproject_depth(depth, K, c2w)
    assert len(pts) == depth.size - 5
    uv, z = project_points(pts, K, c2w)
    v, u = np.nonzero(depth > 0)
    np.testing.assert_allclose(uv, np.stack([u + 0.5, v + 0.5], -1), atol=1e-9)  # pixel centres at +0.5
    np.testing.assert_allclose(z, depth[depth > 0], atol=1e-9)


def test_backproject_inverts_project_with_skew():
    c2w = look_at((0.5, -2.5, 1.0))
    K = intrinsics_from_fov(45.0, 48, 32)
    K[0, 1] = 4.0  # a skewed camera: u = (fx·x + s·y)/z + cx
    depth = np.random.default_rng(1).uniform(1.0, 3.0, size=(32, 48))
    pts = backproject_depth(depth, K, c2w)
    uv, _ = project_points(pts, K, c2w)
    v, u = np.nonzero(depth > 0)
    np.testing.assert_allclose(uv, np.stack([u + 0.5, v + 0.5], -1), atol=1e-9)
    cam = pts @ invert_rigid(c2w)[:3, :3].T + invert_rigid(c2w)[:3, 3]
    np.testing.assert_allclose(uv[:, 0], (K[0, 0] * cam[:, 0] + 4.0 * cam[:, 1]) / cam[:, 2] + K[0, 2], atol=1e-9)


def test_spherical_cameras_sit_on_the_sphere_and_look_at_the_target():
    target = np.array([0.2, -0.1, 0.4])
    c2w, K = spherical_cameras([0.0, 30.0, -20.0], [0.0, 90.0, 200.0], 2.5, [40.0, 40.0, 60.0], 64, target)
    assert c2w.shape == (3, 4, 4) and K.shape == (3, 3, 3)
    np.testing.assert_allclose(c2w[:, :3, 3] - target, spherical_to_cartesian(2.5, [0.0, 30.0, -20.0],
                                                                             [0.0, 90.0, 200.0]), atol=1e-12)
    for m in c2w:  # a look_at camera: +z towards the target, image down towards −Z
        np.testing.assert_allclose(m, look_at(m[:3, 3], target), atol=1e-12)
    np.testing.assert_allclose(K[:2], [intrinsics_from_fov(40.0, 64, 64)] * 2)
    np.testing.assert_allclose(K[2], intrinsics_from_fov(60.0, 64, 64))
    # azimuth 0 is the front (−Y): the scalar form gives one (4, 4) camera
    np.testing.assert_allclose(spherical_c2w(0.0, 0.0, 3.0), look_at((0.0, -3.0, 0.0)), atol=1e-12)
    with pytest.raises(ValueError, match="radius must be positive"):
        spherical_c2w(0.0, 0.0, 0.0)


def test_resized_and_cropped_intrinsics_keep_points_on_the_same_content():
    c2w = look_at((0, -3, 0))
    K = intrinsics_from_fov(50, 64, 64)
    point = np.array([[0.3, 0.2, -0.1]])
    uv, _ = project_points(point, K, c2w)
    uv2, _ = project_points(point, scale_intrinsics(K, 0.5, 0.5), c2w)
    np.testing.assert_allclose(uv2, uv * 0.5)  # edges map to edges: continuous coords scale exactly
    uv3, _ = project_points(point, crop_intrinsics(K, 10, 7), c2w)
    np.testing.assert_allclose(uv3, uv - [10, 7])
