"""The optional ``mesh.npz`` member of shard format v1: the geometry as rendered, written, read back, and absent."""

import io

import numpy as np
import pytest
import webdataset as wds

from render_farm.config import RenderConfig, RenderSettingsError
from render_farm.shards import (
    GT_MESH,
    CorruptSampleError,
    ShardWriter,
    encode_sample,
    has_gt_mesh,
    read_gt_mesh,
    read_header,
    scan_samples,
)


def _views(n=2, size=8):
    return [{"rgba": np.zeros((size, size, 4), np.uint8), "depth": np.zeros((size, size), np.uint16)}
            for _ in range(n)]


def _cams(n=2, size=8):
    return (np.tile(np.eye(4, dtype=np.float32), (n, 1, 1)), np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)),
            np.tile(np.array([size, size], np.int32), (n, 1)))


TETRA = (np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64) * 0.5,
         np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]))


def test_mesh_member_round_trips_through_a_shard_with_float32_vertices_and_int32_faces(tmp_path):
    sample = encode_sample("posed", _views(), *_cams(), {"depth_scale": 1000.0}, mesh=TETRA)
    assert GT_MESH == "mesh.npz" and GT_MESH in sample
    with ShardWriter(str(tmp_path)) as w:
        w.write(sample)
    (got,) = list(wds.WebDataset(str(tmp_path / "00000-000000.tar"), shardshuffle=False))
    with np.load(io.BytesIO(got["mesh.npz"]), allow_pickle=False) as npz:  # a plain .npz any reader can open
        assert npz["vertices"].dtype == np.float32 and npz["faces"].dtype == np.int32
    (lazy,) = scan_samples(str(tmp_path / "00000-000000.tar"))
    read_header(lazy)
    assert has_gt_mesh(lazy)
    verts, faces = read_gt_mesh(lazy)
    np.testing.assert_allclose(verts, TETRA[0], atol=1e-7)
    assert faces.tolist() == TETRA[1].tolist()


def test_a_sample_without_the_member_stays_readable_and_has_no_mesh(tmp_path):
    sample = encode_sample("old", _views(), *_cams(), {"depth_scale": 1000.0})
    assert GT_MESH not in sample
    with ShardWriter(str(tmp_path)) as w:
        w.write(sample)
    (lazy,) = scan_samples(str(tmp_path / "00000-000000.tar"))
    meta, cams, roles = read_header(lazy)
    assert meta["num_views"] == 2 and not has_gt_mesh(lazy) and read_gt_mesh(lazy) is None


@pytest.mark.parametrize("data, words", [
    (b"garbage", "not a readable .npz"),
    ({"vertices": np.zeros((3, 3), np.float32)}, "array 'faces' is missing"),
    ({"vertices": np.zeros((3, 3), np.float32), "faces": np.array([[0, 1, 5]])}, "indices below 3"),
    ({"vertices": np.full((3, 3), np.nan, np.float32), "faces": np.array([[0, 1, 2]])}, "finite floats"),
])
def test_a_damaged_mesh_member_is_a_corrupt_sample_naming_it(data, words):
    if isinstance(data, dict):
        buf = io.BytesIO()
        np.savez(buf, **data)
        data = buf.getvalue()
    with pytest.raises(CorruptSampleError, match="mesh.npz") as err:
        read_gt_mesh({"__key__": "x", GT_MESH: data})
    assert words in str(err.value) and err.value.kind == "bad_mesh"


def test_encoding_refuses_meshes_that_are_not_triangles():
    with pytest.raises(ValueError, match=r"\(F, 3\)"):
        encode_sample("bad", _views(), *_cams(), {"depth_scale": 1.0}, mesh=(TETRA[0], np.array([[0, 1, 2, 3]])))


def test_the_face_budget_is_a_render_setting_that_can_be_turned_off():
    assert RenderConfig().gt_mesh_faces == 200_000 and "gt_mesh_faces" in RenderConfig().blender_settings(1)
    RenderConfig(gt_mesh_faces=0).validate()
    with pytest.raises(RenderSettingsError, match="gt_mesh_faces"):
        RenderConfig(gt_mesh_faces=-1).validate()
