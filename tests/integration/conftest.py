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
