"""Issue 14, "The render farm records the truth": odd inputs and faults at the farm's own boundaries.

Each test fails on the code before the fix: ids that depended on the other files of a directory, array slices that
depended on list positions, half a sample committed after a disk-full error, a torn done-list line that swallowed
the next record.
"""

from __future__ import annotations

import errno
import json
import os
import tarfile

import pytest

from render_farm import cli
from render_farm import synthetic as gen
from render_farm.asset_checks import AssetError, check_asset
from render_farm.shards import ShardIndexError, ShardWriter, resolve_shards, update_index
from render_farm.shards import write as shard_write
from render_farm.sources import LocalDirSource
from render_farm.tasks import task_slice
from tests.unit.render_farm.test_shards import _sample


def _members_by_key(out_dir) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(out_dir, name)) as tar:
                for m in tar:
                    key, member = m.name.split(".", 1)
                    keys.setdefault(key, []).append(member)
    return keys


# --- 1. local-asset ids and task slices ---------------------------------------------------------------------------

def test_adding_a_same_named_file_in_a_subdirectory_keeps_every_existing_id(tmp_path):
    (tmp_path / "x.glb").write_bytes(b"x")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "y.glb").write_bytes(b"y")
    before = {a.metadata["relpath"]: a.uid for a in LocalDirSource(str(tmp_path)).assets()}
    (tmp_path / "batch2").mkdir()
    (tmp_path / "batch2" / "x.glb").write_bytes(b"x2")
    (tmp_path / "batch2" / "y.glb").write_bytes(b"y2")
    after = {a.metadata["relpath"]: a.uid for a in LocalDirSource(str(tmp_path)).assets()}
    assert {rel: after[rel] for rel in before} == before  # nothing already rendered is renamed
    assert before["x.glb"] == "x"
    assert len(set(after.values())) == len(after) == 4


def test_same_id_from_two_files_is_refused_naming_both(tmp_path):
    (tmp_path / "chair.glb").write_bytes(b"x")
    (tmp_path / "chair.obj").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"'chair.glb' and 'chair.obj' \(both 'chair'\).*rename one"):
        LocalDirSource(str(tmp_path)).assets()


def test_array_slices_of_a_growing_directory_stay_disjoint(tmp_path):
    """Task 0 lists the directory, a file is added, task 1 lists it: no object is in both slices."""
    for i in range(20):
        (tmp_path / f"obj{i:02d}.glb").write_bytes(b"x")
    mine0 = {a.uid for a in task_slice(LocalDirSource(str(tmp_path)).assets(), 0, 2, key=lambda a: a.uid)}
    for name in ("aaa.glb", "obj05b.glb", "zzz.glb"):
        (tmp_path / name).write_bytes(b"x")
    assets = LocalDirSource(str(tmp_path)).assets()
    mine1 = {a.uid for a in task_slice(assets, 1, 2, key=lambda a: a.uid)}
    assert not mine0 & mine1
    assert mine0 | mine1 | {"aaa", "obj05b", "zzz"} >= {a.uid for a in assets}
    # a re-run of task 0 over the grown directory still owns everything it owned
    assert mine0 <= {a.uid for a in task_slice(assets, 0, 2, key=lambda a: a.uid)}


# --- 2. a fault while a sample is written; a torn done-list line -----------------------------------------------------

def test_disk_full_in_the_middle_of_a_sample_commits_no_half_sample(tmp_path, monkeypatch):
    real = shard_write._write_member
    calls = {"n": 0}

    def fill_disk_on_the_third_member_of_o1(tar, name, data, mtime):
        if name.startswith("o1."):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(tar, name, data, mtime)

    monkeypatch.setattr(shard_write, "_write_member", fill_disk_on_the_third_member_of_o1)
    full = _sample("o0")[1]
    with pytest.raises(OSError, match="No space left"):
        with ShardWriter(str(tmp_path), maxcount=10) as w:
            w.write(full)
            w.write(_sample("o1")[1])
    members = _members_by_key(tmp_path)
    assert members == {"o0": sorted(k for k in full if k != "__key__")}, members  # o1 never reached a .tar
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    monkeypatch.setattr(shard_write, "_write_member", real)
    w2 = ShardWriter(str(tmp_path), maxcount=10).open()
    assert sorted(w2.done) == ["o0"]  # o1 is not done: the next run renders it
    w2.write(_sample("o1")[1])
    w2.close()
    assert sorted(_members_by_key(tmp_path)) == ["o0", "o1"]
    assert json.loads((tmp_path / "index.json").read_text())["total_samples"] == 2


