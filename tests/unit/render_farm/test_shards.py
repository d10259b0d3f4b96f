import io
import json
import os
import tarfile

import cv2
import numpy as np
import pytest
import webdataset as wds

from render_farm.shards import (
    CorruptSampleError,
    ShardWriter,
    check_key,
    count_samples,
    encode_sample,
    read_header,
    sanitise_key,
    scan_samples,
    update_index,
)


def _sample(key, n_views=2, size=8):
    rng = np.random.default_rng(abs(hash(key)) % 2**32)
    views = [{"rgba": rng.integers(0, 256, (size, size, 4), dtype=np.uint8),
              "depth": rng.integers(0, 65536, (size, size), dtype=np.uint16),
              "normal": rng.integers(0, 256, (size, size, 3), dtype=np.uint8)} for _ in range(n_views)]
    c2w = np.tile(np.eye(4, dtype=np.float32), (n_views, 1, 1))
    K = np.tile(np.eye(3, dtype=np.float32), (n_views, 1, 1))
    hw = np.tile(np.array([size, size], np.int32), (n_views, 1))
    return views, encode_sample(key, views, c2w, K, hw, {"depth_scale": 1000.0, "view_roles": ["gt"] * n_views})


def _keys_in(out_dir):
    keys = []
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(out_dir, name)) as tar:
                keys += sorted({m.name.split(".", 1)[0] for m in tar})
    return keys


