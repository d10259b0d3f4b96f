"""Session fixtures shared by tests/integration and tests/slurm (real Blender renders, made once per session)."""

import os

import pytest

from configs import RENDER_DIR
from render_farm import synthetic as assets


@pytest.fixture(scope="session")
def lrm_shards(tmp_path_factory):
    """A generated sphere and textured box rendered by Blender at 64², 16 lrm32 views, one object per shard."""
    from render_farm.config import load_render_config
    from render_farm.farm import render_task
    from render_farm.sources import LocalDirSource

    root = tmp_path_factory.mktemp("lrm_shards")
    (root / "assets").mkdir()
    made = [assets.vertex_coloured_sphere(str(root / "assets")), assets.textured_box(str(root / "assets"))]
    cfg = load_render_config(os.path.join(RENDER_DIR, "tiny.yaml"), resolution=64, samples=8,
                             rig_options={"num_views": 16}, shard_maxcount=1)
    summary = render_task(LocalDirSource(str(root / "assets")), str(root / "shards"), cfg, num_workers=2,
                          progress=False)
    assert not summary.failures, summary.failures
    return {"dir": root / "shards", "assets": {a.uid: a for a in made}}
