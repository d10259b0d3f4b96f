"""Asset sources: LocalDirSource over generated files; ObjaverseSource through the real objaverse 0.1.7 API, offline.

The Objaverse tests build a cache laid out exactly like the hub dataset allenai/objaverse (object-paths.json.gz,
metadata/000-000.json.gz, lvis-annotations.json.gz, glbs/000-000/<uid>.glb) and point the source's cache_dir at it,
so objaverse's own code finds every file locally; only the "missing GLB" tests reach its download code, which fails
fast without network (DNS error) or with a 404 where the hub is reachable.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import time

import objaverse
import pytest

from render_farm import synthetic as gen
from render_farm.sources import (
    Asset,
    LocalDirSource,
    ObjaverseError,
    ObjaverseSource,
    read_uids_file,
)

KEY_RE = r"^[A-Za-z0-9_-]+$"


# ---------------------------------------------------------------------------------------------------------------------
# LocalDirSource
# ---------------------------------------------------------------------------------------------------------------------

def test_local_dir_lists_every_supported_format(tmp_path):
    kinds = gen.make_asset_dir(str(tmp_path))
    (tmp_path / "rig.fbx").write_bytes(b"Kaydara FBX Binary  \x00")  # only listed, never parsed, by the source
    (tmp_path / "notes.txt").write_text("not an asset")
    (tmp_path / "texture.png").write_bytes(b"\x89PNG")
    assets = LocalDirSource(str(tmp_path), licence="cc0").assets()
    uids = [a.uid for a in assets]
    assert uids == sorted(uids)
    assert set(uids) == set(kinds) | {"rig"}
    exts = {os.path.splitext(a.path)[1] for a in assets}
    assert exts == {".glb", ".obj", ".ply", ".stl", ".fbx"}
    for a in assets:
        assert a.source == "local" and a.licence == "cc0" and os.path.isfile(a.path)
        assert a.metadata["relpath"] == os.path.relpath(a.path, tmp_path)
    assert LocalDirSource(str(tmp_path)).fetch(assets) == assets


def test_local_dir_uids_are_key_safe(tmp_path):
    for name in ("my chair.v2.glb", "ümlaut-Tisch.obj", "a+b=c.ply", "...stl"):
        (tmp_path / name).write_bytes(b"x")
    assets = LocalDirSource(str(tmp_path)).assets()
    assert len(assets) == 4
    for a in assets:
        assert re.match(KEY_RE, a.uid), a.uid
    assert "my_chair_v2" in {a.uid for a in assets}


def test_local_dir_collisions_are_deduplicated_deterministically(tmp_path):
    for sub in ("a", "b", "c"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "chair.glb").write_bytes(b"x")
    (tmp_path / "chair.obj").write_bytes(b"x")  # same stem, other format
    (tmp_path / "a" / "ch air.glb").write_bytes(b"x")  # sanitises to a different stem: "ch_air"
    first = LocalDirSource(str(tmp_path)).assets()
    second = LocalDirSource(str(tmp_path)).assets()
    assert [(a.uid, a.path) for a in first] == [(a.uid, a.path) for a in second]
    uids = [a.uid for a in first]
    assert len(set(uids)) == len(uids) == 5
    # issue 14: an id is a function of the file's own path; the top-level chair.obj keeps its name whatever else is
    # in the directory, files in subdirectories carry a hash of their relative path
    chairs = [a for a in first if a.uid.startswith("chair-")]
    assert len(chairs) == 3 and "chair" in uids
    for a in chairs:
        assert re.match(r"^chair-[0-9a-f]{8}$", a.uid)
    assert any(re.match(r"^ch_air-[0-9a-f]{8}$", u) for u in uids)
    # the suffix depends on the relative path only: the same tree elsewhere gives the same uids
    other = tmp_path / "copy"
    other.mkdir()
    for a in first:
        dst = other / a.metadata["relpath"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(b"x")
    assert [a.uid for a in LocalDirSource(str(other)).assets()] == uids


def test_local_dir_missing_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=r"--glb-dir .*nope.* is not a directory"):
        LocalDirSource(str(missing))


def test_asset_sha256_matches_file(tmp_path):
    a = gen.textured_box(str(tmp_path))
    with open(a.path, "rb") as f:
        expected = hashlib.sha256(f.read()).hexdigest()
    assert Asset("textured_box", a.path, "local").sha256() == expected


# ---------------------------------------------------------------------------------------------------------------------
# ObjaverseSource: a hub-shaped cache
# ---------------------------------------------------------------------------------------------------------------------

# uid -> (licence, name, LVIS category or None, has a GLB in the cache)
OBJECTS = {
    "0a1b2c3d4e5f60718293a4b5c6d7e8f9": ("by", "Red Chair", "chair", True),
    "1b2c3d4e5f60718293a4b5c6d7e8f90a": ("by-nc", "Blue Chair", "chair", True),
    "2c3d4e5f60718293a4b5c6d7e8f90a1b": ("cc0", "Mug", "mug", True),
    "3d4e5f60718293a4b5c6d7e8f90a1b2c": ("by-sa", "Teapot", None, True),
    "4e5f60718293a4b5c6d7e8f90a1b2c3d": ("by", "Lost Lamp", "lamp", False),  # listed, GLB not cached
    "5f60718293a4b5c6d7e8f90a1b2c3d4e": ("by-nd", "Other dir", None, True),  # second metadata dir
}
DIR_OF = {uid: ("000-001" if uid.startswith("5f") else "000-000") for uid in OBJECTS}


def _write_gz_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(data, f)


@pytest.fixture
def hub_cache(tmp_path):
    """cache_dir whose hf-objaverse-v1/ looks like the hub dataset; returns (cache_dir, versioned_dir)."""
    cache = tmp_path / "objaverse-cache"
    versioned = cache / "hf-objaverse-v1"
    object_paths = {uid: f"glbs/{DIR_OF[uid]}/{uid}.glb" for uid in OBJECTS}
    _write_gz_json(str(versioned / "object-paths.json.gz"), object_paths)
    for d in sorted(set(DIR_OF.values())):
        meta = {
            uid: {
                "uid": uid, "name": name, "license": licence,
                "viewerUrl": f"https://sketchfab.com/3d-models/{uid}",
                "tags": [{"name": "test", "slug": "test"}], "categories": [{"name": "furniture"}],
                "faceCount": 12, "vertexCount": 8, "user": {"username": "lift3d"},
            }
            for uid, (licence, name, _, _) in OBJECTS.items() if DIR_OF[uid] == d
        }
        _write_gz_json(str(versioned / "metadata" / f"{d}.json.gz"), meta)
    lvis: dict[str, list[str]] = {}
    for uid, (_, _, category, _) in OBJECTS.items():
        if category:
            lvis.setdefault(category, []).append(uid)
    _write_gz_json(str(versioned / "lvis-annotations.json.gz"), lvis)
    mesh = gen.simple_mesh()
    for uid, (_, _, _, cached) in OBJECTS.items():
        if cached:
            p = versioned / object_paths[uid]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(gen.glb_bytes(mesh))
    return str(cache), str(versioned)


@pytest.fixture
def load_objects_calls(monkeypatch):
    """Records every call into the real objaverse.load_objects (still runs it)."""
    calls = []
    real = objaverse.load_objects

    def spy(uids, download_processes=1):
        calls.append((list(uids), download_processes))
        return real(uids, download_processes)

    monkeypatch.setattr(objaverse, "load_objects", spy)
    return calls


CACHED = sorted(u for u, o in OBJECTS.items() if o[3])
LOST = "4e5f60718293a4b5c6d7e8f90a1b2c3d"


def test_uids_file_parsing(tmp_path):
    f = tmp_path / "uids.txt"
    f.write_text(
        "# my selection\n\n"
        "  0a1b2c3d4e5f60718293a4b5c6d7e8f9  \n"
        "2c3d4e5f60718293a4b5c6d7e8f90a1b   # a mug\n"
        "0a1b2c3d4e5f60718293a4b5c6d7e8f9\n"
    )
    assert read_uids_file(str(f)) == [
        "0a1b2c3d4e5f60718293a4b5c6d7e8f9", "2c3d4e5f60718293a4b5c6d7e8f90a1b", "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    ]
    src = ObjaverseSource(uids_file=str(f), cache_dir=str(tmp_path))
    assert src.uids == ["0a1b2c3d4e5f60718293a4b5c6d7e8f9", "2c3d4e5f60718293a4b5c6d7e8f90a1b"]


@pytest.mark.parametrize("bad", ["abc.glb", "has space", "ümlaut", "a/b"])
def test_bad_uid_in_file_names_the_line(tmp_path, bad):
    f = tmp_path / "uids.txt"
    f.write_text(f"# header\n0a1b2c3d4e5f60718293a4b5c6d7e8f9\n{bad}\n")
    with pytest.raises(ValueError, match=r"uids\.txt:3: .* is not a valid Objaverse uid"):
        ObjaverseSource(uids_file=str(f))


def test_constructor_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--uids-file .*missing.txt.* does not exist"):
        ObjaverseSource(uids_file=str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="lists no uids"):
        ObjaverseSource(uids_file=str(empty))
    with pytest.raises(ValueError, match=r"uids\[1\] = 'x\.glb'"):
        ObjaverseSource(uids=["abc", "x.glb"])
    with pytest.raises(ValueError, match="not both"):
        ObjaverseSource(uids=["abc"], uids_file=str(empty))
    with pytest.raises(ValueError, match="limit"):
        ObjaverseSource(limit=0)
    with pytest.raises(ValueError, match="download_processes"):
        ObjaverseSource(download_processes=0)
    with pytest.raises(TypeError, match="lists of strings"):
        ObjaverseSource(licences="by")


def test_assets_sorted_with_annotations(hub_cache):
    cache, versioned = hub_cache
    before = (objaverse.BASE_PATH, objaverse._VERSIONED_PATH)
    assets = ObjaverseSource(cache_dir=cache, offline=True).assets()
    assert (objaverse.BASE_PATH, objaverse._VERSIONED_PATH) == before  # module state restored
    assert [a.uid for a in assets] == sorted(OBJECTS)
    for a in assets:
        licence, name, _, _ = OBJECTS[a.uid]
        assert a.path is None and a.source == "objaverse" and a.licence == licence
        assert a.metadata["name"] == name and a.metadata["author"] == "lift3d"
        assert a.metadata["tags"] == ["test"] and a.metadata["categories"] == ["furniture"]
        assert a.metadata["object_path"] == f"glbs/{DIR_OF[a.uid]}/{a.uid}.glb"
        json.dumps(a.metadata)  # goes into meta.json / manifests as is


def test_uids_and_limit(hub_cache):
    cache, _ = hub_cache
    wanted = [
        "3d4e5f60718293a4b5c6d7e8f90a1b2c", "0a1b2c3d4e5f60718293a4b5c6d7e8f9", "2c3d4e5f60718293a4b5c6d7e8f90a1b",
    ]
    assets = ObjaverseSource(uids=wanted, cache_dir=cache, offline=True).assets()
    assert [a.uid for a in assets] == sorted(wanted)
    assets = ObjaverseSource(uids=wanted, limit=2, cache_dir=cache, offline=True).assets()
    assert [a.uid for a in assets] == sorted(wanted)[:2]
    assert [a.uid for a in ObjaverseSource(limit=3, cache_dir=cache, offline=True).assets()] == sorted(OBJECTS)[:3]


def test_licence_filter(hub_cache):
    cache, _ = hub_cache
    src = ObjaverseSource(licences=["by", "CC0"], cache_dir=cache, offline=True)
    assets = src.assets()
    assert {a.uid: a.licence for a in assets} == {u: o[0] for u, o in OBJECTS.items() if o[0] in ("by", "cc0")}
    one = ObjaverseSource(licences=["by"], limit=1, cache_dir=cache, offline=True).assets()
    assert [a.uid for a in one] == ["0a1b2c3d4e5f60718293a4b5c6d7e8f9"]
    with pytest.raises(ValueError, match=r"no selected Objaverse object has a licence in \['by-nc-nd'\].*'by': 2"):
        ObjaverseSource(licences=["by-nc-nd"], cache_dir=cache, offline=True).assets()


def test_lvis_categories(hub_cache):
    cache, _ = hub_cache
    assets = ObjaverseSource(lvis_categories=["chair", "mug"], cache_dir=cache, offline=True).assets()
    assert {a.uid: a.metadata["lvis_category"] for a in assets} == {
        "0a1b2c3d4e5f60718293a4b5c6d7e8f9": "chair",
        "1b2c3d4e5f60718293a4b5c6d7e8f90a": "chair",
        "2c3d4e5f60718293a4b5c6d7e8f90a1b": "mug",
    }
    both = ObjaverseSource(lvis_categories=["chair"], licences=["by"], cache_dir=cache, offline=True).assets()
    assert [a.uid for a in both] == ["0a1b2c3d4e5f60718293a4b5c6d7e8f9"]
    inter = ObjaverseSource(uids=["2c3d4e5f60718293a4b5c6d7e8f90a1b", "3d4e5f60718293a4b5c6d7e8f90a1b2c"],
                            lvis_categories=["mug"], cache_dir=cache, offline=True).assets()
    assert [a.uid for a in inter] == ["2c3d4e5f60718293a4b5c6d7e8f90a1b"]
    with pytest.raises(ValueError, match=r"unknown LVIS category: 'chiar' \(did you mean 'chair'\?\)"):
        ObjaverseSource(lvis_categories=["chiar"], cache_dir=cache, offline=True).assets()


def test_unknown_uids_are_listed(hub_cache, tmp_path):
    cache, _ = hub_cache
    f = tmp_path / "uids.txt"
    f.write_text("0a1b2c3d4e5f60718293a4b5c6d7e8f9\nnotauid1\nnotauid2\n")
    with pytest.raises(ValueError, match=r"2 of 3 uids in --uids-file .*uids\.txt.* not Objaverse uids.*notauid1, "
                                         r"notauid2"):
        ObjaverseSource(uids_file=str(f), cache_dir=cache, offline=True).assets()


def test_missing_metadata_offline_is_a_clear_error(tmp_path):
    with pytest.raises(ObjaverseError, match=r"object paths is not in the cache .*object-paths\.json\.gz.*allenai/"
                                             r"objaverse"):
        ObjaverseSource(cache_dir=str(tmp_path / "empty-cache"), offline=True).assets()


def test_corrupt_metadata_is_a_clear_error(hub_cache):
    cache, versioned = hub_cache
    with open(os.path.join(versioned, "object-paths.json.gz"), "wb") as f:
        f.write(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ObjaverseError, match=r"corrupt .*delete object-paths\.json\.gz"):
        ObjaverseSource(cache_dir=cache, offline=True).assets()


def test_hf_hub_offline_env_sets_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ObjaverseSource().offline is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert ObjaverseSource().offline is False
    assert ObjaverseSource(offline=True).offline is True


def test_fetch_returns_cached_paths_through_load_objects(hub_cache, load_objects_calls):
    cache, versioned = hub_cache
    src = ObjaverseSource(uids=CACHED, cache_dir=cache, offline=True)
    fetched = src.fetch(src.assets())
    assert [a.uid for a in fetched] == CACHED
    for a in fetched:
        assert a.path == os.path.join(versioned, "glbs", DIR_OF[a.uid], f"{a.uid}.glb")
        assert os.path.isfile(a.path) and "fetch_error" not in a.metadata
        assert len(gen.load_glb(a.path).geometry) == 1
        assert len(a.sha256()) == 64
    assert load_objects_calls == [(CACHED, 1)]  # one call, nothing to download


def test_fetch_offline_reports_uncached(hub_cache, load_objects_calls):
    cache, _ = hub_cache
    src = ObjaverseSource(uids=[CACHED[0], LOST], cache_dir=cache, offline=True)
    fetched = {a.uid: a for a in src.fetch(src.assets())}
    assert fetched[CACHED[0]].path is not None
    assert fetched[LOST].path is None
    assert "downloads are off" in fetched[LOST].metadata["fetch_error"]
    assert all(LOST not in uids for uids, _ in load_objects_calls)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("processes", [1, 2])
def test_fetch_failed_download_comes_back_with_reason(hub_cache, load_objects_calls, processes):
    """The real download path: objaverse tries the hub and fails (no network here: DNS error; 404 where the hub is
    reachable, since the uid is made up). The failure is reported, not raised, and other uids still come back."""
    cache, versioned = hub_cache
    src = ObjaverseSource(uids=[CACHED[0], LOST], cache_dir=cache, offline=False, download_processes=processes,
                          download_timeout=20)
    start = time.monotonic()
    fetched = {a.uid: a for a in src.fetch(src.assets())}
    assert time.monotonic() - start < 100
    assert fetched[CACHED[0]].path is not None and "fetch_error" not in fetched[CACHED[0]].metadata
    assert fetched[LOST].path is None
    assert fetched[LOST].metadata["fetch_error"].startswith("download failed: ")
    assert fetched[LOST].metadata["name"] == "Lost Lamp"  # annotations kept
    assert ([LOST], 1) in load_objects_calls  # went through objaverse's own download code
    lost_glb = os.path.join(versioned, "glbs", "000-000", f"{LOST}.glb")
    assert not os.path.exists(lost_glb) and not os.path.exists(lost_glb + ".tmp")
    assert objaverse._VERSIONED_PATH != versioned  # module state restored


def test_fetch_unknown_uid_reports_it(hub_cache):
    cache, _ = hub_cache
    src = ObjaverseSource(uids=[CACHED[0]], cache_dir=cache, offline=True)
    fetched = src.fetch([Asset("notauid", None, "objaverse")] + src.assets())
    assert fetched[0].path is None and "unknown uid" in fetched[0].metadata["fetch_error"]
    assert fetched[1].path is not None
