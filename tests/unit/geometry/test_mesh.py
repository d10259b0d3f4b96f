import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from geometry.mesh import (
    chamfer_distance,
    fscore,
    grid_points,
    load_mesh,
    marching_cubes,
    opacity_level,
    query_grid,
    sample_surface,
    save_mesh,
)

R, RADIUS = 40, 0.6
VOXEL = 2.0 / (R - 1)


def sphere_sdf(points: torch.Tensor) -> torch.Tensor:
    return points.norm(dim=-1) - RADIUS


def sphere_points(radius: float, n: int, seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return radius * p / np.linalg.norm(p, axis=1, keepdims=True)


def test_grid_points_are_ij_indexed_corners():
    g = grid_points(5, bbox=(-1.0, 3.0))
    assert g.shape == (5, 5, 5, 3) and g.dtype == torch.float32
    np.testing.assert_allclose(g[0, 0, 0], [-1, -1, -1])
    np.testing.assert_allclose(g[4, 4, 4], [3, 3, 3])
    np.testing.assert_allclose(g[1, 2, 3], [0, 1, 2])  # (x_i, y_j, z_k), step 1


@pytest.mark.parametrize("resolution", [1, 2.5, True])
def test_grid_points_rejects_bad_resolution(resolution):
    with pytest.raises(ValueError, match="resolution"):
        grid_points(resolution)


def test_query_grid_equals_direct_evaluation_in_chunks():
    fn = lambda p: p[..., 0] * 2.0 + p[..., 1] ** 2 - p[..., 2]
    grid = query_grid(fn, resolution=9, bbox=(-0.5, 1.5), chunk=100)  # 729 points: uneven chunks
    assert grid.shape == (9, 9, 9) and grid.dtype == torch.float32 and grid.device.type == "cpu"
    torch.testing.assert_close(grid, fn(grid_points(9, bbox=(-0.5, 1.5))))


def test_query_grid_rejects_wrong_output_shape():
    with pytest.raises(ValueError, match="returned shape"):
        query_grid(lambda p: p, resolution=4)


def _check_sphere(verts, faces):
    assert verts.dtype == np.float32 and faces.dtype == np.int64
    radii = np.linalg.norm(verts, axis=1)
    assert np.all(np.abs(radii - RADIUS) < VOXEL)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center) > 0
    assert outward.mean() > 0.99


def test_marching_cubes_sdf_below_has_outward_normals():
    sdf = query_grid(sphere_sdf, resolution=R)
    _check_sphere(*marching_cubes(sdf, 0.0, inside="below"))


def test_marching_cubes_density_above_has_outward_normals():
    density = -query_grid(sphere_sdf, resolution=R).numpy()
    verts, faces = marching_cubes(density, 0.0, inside="above")
    _check_sphere(verts, faces)
    assert trimesh.Trimesh(verts, faces, process=False).volume > 0  # consistent winding encloses + volume


def test_marching_cubes_maps_to_bbox():
    sdf = query_grid(lambda p: (p - 1.0).norm(dim=-1) - 0.5, resolution=R, bbox=(0.0, 2.0))
    verts, _ = marching_cubes(sdf, 0.0, bbox=(0.0, 2.0), inside="below")
    assert np.all(np.abs(np.linalg.norm(verts - 1.0, axis=1) - 0.5) < VOXEL)


@pytest.mark.parametrize("level", [5.0, -5.0])
def test_marching_cubes_level_outside_range(level):
    sdf = query_grid(sphere_sdf, resolution=8)
    with pytest.raises(ValueError, match="no surface: the field ranges over .* outside it"):
        marching_cubes(sdf, level)


def ray_surface_radius(density, radius: float = 1.0, n: int = 200_001) -> float:
    """Where a ray from the grid's face straight at the centre of a radial density turns half opaque (fine steps)."""
    r = np.linspace(radius, 0.0, n)
    depth = np.cumsum(density(r)) * (radius / (n - 1))
    return float(r[np.argmax(depth >= np.log(2.0))])


@pytest.mark.parametrize("width", [0.005, 0.03])
def test_opacity_level_puts_the_mesh_where_rays_turn_opaque(width):
    """A sharp sphere meshes at its jump; a soft one where a ray through its centre renders the surface, within
    about a voxel outward (rays grazing the soft shell turn opaque at a lower density: the rendered silhouette)."""
    density = lambda r: 40.0 / (1.0 + np.exp(-(RADIUS - r) / width)) + 0.01  # noqa: E731
    grid = query_grid(lambda p: torch.as_tensor(density(p.norm(dim=-1).double().numpy())), resolution=R)
    level = opacity_level(grid)
    radii = np.linalg.norm(marching_cubes(grid, level)[0], axis=1)
    target = ray_surface_radius(density)
    assert 0.01 < level < 40.0
    assert np.all(np.abs(radii - target) < 1.5 * VOXEL), (level, radii.min(), radii.max(), target)