def test_encoded_sample_round_trips_through_plain_webdataset(tmp_path):
    views, sample = _sample("obj_1")
    with ShardWriter(str(tmp_path)) as w:
        w.write(sample)
    ds = wds.WebDataset(str(tmp_path / "00000-000000.tar"), shardshuffle=False)
    (got,) = list(ds)
    assert got["__key__"] == "obj_1"
    assert sorted(k for k in got if not k.startswith("__")) == sorted(
        ["000.rgba.png", "000.depth.png", "000.normal.png", "001.rgba.png", "001.depth.png", "001.normal.png",
         "cameras.npz", "meta.json"])
    depth = cv2.imdecode(np.frombuffer(got["001.depth.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and np.array_equal(depth, views[1]["depth"])  # 16-bit, lossless
    rgba = cv2.cvtColor(cv2.imdecode(np.frombuffer(got["000.rgba.png"], np.uint8), cv2.IMREAD_UNCHANGED),
                        cv2.COLOR_BGRA2RGBA)
    assert np.array_equal(rgba, views[0]["rgba"])
    cams = np.load(io.BytesIO(got["cameras.npz"]))
    assert cams["c2w"].dtype == np.float32 and cams["c2w"].shape == (2, 4, 4) and cams["hw"].dtype == np.int32
    assert json.loads(got["meta.json"])["format"] == "lift3d-shard-v1"


@pytest.mark.parametrize("key", ["a.b", "a/b", "", "obj 1"])
def test_keys_with_dots_or_slashes_are_rejected(key):
    with pytest.raises(ValueError, match="A-Za-z0-9"):
        _sample(key)


def test_shards_roll_over_and_index_counts_them(tmp_path):
    with ShardWriter(str(tmp_path), task=3, maxcount=2) as w:
        for i in range(5):
            w.write(_sample(f"o{i}")[1])
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".tar"))
    assert names == ["00003-000000.tar", "00003-000001.tar", "00003-000002.tar"]
    index = json.loads((tmp_path / "index.json").read_text())
    assert [(s["url"], s["nsamples"]) for s in index["shardlist"]] == [(n, count_samples(str(tmp_path / n)))
                                                                      for n in names]
    assert [s["nsamples"] for s in index["shardlist"]] == [2, 2, 1] and index["total_samples"] == 5
    assert update_index(str(tmp_path), rebuild=True)["total_samples"] == 5


def test_interrupted_shard_is_cut_back_to_its_last_done_sample(tmp_path):
    w = ShardWriter(str(tmp_path), maxcount=100).open()
    for i in range(3):
        w.write(_sample(f"o{i}")[1])
    # the process dies while writing a fourth sample: half a tar member, no done-list line, a torn line
    w._file.write(b"x" * 700)
    w._file.flush()
    with open(w.paths.done, "a") as f:
        f.write('{"key": "o3", "sha')
    assert not any(n.endswith(".tar") for n in os.listdir(tmp_path))  # nothing committed yet
    w2 = ShardWriter(str(tmp_path), maxcount=100).open()
    assert sorted(w2.done) == ["o0", "o1", "o2"]
    assert not any(n.endswith(".tmp") for n in os.listdir(tmp_path))
    assert _keys_in(tmp_path) == ["o0", "o1", "o2"]
    assert len(list(wds.WebDataset(str(tmp_path / "00000-000000.tar"), shardshuffle=False))) == 3
    # resuming continues in a new shard and never duplicates
    w2.write(_sample("o3")[1])
    with pytest.raises(ValueError, match="already in a shard"):
        w2.write(_sample("o1")[1])
    w2.close()
    assert _keys_in(tmp_path) == ["o0", "o1", "o2", "o3"]
    assert json.loads((tmp_path / "index.json").read_text())["total_samples"] == 4


def test_tmp_shard_without_done_samples_is_discarded(tmp_path):
    w = ShardWriter(str(tmp_path)).open()
    w._start_shard()
    w._file.write(b"partial")
    w._file.flush()
    ShardWriter(str(tmp_path)).open()
    assert [n for n in os.listdir(tmp_path) if n.endswith((".tar", ".tmp"))] == []


def test_failures_are_recorded_and_remembered(tmp_path):
    with ShardWriter(str(tmp_path)) as w:
        w.record_failure("bad", "import failed", "Traceback ...\nRuntimeError: Bad GLB")
    w2 = ShardWriter(str(tmp_path)).open()
    assert w2.failed["bad"]["reason"] == "import failed" and "Bad GLB" in w2.failed["bad"]["log_excerpt"]


def test_shard_committed_but_not_indexed_is_indexed_on_resume(tmp_path):
    with ShardWriter(str(tmp_path)) as w:
        w.write(_sample("o0")[1])
    os.remove(tmp_path / "index.json")  # killed between the rename and the index update
    ShardWriter(str(tmp_path)).open()
    assert json.loads((tmp_path / "index.json").read_text())["shardlist"] == [
        {"url": "00000-000000.tar", "nsamples": 1}]


@pytest.mark.parametrize("name,key", [("ch air", "ch_air"), ("mug.v2/äb", "mug_v2__b"), ("ok-1_A", "ok-1_A"),
                                      ("", "_")])
def test_sanitised_names_are_valid_keys(name, key):
    assert sanitise_key(name) == key and check_key(sanitise_key(name)) == key


def test_written_samples_read_back_through_the_format_reader(tmp_path):
    views, sample = _sample("obj_r", n_views=3)
    with ShardWriter(str(tmp_path)) as w:
        w.write(sample)
    (got,) = scan_samples(str(tmp_path / "00000-000000.tar"))
    meta, cams, roles = read_header(got)
    assert got["__key__"] == "obj_r" and meta["num_views"] == 3 and roles == ["gt"] * 3
    assert cams["c2w"].shape == (3, 4, 4) and cams["hw"].tolist() == [[8, 8]] * 3
    assert got["001.depth.png"] == sample["001.depth.png"]


def test_header_with_fewer_cameras_than_views_names_the_member():
    _, sample = _sample("obj_h", n_views=2)
    meta = json.loads(sample["meta.json"])
    sample["meta.json"] = json.dumps(dict(meta, num_views=3)).encode()
    with pytest.raises(CorruptSampleError, match="num_views is 3") as err:
        read_header(sample)
    assert (err.value.key, err.value.member, err.value.kind) == ("obj_h", "cameras.npz", "bad_cameras")
