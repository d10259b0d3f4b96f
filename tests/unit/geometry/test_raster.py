"""geometry.raster against hand-computed cases: coverage at pixel centres, analytic depth, z-buffer order,
perspective-correct colours, an icosphere's silhouette, big and many-face meshes, turntables."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image, ImageSequence

from geometry.cameras import intrinsics_from_fov, invert_rigid, look_at, project_points
from geometry.image import write_turntable
from geometry.mesh import marching_cubes, query_grid
from geometry.raster import (
    framing,
    render_mesh,
    render_turntable,
    turntable_cameras,
)
from geometry.rigs import orbit

RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def centres(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    return u, v


def camera_ray(u: float, v: float, K: np.ndarray) -> np.ndarray:
    """Camera-frame direction (z = 1) through pixel position (u, v)."""
    return np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])


def test_square_facing_the_camera_covers_exactly_the_pixel_centres_inside_it():
    H, W = 48, 64
    K = intrinsics_from_fov(50.0, W, H)
    eye = np.array([0.3, -3.0, 0.2])
    c2w = look_at(eye, eye + np.array([0.0, 1.0, 0.0]))  # looks along +Y, image-up +Z: the XZ plane faces it
    depth = 2.0
    x0, x1, z0, z1 = 0.3 - 0.37, 0.3 + 0.52, 0.2 - 0.41, 0.2 + 0.29
    verts = np.array([[x0, eye[1] + depth, z0], [x1, eye[1] + depth, z0], [x1, eye[1] + depth, z1],
                      [x0, eye[1] + depth, z1]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    out = render_mesh(verts, faces, None, c2w, K, H, W, shading="none")
    uv, z = project_points(verts, K, c2w)
    np.testing.assert_allclose(z, depth)
    u, v = centres(H, W)
    (ulo, vlo), (uhi, vhi) = uv.min(axis=0), uv.max(axis=0)
    margin = min(np.abs(u - b).min() for b in (ulo, uhi)), min(np.abs(v - b).min() for b in (vlo, vhi))
    assert min(margin) > 1e-3  # no pixel centre sits on an edge: the expected set is unambiguous
    expected = (u >= ulo) & (u <= uhi) & (v >= vlo) & (v <= vhi)
    assert 200 < expected.sum() < H * W
    np.testing.assert_array_equal(out["alpha"].numpy(), expected.astype(np.float32))
    np.testing.assert_allclose(out["depth"].numpy()[expected], depth, atol=1e-5)
    assert np.all(out["depth"].numpy()[~expected] == 0)
    assert np.all(out["face_id"].numpy()[~expected] == -1)
    assert set(np.unique(out["face_id"].numpy()[expected])) == {0, 1}  # both triangles, no crack between them
    np.testing.assert_allclose(out["rgb"].numpy()[expected], 0.8, atol=1e-6)  # default grey, unlit
    np.testing.assert_allclose(out["rgb"].numpy()[~expected], 1.0)  # white background


def test_tilted_plane_depth_is_the_analytic_plane_depth_at_pixel_centres():
    H, W = 40, 56
    K = intrinsics_from_fov(45.0, W, H)
    c2w = look_at((1.2, -2.6, 0.9), (0.1, 0.0, -0.1))
    # a big tilted quad through the origin with normal n (world)
    n = np.array([0.3, -1.0, 0.5])
    n /= np.linalg.norm(n)
    a = np.cross(n, [0.0, 0.0, 1.0])
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    quad = np.array([2 * (sa * a + sb * b) for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
    out = render_mesh(quad, np.array([[0, 1, 2], [0, 2, 3]]), None, c2w, K, H, W)
    mask = out["alpha"].numpy() > 0
    assert mask.sum() > 0.5 * H * W
    # plane in the camera frame: n_c · X = d_c; the ray X = t·(x, y, 1) has z-depth t = d_c / (n_c · ray)
    w2c = invert_rigid(c2w)
    n_c = w2c[:3, :3] @ n
    d_c = n_c @ w2c[:3, 3]  # the origin lies on the plane
    u, v = centres(H, W)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)
    analytic = d_c / (rays @ n_c)
    np.testing.assert_allclose(out["depth"].numpy()[mask], analytic[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("order", ["near first", "far first"])
def test_near_triangle_occludes_far_one_whatever_the_face_order(order):
    H = W = 32
    K = intrinsics_from_fov(60.0, W, H)
    c2w = np.eye(4)  # camera at the origin looking along +z (camera frame = world frame)
    near_tri = [[-0.4, -0.4, 2.0], [0.5, -0.3, 2.0], [0.0, 0.6, 2.0]]
    far_tri = [[-1.5, -1.5, 3.0], [1.5, -1.5, 3.0], [0.0, 1.6, 3.0]]
    verts = np.array(near_tri + far_tri)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    colors = np.array([RED] * 3 + [BLUE] * 3)
    if order == "far first":
        faces = faces[::-1].copy()
    near_id = 0 if order == "near first" else 1
    out = render_mesh(verts, faces, colors, c2w, K, H, W, shading="none")
    fid = out["face_id"].numpy()
    near_px = fid == near_id
    assert near_px.sum() > 20 and (fid == 1 - near_id).sum() > 20  # both visible, the far one around the near
    assert out["rgb"][16, 16].tolist() == list(RED) and fid[16, 16] == near_id  # the overlap: near wins
    np.testing.assert_allclose(out["depth"].numpy()[near_px], 2.0, atol=1e-6)
    np.testing.assert_allclose(out["depth"].numpy()[fid == 1 - near_id], 3.0, atol=1e-6)


def test_vertex_colours_are_interpolated_with_perspective_correct_barycentrics():
    H = W = 48
    K = intrinsics_from_fov(55.0, W, H)
    c2w = np.eye(4)
    tri = np.array([[-1.0, -0.8, 1.5], [1.2, -0.6, 4.0], [0.1, 1.1, 2.5]])  # strongly varying depth
    out = render_mesh(tri, np.array([[0, 1, 2]]), np.array([RED, GREEN, BLUE]), c2w, K, H, W, shading="none")
    checked = 0
    for px, py in ((24, 24), (30, 20), (18, 30)):
        assert out["alpha"][py, px] == 1
        # by hand: intersect the pixel-centre ray with the triangle's plane, barycentrics of the 3-D point
        ray = camera_ray(px + 0.5, py + 0.5, K)
        normal = np.cross(tri[1] - tri[0], tri[2] - tri[0])
        t = (normal @ tri[0]) / (normal @ ray)
        point = t * ray
        m = np.stack([tri[0] - tri[2], tri[1] - tri[2]], axis=1)
        b01 = np.linalg.lstsq(m, point - tri[2], rcond=None)[0]
        bary = np.array([b01[0], b01[1], 1.0 - b01.sum()])
        expected = bary  # colours red, green, blue: the colour *is* the barycentric vector
        np.testing.assert_allclose(out["rgb"][py, px].numpy(), expected, atol=1e-5)
        assert out["depth"][py, px].item() == pytest.approx(t, abs=1e-5)
        # and it is not the affine (screen-space) interpolation, which differs visibly here
        uv, _ = project_points(tri, K, c2w)
        a = np.stack([uv[0] - uv[2], uv[1] - uv[2]], axis=1)
        s01 = np.linalg.solve(a, np.array([px + 0.5, py + 0.5]) - uv[2])
        affine = np.array([s01[0], s01[1], 1.0 - s01.sum()])
        assert np.abs(affine - expected).max() > 0.02
        checked += 1
    assert checked == 3


def test_icosphere_silhouette_is_the_projected_disc_and_centre_depth_is_distance_minus_radius():
    H = W = 128
    radius, distance = 0.6, 2.5
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    K = intrinsics_from_fov(40.0, W, H)
    c2w = look_at((0.0, -distance, 0.0))
    out = render_mesh(sphere.vertices, sphere.faces, None, c2w, K, H, W)
    # a sphere centred on the optical axis projects to a disc of radius f·r / sqrt(d² − r²)
    disc_r = K[0, 0] * radius / math.sqrt(distance ** 2 - radius ** 2)
    u, v = centres(H, W)
    disc = (u - K[0, 2]) ** 2 + (v - K[1, 2]) ** 2 <= disc_r ** 2
    mask = out["alpha"].numpy() > 0
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.98, iou
    # the inscribed polyhedron lies inside the sphere by at most r·(1 − cos(edge angle)) ≈ 1e-3·r here
    assert out["depth"][H // 2, W // 2].item() == pytest.approx(distance - radius, abs=2e-3)
    # headlight Lambert: the centre faces the camera (full colour), the rim is darker
    assert out["rgb"][H // 2, W // 2, 0].item() == pytest.approx(0.8, abs=0.01)
    rim_row = out["rgb"][H // 2].numpy()[mask[H // 2]]
    assert rim_row[0, 0] < 0.6 and rim_row[-1, 0] < 0.6


def test_a_box_that_fills_the_image_renders_every_pixel():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    assert len(box.faces) == 12
    H, W = 96, 128
    out = render_mesh(box.vertices, box.faces, None, look_at((0.0, -1.2, 0.0)), intrinsics_from_fov(40.0, W, H), H, W)
    assert out["rgb"].shape == (H, W, 3) and out["alpha"].shape == (H, W) and out["depth"].shape == (H, W)
    assert out["face_id"].dtype == torch.int64
    assert torch.all(out["alpha"] == 1)  # the front face, 0.7 away, spans far more than the 40° view
    np.testing.assert_allclose(out["depth"].numpy(), 0.7, atol=1e-5)  # fronto-parallel: z-depth is constant
    front = {int(i) for i in torch.unique(out["face_id"])}
    assert len(front) == 2  # the two triangles of the −Y face


def test_a_100k_face_mesh_renders_its_silhouette():
    grid = query_grid(lambda p: 0.7 - p.norm(dim=-1), resolution=200)
    verts, faces = marching_cubes(grid, 0.0, inside="above")
    assert len(faces) >= 100_000
    H = W = 192
    K = intrinsics_from_fov(40.0, W, H)
    out = render_mesh(torch.from_numpy(verts), torch.from_numpy(faces), np.full((len(verts), 3), 0.5),
                      look_at((0.0, -2.5, 0.0)), K, H, W)
    assert out["rgb"].shape == (H, W, 3) and out["rgb"].dtype == torch.float32
    disc_r = K[0, 0] * 0.7 / math.sqrt(2.5 ** 2 - 0.7 ** 2)
    u, v = centres(H, W)
    disc = (u - K[0, 2]) ** 2 + (v - K[1, 2]) ** 2 <= disc_r ** 2
    mask = out["alpha"].numpy() > 0
    assert (mask & disc).sum() / (mask | disc).sum() > 0.98
    assert len(torch.unique(out["face_id"])) > 5000  # tiny triangles, many of them visible


def test_faces_behind_the_near_plane_are_culled():
    tri = np.array([[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.0, 0.5, -1.0]])  # one vertex behind the camera
    out = render_mesh(tri, np.array([[0, 1, 2]]), None, np.eye(4), intrinsics_from_fov(60.0, 16, 16), 16, 16)
    assert torch.all(out["alpha"] == 0)


def test_rejects_bad_inputs():
    tri, face = np.zeros((3, 3)), np.array([[0, 1, 2]])
    K = intrinsics_from_fov(60.0, 8, 8)
    with pytest.raises(ValueError, match="shading 'phong'.*lambert, flat, none"):
        render_mesh(tri, face, None, np.eye(4), K, 8, 8, shading="phong")
    with pytest.raises(ValueError, match="faces index vertices 0..3 but there are 3"):
        render_mesh(tri, np.array([[0, 1, 3]]), None, np.eye(4), K, 8, 8)
    with pytest.raises(ValueError, match=r"colors must have shape \(V, 3\) or \(V, 4\) with V=3"):
        render_mesh(tri, face, np.zeros((2, 3)), np.eye(4), K, 8, 8)
    with pytest.raises(ValueError, match=r"float colors must lie in \[0, 1\]"):
        render_mesh(tri, face, np.full((3, 3), 2.0), np.eye(4), K, 8, 8)


def coloured_l_shape() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A non-symmetric mesh: a box with a smaller box stuck to its +X side, coloured by position."""
    a = trimesh.creation.box(extents=(0.8, 0.6, 1.0))
    b = trimesh.creation.box(extents=(0.5, 0.3, 0.3))
    b.apply_translation((0.6, 0.1, 0.3))
    mesh = trimesh.util.concatenate([a, b])
    v = np.asarray(mesh.vertices)
    return v, np.asarray(mesh.faces), (v - v.min(0)) / (v.max(0) - v.min(0))


