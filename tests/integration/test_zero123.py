"""``lift3d-render zero123`` end to end on a Blender-rendered one2345 object with a tiny random Zero123 checkpoint:
the output format, resume without duplicates, a SIGKILLed run resuming to the same bytes, and bad inputs going to
the failure manifest while the other objects are still written."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import cv2
import numpy as np
import pytest

from configs import ROOT
from tests.integration.conftest import render_cli

pytestmark = pytest.mark.slow
ENV = dict(os.environ, HF_HUB_OFFLINE="1")


def read_samples(paths):
    """{key: {suffix: bytes}} of tar shards; fails on a key in two shards (a duplicate)."""
    out = {}
    for path in sorted(paths):
        seen = set()
        with tarfile.open(path) as tar:
            for m in tar:
                key, suffix = m.name.split(".", 1)
                assert key in seen or key not in out, f"{key} written twice"
                seen.add(key)
                out.setdefault(key, {})[suffix] = tar.extractfile(m).read()
    return out


def the_input(zero123_shards):
    (key, members), = read_samples(zero123_shards["input"].glob("*.tar")).items()
    return key, members


def write_tar(path, samples: dict):
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def zero123(*args, **kw):
    return render_cli("zero123", *args, "--steps", 2, "--device", "cpu", "--no-progress", env=ENV, **kw)


def predicted(members):
    return {k: v for k, v in members.items() if k[:3].isdigit() and int(k[:3]) >= 40}


def test_output_sample_holds_originals_and_72_views(zero123_shards):
    key, original = the_input(zero123_shards)
    samples = read_samples(zero123_shards["dir"].glob("*.tar"))
    assert list(samples) == [key]
    out = samples[key]
    for suffix, data in original.items():
        if suffix not in ("meta.json", "cameras.npz"):
            assert out[suffix] == data, suffix  # byte-for-byte
    src_meta, meta = json.loads(original["meta.json"]), json.loads(out["meta.json"])
    assert meta["num_views"] == 72 and meta["view_roles"] == src_meta["view_roles"] + ["zero123_pred"] * 32
    assert meta["predictions_of"] == {str(g): list(range(40 + 4 * g, 44 + 4 * g)) for g in range(8)}
    assert meta["neighbours_of"] == src_meta["neighbours_of"]
    assert meta["zero123"]["weights"] == "tiny-zero123" and meta["zero123"]["steps"] == 2
    assert meta["zero123"]["image_size"] == 64 and meta["predicted_views"] == {"alpha": "opaque", "depth": "none"}
    src_cams, cams = np.load(io.BytesIO(original["cameras.npz"])), np.load(io.BytesIO(out["cameras.npz"]))
    assert np.array_equal(cams["c2w"][:40], src_cams["c2w"]) and cams["c2w"].shape == (72, 4, 4)
    for g, preds in meta["predictions_of"].items():
        for p, n in zip(preds, meta["neighbours_of"][g]):
            for name in ("c2w", "K", "hw"):
                assert np.array_equal(cams[name][p], src_cams[name][n])
            h, w = src_cams["hw"][n]
            rgba = cv2.imdecode(np.frombuffer(out[f"{p:03d}.rgba.png"], np.uint8), cv2.IMREAD_UNCHANGED)
            depth = cv2.imdecode(np.frombuffer(out[f"{p:03d}.depth.png"], np.uint8), cv2.IMREAD_UNCHANGED)
            assert rgba.shape == (h, w, 4) and rgba.dtype == np.uint8 and np.all(rgba[..., 3] == 255)
            assert depth.shape == (h, w) and depth.dtype == np.uint16 and not depth.any()
    index = json.load(open(zero123_shards["dir"] / "index.json"))
    assert index["total_samples"] == 1 and "1 ok, 0 failed" in zero123_shards["stdout"]


def test_rerun_on_the_same_out_dir_does_nothing(zero123_shards):
    before = {p.name: p.read_bytes() for p in zero123_shards["dir"].glob("*.tar")}
    proc = zero123("--shards", zero123_shards["input"], "--weights", zero123_shards["weights"],
                   "--out", zero123_shards["dir"])
    assert "0 ok, 0 failed, 1 already done" in proc.stdout
    assert {p.name: p.read_bytes() for p in zero123_shards["dir"].glob("*.tar")} == before
    assert json.load(open(zero123_shards["dir"] / "index.json"))["total_samples"] == 1


def test_killed_run_resumes_to_the_uninterrupted_bytes(zero123_shards, tmp_path):
    key, members = the_input(zero123_shards)
    (tmp_path / "in").mkdir()
    keys = [f"{key}_{c}" for c in "abc"]
    write_tar(tmp_path / "in" / "00000-000000.tar", {k: members for k in keys})
    weights = zero123_shards["weights"]
    zero123("--shards", tmp_path / "in", "--weights", weights, "--out", tmp_path / "reference")

    out = tmp_path / "killed"
    done = out / "_state" / "task-00000.done.jsonl"
    cmd = [sys.executable, "-m", "render_farm.cli", "zero123", "--shards", str(tmp_path / "in"), "--weights", weights,
           "--out", str(out), "--steps", "2", "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (done.exists() and done.read_text().count("\n") >= 1):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the pass finished or stalled before it could be killed:\n{proc.stdout.read()}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(out.glob("*.tar.tmp")), "the kill should leave an open shard"

    resumed = zero123("--shards", tmp_path / "in", "--weights", weights, "--out", out)
    assert "already done" in resumed.stdout and " 0 failed" in resumed.stdout
    reference = read_samples((tmp_path / "reference").glob("*.tar"))
    final = read_samples(out.glob("*.tar"))  # asserts no key twice
    assert sorted(final) == sorted(reference) == sorted(keys)
    assert not list(out.glob("*.tar.tmp"))
    assert json.load(open(out / "index.json"))["total_samples"] == 3
    for k in keys:
        assert predicted(final[k]) == predicted(reference[k]), k
        assert final[k]["meta.json"] == reference[k]["meta.json"]


def test_bad_inputs_are_recorded_and_the_rest_written(zero123_shards, tmp_path):
    key, members = the_input(zero123_shards)
    garbage_cameras = dict(members, **{"cameras.npz": b"not an npz"})
    meta = json.loads(members["meta.json"])
    del meta["neighbours_of"]
    meta["render"]["rig"] = "lrm32"
    lrm_like = dict(members, **{"meta.json": json.dumps(meta).encode()})
    (tmp_path / "in").mkdir()
    write_tar(tmp_path / "in" / "a.tar", {"garbage_cameras": garbage_cameras, "good_object": members,
                                          "lrm_like": lrm_like})
    (tmp_path / "in" / "b.tar").write_bytes(b"this is no tar archive" * 50)
    out = tmp_path / "out"
    proc = zero123("--shards", str(tmp_path / "in" / "*.tar"), "--weights", zero123_shards["weights"], "--out", out)
    assert "1 ok, 3 failed" in proc.stdout and "failure manifest" in proc.stdout
    assert list(read_samples(out.glob("*.tar"))) == ["good_object"]
    failures = {r["key"]: r for r in map(json.loads, open(out / "_state" / "task-00000.failures.jsonl"))}
    assert set(failures) == {"garbage_cameras", "lrm_like", "shard:b.tar"}
    assert "cameras.npz is unreadable" in failures["garbage_cameras"]["reason"]
    assert "neighbours_of" in failures["lrm_like"]["reason"] and "lrm32" in failures["lrm_like"]["reason"]
    assert "unreadable shard" in failures["shard:b.tar"]["reason"]


def test_bad_arguments_exit_nonzero_with_a_clear_message(zero123_shards, tmp_path, capsys):
    from render_farm.cli import main  # in this process: the message and the exit status are what matter here

    assert main(["zero123", "--shards", str(zero123_shards["input"]), "--weights", str(tmp_path / "no-weights"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no-weights" in err and "unet/" in err
    assert main(["zero123", "--shards", str(tmp_path / "nothing" / "*.tar"), "--weights",
                 str(zero123_shards["weights"]), "--out", str(tmp_path / "out")]) == 2
    assert "no .tar shards match" in capsys.readouterr().err
    assert main(["zero123", "--shards", str(zero123_shards["dir"]), "--weights", str(zero123_shards["weights"]),
                 "--out", str(zero123_shards["dir"])]) == 2
    assert "another directory" in capsys.readouterr().err