def test_disk_full_while_marking_a_sample_done_leaves_it_undone_and_out_of_the_shards(tmp_path, monkeypatch):
    real = shard_write.os.fsync
    w = ShardWriter(str(tmp_path), maxcount=10).open()
    w.write(_sample("o0")[1])
    done_before = (tmp_path / "_state" / "task-00000.done.jsonl").read_bytes()

    def fail_on_the_done_list(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).endswith(".done.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(shard_write.os, "fsync", fail_on_the_done_list)
    with pytest.raises(OSError, match="No space left"):
        w.write(_sample("o1")[1])
    monkeypatch.setattr(shard_write.os, "fsync", real)
    w.close()
    assert (tmp_path / "_state" / "task-00000.done.jsonl").read_bytes() == done_before
    assert sorted(_members_by_key(tmp_path)) == ["o0"]
    assert sorted(ShardWriter(str(tmp_path)).open().done) == ["o0"]


def test_torn_last_done_line_does_not_swallow_the_next_record(tmp_path):
    with ShardWriter(str(tmp_path)) as w:
        w.write(_sample("o0")[1])
    with open(tmp_path / "_state" / "task-00000.done.jsonl", "a") as f:
        f.write('{"key": "o1", "sha')  # killed mid-append: no newline
    with ShardWriter(str(tmp_path)) as w:
        assert sorted(w.done) == ["o0"]
        w.write(_sample("o2")[1])
    assert sorted(ShardWriter(str(tmp_path)).open().done) == ["o0", "o2"]  # o2 is never rendered twice


def test_record_glued_to_a_torn_line_by_an_older_writer_is_still_read(tmp_path):
    with ShardWriter(str(tmp_path)) as w:
        w.write(_sample("o0")[1])
        w.write(_sample("o1")[1])
    path = tmp_path / "_state" / "task-00000.done.jsonl"
    first, second = path.read_text().splitlines()
    path.write_text(first[:25] + second + "\n")  # what the old writer produced after a torn o0 line
    assert sorted(ShardWriter(str(tmp_path)).open().done) == ["o1"]


# --- 6. index.json -----------------------------------------------------------------------------------------------

def test_corrupt_index_names_the_file_and_the_rebuild_command(tmp_path):
    with ShardWriter(str(tmp_path)) as w:
        w.write(_sample("o0")[1])
    (tmp_path / "index.json").write_text('{"shardlist": [{"url": "00000-000000.tar", "nsa')  # torn copy
    with pytest.raises(ShardIndexError, match=rf"{tmp_path}/index.json is not valid JSON.*lift3d-render index --out"):
        ShardWriter(str(tmp_path)).open()
    (tmp_path / "index.json").write_text('[1, 2]')
    with pytest.raises(ShardIndexError, match=r"index.json is not a shard index"):
        resolve_shards(str(tmp_path))
    update_index(str(tmp_path), rebuild=True)  # what the message says to run
    assert sorted(ShardWriter(str(tmp_path)).open().done) == ["o0"]


def test_index_rebuild_command_repairs_a_corrupt_index(tmp_path, capsys):
    with ShardWriter(str(tmp_path)) as w:
        w.write(_sample("o0")[1])
    (tmp_path / "index.json").write_text("<html>")
    assert cli.main(["index", "--out", str(tmp_path)]) == 0
    assert resolve_shards(str(tmp_path))[1] == {str(tmp_path / "00000-000000.tar"): 1}


# --- 3./4. importable-but-broken and mislabelled assets (no Blender: the checks run before import) ------------------

def test_missing_gltf_texture_is_a_failure_or_with_the_switch_a_warning(tmp_path):
    good = gen.textured_gltf(str(tmp_path), "good")
    assert check_asset(good.path) == []
    bad = gen.textured_gltf(str(tmp_path), "bad", drop_texture=True)
    with pytest.raises(AssetError, match=r"1 missing texture file\(s\): 'bad_albedo.png'.*--allow-missing-textures"):
        check_asset(bad.path)
    (warning,) = check_asset(bad.path, allow_missing_textures=True)
    assert "bad_albedo.png" in warning


def test_missing_obj_material_texture_is_a_failure(tmp_path):
    (tmp_path / "m.mtl").write_text("newmtl a\nKd 1 1 1\nmap_Kd textures/wood.png\n")
    (tmp_path / "o.obj").write_text("mtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nusemtl a\nf 1 2 3\n")
    with pytest.raises(AssetError, match=r"missing texture.*'textures/wood.png'"):
        check_asset(str(tmp_path / "o.obj"))
    (tmp_path / "textures").mkdir()
    (tmp_path / "textures" / "wood.png").write_bytes(b"\x89PNG")
    assert check_asset(str(tmp_path / "o.obj")) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_vertex_positions_are_a_failure(tmp_path, value):
    a = gen.nan_positions_glb(str(tmp_path), value=value)
    with pytest.raises(AssetError, match=r"non-finite \(NaN/inf\) vertex positions.*1 of 8 vertices"):
        check_asset(a.path)
    assert check_asset(gen.textured_box(str(tmp_path)).path) == []  # a clean GLB with a BIN chunk passes


def test_draco_gltf_is_named_with_what_to_do(tmp_path):
    a = gen.draco_glb(str(tmp_path))
    with pytest.raises(AssetError, match=r"Draco-compressed \(KHR_draco_mesh_compression\).*--custom-blender-path"):
        check_asset(a.path)


@pytest.mark.parametrize("make,words", [(gen.html_as_glb, "is an HTML page"), (gen.lfs_pointer_glb,
                                                                                "is a Git LFS pointer")])
def test_html_page_and_lfs_pointer_saved_as_glb_are_named(tmp_path, make, words):
    with pytest.raises(AssetError, match=words):
        check_asset(make(str(tmp_path)).path)


def test_a_truncated_glb_is_left_to_blenders_importer(tmp_path):
    assert check_asset(gen.truncated_glb(str(tmp_path)).path) == []


def test_an_empty_mvimgnet_root_is_an_error(tmp_path, capsys):
    (tmp_path / "root" / "chair").mkdir(parents=True)
    assert cli.main(["mvimgnet", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out")]) == 2
    assert "no videos under --root" in capsys.readouterr().err