@pytest.mark.parametrize("field, message", [
    (lambda p: 0.4 + 0.01 * torch.sin(7.0 * p[:, 0]), "nearly flat"),  # fog: every ray turns opaque somewhere
    (lambda p: 0.01 + 0.0 * p[:, 0], "no ray .* turns half opaque"),    # empty space
    (lambda p: 0.3 + 0.0 * p[:, 0], "no ray .* turns half opaque"),     # an untrained LRM: softplus(-1) everywhere
])
def test_opacity_level_reports_no_surface(field, message):
    with pytest.raises(ValueError, match=f"no surface: .*{message}"):
        opacity_level(query_grid(field, resolution=24))


def test_marching_cubes_rejects_bad_inside():
    with pytest.raises(ValueError, match="inside"):
        marching_cubes(np.zeros((4, 4, 4)), 0.0, inside="in")


@pytest.mark.parametrize("ext", [".glb", ".obj", ".ply"])
def test_save_mesh_round_trip_denormalises(tmp_path, ext):
    box = trimesh.creation.box(extents=(0.5, 1.0, 1.5))
    verts, faces = np.asarray(box.vertices), np.asarray(box.faces)
    colors = np.random.default_rng(0).random((len(verts), 3))
    path = save_mesh(tmp_path / "nested" / f"mesh{ext}", verts, faces, vertex_colors=colors,
                     normalization={"scale": 2.0, "offset": [1.0, 0.0, 0.0]})
    assert path == str(tmp_path / "nested" / f"mesh{ext}")
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.vertices) == len(verts)
    expected = verts / 2.0 - [1.0, 0.0, 0.0]  # denormalised, +Z up
    if ext == ".glb":  # glTF is +Y up: (x, y, z) → (x, z, −y), applied after denormalising
        expected = np.stack([expected[:, 0], expected[:, 2], -expected[:, 1]], axis=1)
    np.testing.assert_allclose(loaded.vertices, expected, atol=1e-6)
    if ext in (".glb", ".ply"):
        np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], np.round(colors * 255).astype(np.uint8))


def blender_gltf_import(v: np.ndarray) -> np.ndarray:
    """Blender's glTF importer turn, +Y up → +Z up: (x, y, z)_gltf → (x, −z, y)."""
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)


@pytest.mark.parametrize("ext", [".glb", ".gltf"])
def test_save_mesh_gltf_imports_back_to_z_up_world(tmp_path, ext):
    # an asymmetric box off the origin: every axis is distinguishable, so a wrong turn or sign cannot pass
    box = trimesh.creation.box(extents=(0.2, 0.6, 1.4))
    verts = np.asarray(box.vertices) + [0.1, -0.3, 0.5]
    path = save_mesh(tmp_path / f"m{ext}", verts, box.faces)
    raw = np.asarray(trimesh.load(path, force="mesh", process=False).vertices)
    assert np.ptp(raw[:, 1]) == pytest.approx(1.4)  # the +Z-up long side is glTF's +Y (up)
    np.testing.assert_allclose(blender_gltf_import(raw), verts, atol=1e-6)
    # the turn is a rotation: the mesh still encloses a positive volume (outward winding kept)
    assert trimesh.Trimesh(raw, box.faces, process=False).volume == pytest.approx(box.volume)


@pytest.mark.parametrize("ext, y_up, turned", [(".obj", None, False), (".ply", None, False), (".obj", True, True),
                                               (".glb", False, False), (".ply", True, True)])
def test_save_mesh_y_up_default_and_override(tmp_path, ext, y_up, turned):
    box = trimesh.creation.box(extents=(0.2, 0.6, 1.4))
    verts = np.asarray(box.vertices) + [0.1, -0.3, 0.5]
    path = save_mesh(tmp_path / f"m{ext}", verts, box.faces, y_up=y_up)
    loaded = np.asarray(trimesh.load(path, force="mesh", process=False).vertices)
    np.testing.assert_allclose(blender_gltf_import(loaded) if turned else loaded, verts, atol=1e-6)


def test_save_mesh_accepts_uint8_colours_and_tensors(tmp_path):
    box = trimesh.creation.box()
    colors = np.full((len(box.vertices), 3), 200, dtype=np.uint8)
    path = save_mesh(tmp_path / "m.ply", torch.as_tensor(box.vertices), torch.as_tensor(box.faces), colors)
    np.testing.assert_array_equal(trimesh.load(path, process=False).visual.vertex_colors[:, :3], colors)


def test_save_mesh_rejects_unsupported_extension(tmp_path):
    box = trimesh.creation.box()
    with pytest.raises(ValueError, match=r"'\.stl'.*\.glb, \.gltf, \.obj, \.ply"):
        save_mesh(tmp_path / "m.stl", box.vertices, box.faces)


def test_save_mesh_rejects_out_of_range_float_colours(tmp_path):
    box = trimesh.creation.box()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        save_mesh(tmp_path / "m.ply", box.vertices, box.faces, np.full((len(box.vertices), 3), 255.0))


