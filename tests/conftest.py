"""The rules every test session runs under (tests/README.md states them), and the session fixtures shared by
tests/integration and tests/slurm (real Blender renders, made once per session).

* Threads: a process that runs alone uses the cores it is given (``CORES``, its affinity mask); parts that run at
  once share them, ``threads_for(parts)`` each. Threads that wait at a barrier sleep instead of spinning
  (``OMP_WAIT_POLICY=PASSIVE``): a spinning thread burns the core the thread it waits for needs, which is what makes
  torch slow down far more than the load on a shared machine. Set here, before torch is imported, so the session
  and every process it starts (DDP ranks, CLI runs, Slurm jobs) inherit it.
* Lifetime: the session is an owner in :mod:`tests.lifetime`; nothing it starts outlives it, and what runs that were
  killed left behind is removed when it starts.
"""

import os
import sys
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (libgomp reads it once, when it is loaded)

import pytest  # noqa: E402

from configs import RENDER_DIR  # noqa: E402
from render_farm import synthetic as assets  # noqa: E402
from tests import lifetime  # noqa: E402

CORES = len(os.sched_getaffinity(0))


def threads_for(parts: int) -> int:
    """Threads for each of ``parts`` processes (or worker pools) that run at the same time on this session's cores."""
    return max(1, CORES // max(1, parts))


def pytest_configure(config):
    if "torch" in sys.modules and os.environ["OMP_WAIT_POLICY"] == "PASSIVE":
        warnings.warn("torch was imported before tests/conftest.py set OMP_WAIT_POLICY=PASSIVE: this session's torch "
                      "threads spin while they wait (its subprocesses do not); import torch after conftest loads")
    lifetime.guard()


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