def test_turntable_cameras_orbit_z_and_look_at_the_target():
    c2w, K = turntable_cameras(n_frames=4, elevation_deg=30.0, radius=2.0, fov_deg=40.0, size=64,
                               target=(0.1, 0.2, 0.3))
    assert c2w.shape == (4, 4, 4) and K.shape == (3, 3)
    np.testing.assert_allclose(K, intrinsics_from_fov(40.0, 64, 64))
    target = np.array([0.1, 0.2, 0.3])
    offsets = c2w[:, :3, 3] - target
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=1), 2.0)
    np.testing.assert_allclose(offsets[:, 2], 2.0 * math.sin(math.radians(30.0)))  # constant elevation
    np.testing.assert_allclose(offsets[0, :2] / np.linalg.norm(offsets[0, :2]), [0.0, -1.0], atol=1e-12)  # front
    np.testing.assert_allclose(offsets[1, :2] / np.linalg.norm(offsets[1, :2]), [1.0, 0.0], atol=1e-12)  # then +X
    uv, _ = project_points(target[None], K, c2w[2])
    np.testing.assert_allclose(uv[0], [32.0, 32.0], atol=1e-9)  # the target at the image centre
    assert np.all(c2w[:, 2, 1] < 0)  # image y (down) points towards −Z: world up is image up
    # one ring of the orbit rig, moved to the target
    rig = orbit("any", 64, views_per_ring=4, elevations=(30.0,), radius=2.0, fov_deg=40.0)
    np.testing.assert_allclose(c2w[:, :3, :3], rig.c2w[:, :3, :3], atol=1e-12)
    np.testing.assert_allclose(c2w[:, :3, 3], rig.c2w[:, :3, 3] + target, atol=1e-12)


