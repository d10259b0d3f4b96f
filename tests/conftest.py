"""The rules every test session runs under (tests/README.md states them), and the session fixtures shared by
tests/integration and tests/slurm (real Blender renders, made once per session).

* Threads: a process that runs alone uses the cores it is given (``CORES``, its affinity mask); parts that run at
  once share them, ``threads_for(parts)`` each. Threads that wait at a barrier sleep instead of spinning
  (``OMP_WAIT_POLICY=PASSIVE``): a spinning thread burns the core the thread it waits for needs, which is what makes
  torch slow down far more than the load on a shared machine. Set here, before torch is imported, so the session
  and every process it starts (DDP ranks, CLI runs, Slurm jobs) inherit it.
* Timeouts: hang guards of 4× a test's idle time; on a machine that is already busy when the session starts they are
  scaled by its load per core (``timeout_scale``), so a slow machine does not fail a test that is not hung.
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


def timeout_scale() -> float:
    """``LIFT3D_TIMEOUT_SCALE`` if set, else the 1-minute load average per core of this session's cores when it starts
    (at least 1): the factor every pytest timeout is multiplied by."""
    value = os.environ.get("LIFT3D_TIMEOUT_SCALE")
    if value is None:
        return max(1.0, os.getloadavg()[0] / CORES)
    try:
        scale = float(value)
    except ValueError:
        scale = 0.0
    if not scale > 0:
        raise pytest.UsageError(f"LIFT3D_TIMEOUT_SCALE={value!r} is not a positive number; unset it to scale the "
                                "timeouts by the load average, or set e.g. LIFT3D_TIMEOUT_SCALE=2")
    return scale


TIMEOUT_SCALE = 1.0  # set when the session starts (pytest_configure)


def pytest_report_header(config):
    load = os.getloadavg()[0]
    return (f"lift3d: {CORES} core(s), load average {load:.1f}; pytest timeouts ×{TIMEOUT_SCALE:.2f} "
            f"({'LIFT3D_TIMEOUT_SCALE' if 'LIFT3D_TIMEOUT_SCALE' in os.environ else 'load per core, at least 1'}); "
            f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")


@pytest.hookimpl(trylast=True)  # after the conftests that raise a test's timeout (integration/conftest.py)
def pytest_collection_modifyitems(config, items):
    if TIMEOUT_SCALE == 1.0:
        return
    default = float(config.getoption("timeout", None) or config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        base = float(marker.kwargs.get("timeout", marker.args[0] if marker.args else 0)) if marker else default
        if base > 0:
            item.add_marker(pytest.mark.timeout(round(base * TIMEOUT_SCALE)), append=False)


def pytest_configure(config):
    global TIMEOUT_SCALE
    TIMEOUT_SCALE = timeout_scale()
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
