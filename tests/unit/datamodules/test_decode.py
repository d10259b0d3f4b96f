import io

import cv2
import numpy as np
import pytest

from datamodules.views import ViewSampler, select_views
from render_farm.shards import (
    CorruptSampleError,
    decode_depth,
    decode_depth_raw,
    decode_normal,
    decode_rgba,
    encode_sample,
    read_cameras,
    read_meta,
    view_roles,
)
from tests.unit.datamodules.conftest import DEPTH_SCALE, make_object, make_sample


def test_rgba_round_trips_in_rgba_order():
    views, *_ = make_object("a", n_views=2)
    sample = make_sample("a", n_views=2)
    for i in range(2):
        np.testing.assert_array_equal(decode_rgba(sample, i), views[i]["rgba"])


def test_16bit_depth_round_trips_exactly():
    views, c2w, K, hw, meta = make_object("d", n_views=1)
    ramp = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 15 + 7  # values up to 61447, odd low bits
    views[0]["depth"] = ramp
    sample = encode_sample("d", views, c2w, K, hw, meta)
    raw = decode_depth_raw(sample, 0)
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, ramp)
    metres = decode_depth(sample, 0, DEPTH_SCALE)
    assert metres.dtype == np.float32
    np.testing.assert_allclose(metres, ramp / DEPTH_SCALE, rtol=1e-6)


def test_normals_decode_to_unit_range_and_zero_off_surface():
    views, c2w, K, hw, meta = make_object("n", n_views=1)
    normal = np.zeros((64, 64, 3), np.uint8)
    normal[10:20, 10:20] = (255, 128, 0)
    views[0]["normal"] = normal
    n = decode_normal(encode_sample("n", views, c2w, K, hw, meta), 0)
    np.testing.assert_allclose(n[15, 15], [1.0, 128 * 2 / 255 - 1, -1.0], atol=1e-6)
    assert (n[0, 0] == 0).all()


def test_only_selected_views_are_decoded(monkeypatch):
    sample = make_sample("sel", n_views=8)
    sampler = ViewSampler(num_target_views=2, input_view="source", input_size=0, target_size=0)
    inp, targets = select_views(["source"] + ["gt"] * 7, 2, "source", False, np.random.default_rng(5))
    unused = sorted(set(range(8)) - {inp, *targets.tolist()})
    assert unused
    for i in unused:  # garbage in every member of every view the sample does not need
        sample[f"{i:03d}.rgba.png"] = b"not a png"
        sample[f"{i:03d}.depth.png"] = b"\x89PNG truncated"
    calls = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: calls.append(len(buf)) or real(buf, flags))
    out = sampler(sample, np.random.default_rng(5))
    assert out["input_view"] == inp == 0
    assert out["target_views"].tolist() == targets.tolist()
    assert len(calls) == 1 + 2 * 2  # input RGBA + target RGBA and depth; never the input's depth


def test_corrupt_selected_png_names_key_and_member():
    sample = make_sample("bad", n_views=3)
    sample["000.rgba.png"] = sample["000.rgba.png"][:40]
    with pytest.raises(CorruptSampleError) as err:
        decode_rgba(sample, 0)
    assert (err.value.key, err.value.member, err.value.kind) == ("bad", "000.rgba.png", "bad_png")
    assert "bad" in str(err.value) and "000.rgba.png" in str(err.value)


def test_wrong_png_kind_is_rejected():
    sample = make_sample("swap", n_views=2)
    sample["001.depth.png"] = sample["001.rgba.png"]  # 8-bit RGBA where 16-bit depth belongs
    with pytest.raises(CorruptSampleError, match="expected uint16 with 1"):
        decode_depth(sample, 1, DEPTH_SCALE)


@pytest.mark.parametrize("member,data,kind", [
    ("meta.json", b"{not json", "bad_meta"),
    ("meta.json", b'{"format": "something-else", "depth_scale": 1000}', "bad_meta"),
    ("meta.json", b'{"format": "lift3d-shard-v1", "depth_scale": 0}', "bad_meta"),
    ("cameras.npz", b"PK\x03\x04 broken zip", "bad_cameras"),
    ("meta.json", None, "missing_member"),
])
def test_bad_meta_and_cameras(member, data, kind):
    sample = make_sample("m", n_views=2)
    if data is None:
        del sample[member]
    else:
        sample[member] = data
    with pytest.raises(CorruptSampleError) as err:
        ViewSampler(num_target_views=1)(sample, np.random.default_rng(0))
    assert (err.value.member, err.value.kind) == (member, kind)


def test_camera_shapes_and_view_count_are_checked():
    sample = make_sample("c", n_views=3)
    buf = io.BytesIO()
    np.savez(buf, c2w=np.zeros((3, 4, 4), np.float32), K=np.zeros((2, 3, 3), np.float32), hw=np.zeros((3, 2)))
    sample["cameras.npz"] = buf.getvalue()
    with pytest.raises(CorruptSampleError, match=r"K has shape \(2, 3, 3\)"):
        read_cameras(sample)
    good = make_sample("c", n_views=3)
    with pytest.raises(CorruptSampleError, match="num_views is 4"):
        read_cameras(good, num_views=4)
    meta = read_meta(good)
    assert view_roles(meta, 3) == ["source", "gt", "gt"]
    with pytest.raises(CorruptSampleError, match="must list 5 roles"):
        view_roles(meta, 5, "c")


def test_missing_selected_view_fails_before_decoding(monkeypatch):
    sample = make_sample("gone", n_views=3)
    del sample["002.depth.png"]
    calls = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(1))
    with pytest.raises(CorruptSampleError) as err:
        ViewSampler(num_target_views=2)(sample, np.random.default_rng(0))
    assert (err.value.member, err.value.kind) == ("002.depth.png", "missing_member")
    assert calls == []
