"""The generated test assets (tests/assets.py) are what they claim to be, and are byte-for-byte deterministic."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pytest
import trimesh

from render_farm import synthetic as gen


def _load(path, **kwargs) -> trimesh.Scene:
    return trimesh.load(path, force="scene", **kwargs)


def _glb_json(path) -> dict:
    with open(path, "rb") as f:
        data = f.read()
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    chunk_len, chunk_type = struct.unpack_from("<I4s", data, 12)
    assert chunk_type == b"JSON"
    return json.loads(data[20:20 + chunk_len])


def _same_geometry(a: trimesh.Trimesh, b: trimesh.Trimesh):
    assert len(a.faces) == len(b.faces)
    np.testing.assert_allclose(a.bounds, b.bounds, atol=1e-6)
    np.testing.assert_allclose(a.area, b.area, rtol=1e-6)
    np.testing.assert_allclose(np.sort(a.triangles_center, axis=0), np.sort(b.triangles_center, axis=0), atol=1e-6)


def test_textured_box_has_a_uv_texture(tmp_path):
    a = gen.textured_box(str(tmp_path))
    assert a.valid and a.kind == "textured" and a.frame == "y_up" and a.uid == "textured_box"
    (geom,) = _load(a.path).geometry.values()
    assert isinstance(geom.visual, trimesh.visual.TextureVisuals)
    assert geom.visual.uv.shape == (24, 2)
    image = geom.visual.material.baseColorTexture
    assert image is not None and image.size == (64, 64)
    colours = {tuple(c) for c in np.asarray(image.convert("RGBA")).reshape(-1, 4)}
    assert colours == set(gen.CHECKER_COLOURS)
    _same_geometry(geom, a.mesh)
    np.testing.assert_allclose(a.mesh.bounds, [[-0.5] * 3, [0.5] * 3])
    assert "baseColorTexture" in _glb_json(a.path)["materials"][0]["pbrMetallicRoughness"]


def test_vertex_coloured_sphere(tmp_path):
    a = gen.vertex_coloured_sphere(str(tmp_path))
    (geom,) = _load(a.path, process=False).geometry.values()
    assert geom.visual.kind == "vertex"
    np.testing.assert_allclose(geom.vertices, a.mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(geom.visual.vertex_colors, a.info["vertex_colours"])
    assert len(np.unique(a.info["vertex_colours"], axis=0)) > 100
    assert "COLOR_0" in _glb_json(a.path)["meshes"][0]["primitives"][0]["attributes"]
    np.testing.assert_allclose(np.linalg.norm(a.mesh.vertices, axis=1), 1.0, atol=1e-6)


def test_multi_material_has_two_meshes_and_materials(tmp_path):
    a = gen.multi_material(str(tmp_path))
    scene = _load(a.path)
    assert len(scene.geometry) == 2
    colours = {tuple(int(c) for c in g.visual.material.baseColorFactor) for g in scene.geometry.values()}
    assert colours == {gen.BOX_COLOUR, gen.CYLINDER_COLOUR}
    assert len(_glb_json(a.path)["materials"]) == 2
    _same_geometry(scene.to_geometry(), a.mesh)
    np.testing.assert_allclose(a.mesh.bounds, [[-1.5, -0.5, -0.5], [1.5, 0.5, 0.5]], atol=1e-6)


def test_non_manifold_has_an_edge_with_three_faces(tmp_path):
    a = gen.non_manifold(str(tmp_path))
    (geom,) = _load(a.path).geometry.values()
    _same_geometry(geom, a.mesh)
    counts = np.bincount(geom.edges_unique_inverse, minlength=len(geom.edges_unique))
    assert counts.max() == 3
    (edge,) = geom.edges_unique[counts == 3]
    got = geom.vertices[edge]
    want = a.info["non_manifold_edge"]
    assert np.allclose(got, want) or np.allclose(got, want[::-1])
    assert not geom.is_watertight
    # two parts joined by vertices (trimesh's split() cuts at non-manifold edges, so group by shared vertices)
    groups = trimesh.graph.connected_components(geom.edges, nodes=np.arange(len(geom.vertices)))
    parts = sorted((geom.submesh([np.isin(geom.faces, g).all(axis=1)], append=True) for g in groups),
                   key=lambda p: len(p.faces))
    assert [len(p.faces) for p in parts] == [3, 4]
    assert [p.is_watertight for p in parts] == [False, True]


def test_truncated_glb_does_not_load(tmp_path):
    a = gen.truncated_glb(str(tmp_path))
    assert not a.valid and a.mesh is None
    assert os.path.getsize(a.path) == a.info["full_size"] // 2 > 0
    with open(a.path, "rb") as f:
        assert f.read(4) == b"glTF"  # looks like a GLB ...
    with pytest.raises(Exception):  # ... but no loader accepts it (which error depends on trimesh's version)
        _load(a.path)


def test_empty_file(tmp_path):
    a = gen.empty_file(str(tmp_path))
    assert a.path.endswith(".glb") and os.path.getsize(a.path) == 0 and not a.valid
    with pytest.raises(Exception):
        _load(a.path)


def test_zero_faces_is_a_valid_glb_without_faces(tmp_path):
    a = gen.zero_faces(str(tmp_path))
    assert not a.valid and a.mesh is None
    scene = _load(a.path)
    assert len(scene.geometry) == 1
    (geom,) = scene.geometry.values()
    assert isinstance(geom, trimesh.PointCloud) and len(geom.vertices) == 8
    assert sum(len(getattr(g, "faces", [])) for g in scene.geometry.values()) == 0
    (prim,) = _glb_json(a.path)["meshes"][0]["primitives"]
    assert prim["mode"] == 0 and "indices" not in prim  # POINTS


def test_simple_formats(tmp_path):
    out = gen.simple_formats(str(tmp_path))
    assert set(out) == {".obj", ".ply", ".stl"}
    assert {ext: a.frame for ext, a in out.items()} == {".obj": "y_up", ".ply": "z_up", ".stl": "z_up"}
    assert len({a.uid for a in out.values()}) == 3
    for ext, a in out.items():
        assert a.path.endswith(ext)
        geom = trimesh.load(a.path, force="mesh")
        _same_geometry(geom, a.mesh)
        np.testing.assert_allclose(a.mesh.extents, [1.0, 0.6, 0.4])


def test_gltf_to_blender():
    p = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(gen.gltf_to_blender(p), [[1.0, -3.0, 2.0], [0.0, 0.0, 1.0]])  # glTF up -> +Z
    # a proper rotation (+90 deg about X), not a reflection
    basis = gen.gltf_to_blender(np.eye(3))
    assert np.isclose(np.linalg.det(basis), 1.0)
    np.testing.assert_array_equal(gen.gltf_to_blender(np.zeros((2, 2, 3))).shape, (2, 2, 3))


def test_to_blender_follows_the_format(tmp_path):
    out = gen.simple_formats(str(tmp_path))
    p = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(out[".obj"].to_blender(p), [[1.0, -3.0, 2.0]])
    np.testing.assert_array_equal(out[".ply"].to_blender(p), p)
    np.testing.assert_array_equal(gen.textured_box(str(tmp_path)).to_blender(p), [[1.0, -3.0, 2.0]])


def _digests(directory):
    return {f: hashlib.sha256((directory / f).read_bytes()).hexdigest() for f in sorted(os.listdir(directory))}


def test_make_asset_dir_is_complete_and_deterministic(tmp_path):
    kinds = gen.make_asset_dir(str(tmp_path / "a"))
    assert kinds == {
        "textured_box": "textured", "vertex_coloured_sphere": "vertex_colour", "multi_material": "multi_material",
        "non_manifold": "non_manifold", "simple_obj": "obj", "simple_ply": "ply", "simple_stl": "stl",
        "truncated": "truncated", "empty": "empty", "zero_faces": "zero_faces",
    }
    assert {os.path.splitext(f)[0] for f in os.listdir(tmp_path / "a")} == set(kinds)
    gen.make_asset_dir(str(tmp_path / "b"))
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    valid = gen.make_asset_dir(str(tmp_path / "c"), include_broken=False)
    assert set(valid) == set(kinds) - {"truncated", "empty", "zero_faces"}
    assert all(a.valid == (a.mesh is not None) for a in gen.all_assets(str(tmp_path / "d")))
