"""Real Blender renders shared by the integration tests (rendered once per session)."""

import os
import subprocess
import sys

import pytest

from render_farm import synthetic as assets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def render_cli(*args, check=True, **kw):
    """Runs ``lift3d-render`` exactly as a user would (a fresh process)."""
    cmd = [sys.executable, "-m", "render_farm.cli", *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def rendered(tmp_path_factory):
    """Every generated asset (valid and broken) rendered by Blender at 96², 8 views of the lrm32 rig."""
    root = tmp_path_factory.mktemp("rendered")
    generated = assets.all_assets(str(root / "assets"))
    out = root / "shards"
    proc = render_cli("objaverse", "--glb-dir", root / "assets", "--out", out, "--config", "configs/render/tiny.yaml",
                      "--resolution", 96, "--samples", 8, "--num-workers", 2, "--no-progress")
    return {"assets": {a.uid: a for a in generated}, "out": out, "stdout": proc.stdout}


@pytest.fixture(scope="session")
def lrm_shards(tmp_path_factory):
    """A generated sphere and textured box rendered by Blender at 64², 16 lrm32 views, one object per shard."""
    from render_farm.config import load_config
    from render_farm.farm import render_task
    from render_farm.sources import LocalDirSource

    root = tmp_path_factory.mktemp("lrm_shards")
    (root / "assets").mkdir()
    made = [assets.vertex_coloured_sphere(str(root / "assets")), assets.textured_box(str(root / "assets"))]
    cfg = load_config(os.path.join(ROOT, "configs", "render", "tiny.yaml"), resolution=64, samples=8,
                      rig_options={"num_views": 16}, shard_maxcount=1)
    summary = render_task(LocalDirSource(str(root / "assets")), str(root / "shards"), cfg, num_workers=2,
                          progress=False)
    assert not summary.failures, summary.failures
    return {"dir": root / "shards", "assets": {a.uid: a for a in made}}
