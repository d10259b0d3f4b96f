import glob
import os

import pytest

from configs import RENDER_DIR as CONFIG_DIR
from render_farm.cli import build_parser
from render_farm.config import RenderSettings, load_render_config

CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))


def test_there_are_render_configs():
    assert {"default.yaml", "tiny.yaml", "one2345.yaml", "lrm32_256.yaml"} <= set(map(os.path.basename, CONFIGS))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_render_config_parses_and_validates(path):
    cfg = load_render_config(path)
    settings = cfg.blender_settings(threads=2)
    assert settings["samples"] == cfg.samples and settings["threads"] == 2
    assert cfg.resolution * cfg.depth_scale > 0


def test_flags_override_the_yaml_and_none_keeps_it():
    cfg = load_render_config(os.path.join(CONFIG_DIR, "tiny.yaml"), samples=3, resolution=None)
    assert cfg.samples == 3 and cfg.resolution == 64


def test_unknown_keys_and_bad_values_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("samplez: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*samplez"):
        load_render_config(str(bad))
    bad.write_text("rig: lrm64\nsamples: 0\n")
    with pytest.raises(ValueError, match=r"rig 'lrm64'.*samples must be positive"):
        load_render_config(str(bad))
    with pytest.raises(FileNotFoundError, match="configs/render"):
        load_render_config(str(tmp_path / "missing.yaml"))


def test_cli_parses_the_documented_commands():
    p = build_parser()
    a = p.parse_args(["objaverse", "--uids-file", "u.txt", "--out", "o", "--rig", "lrm32", "--resolution", "512",
                      "--samples", "128", "--num-workers", "4"])
    assert (a.uids_file, a.rig, a.resolution, a.num_workers) == ("u.txt", "lrm32", 512, 4)
    assert p.parse_args(["objaverse", "--lvis-categories", "chair", "mug", "--licences", "by", "cc0", "--out", "o",
                         "--download-processes", "8"]).download_processes == 8
    a = p.parse_args(["objaverse", "--glb-dir", "assets", "--out", "o", "--custom-blender-path", "/opt/blender"])
    assert a.glb_dir == "assets" and a.custom_blender_path == "/opt/blender"
    assert p.parse_args(["mvimgnet", "--root", "/data/mvimgnet", "--out", "o"]).root == "/data/mvimgnet"
    with pytest.raises(SystemExit):
        p.parse_args(["objaverse", "--out", "o"])  # a source is required


def test_render_settings_reach_the_worker_with_its_own_defaults(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("samples: 7\nlighting: random\nmax_faces: 10\n")
    settings = RenderSettings(**load_render_config(str(path)).blender_settings(threads=3))
    assert (settings.samples, settings.lighting, settings.max_faces, settings.threads) == (7, "random", 10, 3)
    assert settings.resolution == 512 and settings.world_strength == 0.6  # defaults: the config's, the worker's