def test_sample_surface_on_surface_deterministic_and_area_weighted():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    a = sample_surface(sphere.vertices, sphere.faces, 2000, seed=3)
    assert a.shape == (2000, 3)
    np.testing.assert_array_equal(a, sample_surface(sphere.vertices, sphere.faces, 2000, seed=3))
    assert not np.array_equal(a, sample_surface(sphere.vertices, sphere.faces, 2000, seed=4))
    _, dist, _ = trimesh.proximity.closest_point(sphere, a)
    assert dist.max() < 1e-9
    # two triangles in the z=0 plane, areas 1/2 and 3/2: a quarter of the points land on the small one
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [3, 0, 0], [0, -1, 0]], dtype=float)
    p = sample_surface(verts, np.array([[0, 1, 2], [3, 4, 5]]), 20000, seed=0)
    assert np.all(p[:, 2] == 0) and np.mean(p[:, 1] > 0) == pytest.approx(0.25, abs=0.02)


def test_chamfer_identical_is_zero():
    a = sphere_points(0.5, 500, seed=0)
    assert chamfer_distance(a, a) == 0.0


def test_chamfer_of_concentric_spheres_is_their_gap():
    d = 0.05
    inner, outer = sphere_points(0.5, 20000, seed=0), sphere_points(0.5 + d, 20000, seed=1)
    assert chamfer_distance(inner, outer) == pytest.approx(d, rel=0.1)


def test_fscore():
    d = 0.05
    inner, outer = sphere_points(0.5, 20000, seed=0), sphere_points(0.5 + d, 20000, seed=1)
    assert fscore(inner, inner, tau=1e-3) == 1.0
    assert fscore(inner, outer, tau=0.5 * d) == 0.0
    assert fscore(inner, outer, tau=2.0 * d) == 1.0
    with pytest.raises(ValueError, match="tau"):
        fscore(inner, outer, tau=0.0)


def _asymmetric_box():
    box = trimesh.creation.box(extents=(0.2, 0.6, 1.4))
    return np.asarray(box.vertices) + [0.1, -0.3, 0.5], np.asarray(box.faces)


@pytest.mark.parametrize("ext", [".glb", ".ply"])
def test_load_mesh_reads_back_what_save_mesh_wrote_in_the_world_frame(tmp_path, ext):
    verts, faces = _asymmetric_box()
    v, f = load_mesh(save_mesh(tmp_path / f"m{ext}", verts, faces))  # glb: turned to +Y up and back
    np.testing.assert_allclose(v, verts, atol=1e-6)
    np.testing.assert_array_equal(f, faces)


def test_load_mesh_turns_y_up_obj_as_blender_imports_it_and_normalises(tmp_path):
    verts, faces = _asymmetric_box()
    path = tmp_path / "asset.obj"  # a +Y-up OBJ, as exported by most tools: (x, y, z)_obj
    trimesh.Trimesh(verts, faces, process=False).export(path)
    v, _ = load_mesh(path)
    np.testing.assert_allclose(v, np.stack([verts[:, 0], -verts[:, 2], verts[:, 1]], axis=1), atol=1e-6)
    v, _ = load_mesh(path, {"scale": 2.0, "offset": [1.0, 0.0, -1.0]})
    expected = (np.stack([verts[:, 0], -verts[:, 2], verts[:, 1]], axis=1) + [1.0, 0.0, -1.0]) * 2.0
    np.testing.assert_allclose(v, expected, atol=1e-6)


def test_load_mesh_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"asset\.fbx.*convert"):
        load_mesh(tmp_path / "asset.fbx")
    with pytest.raises(FileNotFoundError, match="missing.glb"):
        load_mesh(tmp_path / "missing.glb")
    (tmp_path / "bad.glb").write_bytes(b"glTF but not really")
    with pytest.raises(ValueError, match="bad.glb"):
        load_mesh(tmp_path / "bad.glb")


def test_marching_cubes_closed_caps_an_object_cut_by_the_grid():
    """A sphere of radius 1.2 in the [-1, 1] grid is cut by all six faces: open unless ``closed``; closed, it is
    watertight, stays inside the bbox and encloses the cube ∩ ball volume."""
    grid = query_grid(lambda p: p.norm(dim=-1) - 1.2, R)
    open_v, open_f = marching_cubes(grid, 0.0, inside="below")
    assert not trimesh.Trimesh(open_v, open_f, process=False).is_watertight
    v, f = marching_cubes(grid, 0.0, inside="below", closed=True)
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and v.min() >= -1.0 and v.max() <= 1.0
    # cube ∩ ball(1.2), by Monte Carlo with 200k points: 3 standard errors ≈ 0.03; marching cubes at R=40 adds less
    pts = np.random.default_rng(0).uniform(-1, 1, (200_000, 3))
    assert mesh.volume == pytest.approx(8.0 * np.mean(np.linalg.norm(pts, axis=1) < 1.2), abs=0.08)
    # inside the grid the surface is unchanged: the closed mesh's vertices off the bbox are the open mesh's
    interior = np.all(np.abs(v) < 1.0 - 1e-6, axis=1)
    assert cKDTree(open_v).query(v[interior])[0].max() < 1e-5