def test_turntable_gif_has_n_distinct_frames(tmp_path):
    verts, faces, colors = coloured_l_shape()
    frames = render_turntable(verts, faces, colors, n_frames=6, size=48)
    assert frames.shape == (6, 48, 48, 3) and frames.dtype == np.uint8
    for i in range(6):
        assert np.abs(frames[i].astype(int) - frames[(i + 1) % 6].astype(int)).mean() > 2.0
    target, radius = framing(verts, 40.0)
    np.testing.assert_allclose(target, 0.5 * (verts.min(0) + verts.max(0)))
    assert (frames[0] < 250).any(axis=-1).mean() > 0.1  # the object shows, not just background
    path = write_turntable(tmp_path / "sub" / "spin.gif", frames, fps=10)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 6 and gif.size == (48, 48)
        assert gif.info.get("loop") == 0  # loops forever
        assert gif.info.get("duration") == 100
        read = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
    assert np.abs(read[0].astype(int) - frames[0].astype(int)).mean() < 4  # palette quantisation only


def test_turntable_mp4_and_unsupported_extension(tmp_path):
    verts, faces, colors = coloured_l_shape()
    frames = render_turntable(verts, faces, colors, n_frames=5, size=32)
    path = write_turntable(tmp_path / "spin.mp4", frames, fps=12)
    cap = cv2.VideoCapture(path)
    # imageio-ffmpeg is a dependency: H.264, which browsers (and W&B) play
    assert int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little") in (b"h264", b"avc1")
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == 5
    with pytest.raises(ValueError, match=r"unsupported turntable extension '\.avi'.*\.gif, \.mp4"):
        write_turntable(tmp_path / "spin.avi", frames)
