"""Issue 14 through ``lift3d-render`` as a user runs it (real Blender): broken or mislabelled assets are recorded
failures with a reason that names the problem, and settings errors stop the run before the first object with one
line naming the file/key or flag (exit 2) instead of failing every object.
"""

from __future__ import annotations

import json

import pytest
import webdataset as wds

from render_farm import synthetic as gen
from tests.integration.conftest import render_cli

pytestmark = pytest.mark.slow

TINY = ["--config", "configs/render/tiny.yaml", "--resolution", 32, "--samples", 2, "--no-progress"]


def _failures(out) -> dict[str, str]:
    path = out / "_state" / "task-00000.failures.jsonl"
    return {r["key"]: r["reason"] for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def _metas(out) -> dict[str, dict]:
    shards = sorted(str(p) for p in out.glob("*.tar"))
    return {s["__key__"]: json.loads(s["meta.json"]) for s in wds.WebDataset(shards, shardshuffle=False)}


def _one_line_error(proc, *words):
    assert proc.returncode == 2, f"rc {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lift3d-render objaverse: error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def broken_render(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    d = root / "assets"
    d.mkdir()
    for make in (gen.nan_positions_glb, gen.draco_glb, gen.html_as_glb, gen.lfs_pointer_glb):
        make(str(d))
    gen.textured_gltf(str(d), "textured_gltf")
    gen.textured_gltf(str(d), "no_texture", drop_texture=True)
    out = root / "shards"
    proc = render_cli("objaverse", "--glb-dir", d, "--out", out, *TINY)
    return {"dir": d, "out": out, "proc": proc}


def test_broken_assets_are_recorded_failures_with_a_reason_naming_the_problem(broken_render):
    out = broken_render["out"]
    reasons = _failures(out)
    assert set(reasons) == {"nan_positions", "draco", "html_page", "lfs_pointer", "no_texture"}
    assert "non-finite (NaN/inf) vertex positions" in reasons["nan_positions"]
    assert "Draco" in reasons["draco"] and "--custom-blender-path" in reasons["draco"]
    assert "bpy/ops.py" not in reasons["draco"]
    assert "is an HTML page" in reasons["html_page"] and "JSON" not in reasons["html_page"]
    assert "Git LFS pointer" in reasons["lfs_pointer"]
    assert "missing texture" in reasons["no_texture"] and "no_texture_albedo.png" in reasons["no_texture"]
    metas = _metas(out)
    assert set(metas) == {"textured_gltf"} and "warnings" not in metas["textured_gltf"]
    assert "1 ok, 5 failed" in broken_render["proc"].stdout


def test_allow_missing_textures_renders_it_with_a_warning_in_meta(broken_render):
    out = broken_render["out"]
    proc = render_cli("objaverse", "--glb-dir", broken_render["dir"], "--out", out, *TINY, "--retry-failed",
                      "--allow-missing-textures")
    assert "1 ok, 4 failed, 1 already done" in proc.stdout, proc.stdout
    meta = _metas(out)["no_texture"]
    (warning,) = meta["warnings"]
    assert "missing texture" in warning and "no_texture_albedo.png" in warning


def test_rig_options_that_do_not_fit_the_rig_stop_before_the_first_object(tmp_path):
    d = tmp_path / "assets"
    d.mkdir()
    gen.textured_box(str(d))
    out = tmp_path / "shards"
    proc = render_cli("objaverse", "--glb-dir", d, "--out", out, *TINY, "--rig", "eval24", check=False)
    _one_line_error(proc, "configs/render/tiny.yaml: rig_options", "'num_views'", "eval24", "--rig")
    assert not _failures(out)  # nothing recorded as an asset failure
    # the rerun with fitting settings renders the object (it was never "already done")
    proc = render_cli("objaverse", "--glb-dir", d, "--out", out, *TINY)
    assert "1 ok, 0 failed, 0 already done" in proc.stdout, proc.stdout


def test_an_out_rendered_with_other_settings_is_refused_unless_asked(tmp_path):
    d = tmp_path / "assets"
    d.mkdir()
    gen.textured_box(str(d))
    out = tmp_path / "shards"
    render_cli("objaverse", "--glb-dir", d, "--out", out, *TINY)
    gen.vertex_coloured_sphere(str(d))
    proc = render_cli("objaverse", "--glb-dir", d, "--out", out, *TINY, "--resolution", 40, check=False)
    _one_line_error(proc, "resolution: 32 there, 40 now", str(out / "_state" / "settings.json"),
                    "--allow-settings-change")
    assert sorted(_metas(out)) == ["textured_box"]
    proc = render_cli("objaverse", "--glb-dir", d, "--out", out, *TINY, "--resolution", 40, "--allow-settings-change")
    assert "1 ok, 0 failed, 1 already done" in proc.stdout, proc.stdout


def test_an_empty_asset_directory_is_an_error(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "readme.txt").write_text("no assets here")
    proc = render_cli("objaverse", "--glb-dir", tmp_path / "assets", "--out", tmp_path / "shards", *TINY, check=False)
    _one_line_error(proc, "holds no assets", str(tmp_path / "assets"))


@pytest.mark.parametrize("yaml_text,flags,words", [
    ('samples: "abc"\n', [], ["bad.yaml: samples must be an integer, got 'abc'"]),
    ("samplez: 3\n", [], ["bad.yaml: unknown render settings ['samplez']"]),
    ("rig: lrm32\n", ["--resolution", "-5"], ["--resolution must be positive, got -5"]),
    ("rig: lrm32\n", ["--rig", "lrm64"], ["--rig 'lrm64': expected one of"]),
])
def test_render_config_errors_name_the_file_and_key_or_the_flag(tmp_path, yaml_text, flags, words):
    (tmp_path / "assets").mkdir()
    gen.textured_box(str(tmp_path / "assets"))
    (tmp_path / "bad.yaml").write_text(yaml_text)
    proc = render_cli("objaverse", "--glb-dir", tmp_path / "assets", "--out", tmp_path / "shards", "--config",
                      tmp_path / "bad.yaml", *flags, "--no-progress", check=False)
    line = _one_line_error(proc, *words)
    if flags:
        assert "bad.yaml" not in line  # a bad flag is blamed on the flag, not the YAML
    assert not (tmp_path / "shards").exists()


def test_disk_full_mid_run_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    """The farm's parent writes the shards: a full disk while the second object is written ends the run (exit 1,
    one line saying how to resume) with the first object committed and no half sample; the rerun renders the rest."""
    import errno

    from render_farm import cli
    from render_farm.shards import write as shard_write

    d = tmp_path / "assets"
    d.mkdir()
    for make in (gen.textured_box, gen.vertex_coloured_sphere, gen.non_manifold):
        make(str(d))
    out = tmp_path / "shards"
    real, written = shard_write._write_member, []

    def disk_fills_in_the_second_object(tar, name, data, mtime):
        key = name.split(".", 1)[0]
        if key not in written:
            written.append(key)
        if len(written) == 2 and name.endswith("000.rgba.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tar, name, data, mtime)

    monkeypatch.setattr(shard_write, "_write_member", disk_fills_in_the_second_object)
    args = ["objaverse", "--glb-dir", str(d), "--out", str(out), *map(str, TINY), "--shard-maxcount", "8"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "resumes" in err[0], err
    assert not list(out.glob("*.tmp"))
    assert sorted(_metas(out)) == [written[0]]  # the second object never reached a .tar, not even in part
    monkeypatch.setattr(shard_write, "_write_member", real)
    assert cli.main(args) == 0
    assert "2 ok, 0 failed, 1 already done" in capsys.readouterr().out
    assert sorted(_metas(out)) == ["non_manifold", "textured_box", "vertex_coloured_sphere"]
