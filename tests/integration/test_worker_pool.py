"""The render worker pool: hard timeouts, a crashed Blender replaced, workers recycled every N objects."""

import os
import signal
import threading

import pytest

from configs import RENDER_DIR
from render_farm import synthetic
from render_farm.config import load_render_config
from render_farm.worker import WorkerPool

pytestmark = pytest.mark.slow


def _job(asset, resolution=32, samples=2, views=2):
    cfg = load_render_config(os.path.join(RENDER_DIR, "tiny.yaml"), resolution=resolution, samples=samples,
                             rig_options={"num_views": views})
    return {"uid": asset.uid, "path": asset.path, "source": "local", "licence": "unknown", "sha256": "0" * 64,
            "rig": cfg.rig, "rig_options": cfg.rig_options, "depth_scale": cfg.depth_scale,
            "settings": cfg.blender_settings(threads=1)}


@pytest.fixture(scope="module")
def spheres(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool-assets")
    return [synthetic.vertex_coloured_sphere(str(d), name=f"s{i}") for i in range(3)]


def test_slow_object_hits_the_hard_timeout_and_the_next_object_still_renders(tmp_path, spheres):
    slow = _job(spheres[0], resolution=256, samples=256, views=32)  # far longer than the limit
    with WorkerPool(1, str(tmp_path / "log"), timeout_s=3.0) as pool:
        pool.workers = [pool._start(0)]
        first_pid = pool.workers[0].proc.pid
        results = list(pool.run([slow]))
        assert results[0][1] == "failed" and results[0][2][0].startswith("timeout")
        assert pool.workers[0].proc.pid != first_pid  # the stuck Blender was killed and replaced
        (job, status, payload), = pool.run([_job(spheres[1])])
        assert status == "ok" and payload["record"]["views"] == 2


def test_a_worker_that_dies_mid_render_is_recorded_and_replaced(tmp_path, spheres):
    with WorkerPool(1, str(tmp_path / "log"), timeout_s=120.0) as pool:
        pool.workers = [pool._start(0)]
        pid = pool.workers[0].proc.pid
        threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
        (job, status, (reason, excerpt)), = pool.run([_job(spheres[0], resolution=256, samples=256, views=32)])
        assert status == "failed" and "died" in reason and str(-signal.SIGKILL) in reason
        assert "=== lift3d job s0" in excerpt  # the log excerpt is the dead worker's own output
        statuses = [s for _, s, _ in pool.run([_job(a) for a in spheres])]
        assert statuses == ["ok"] * 3


def test_workers_are_recycled_every_max_jobs(tmp_path, spheres):
    with WorkerPool(1, str(tmp_path / "log"), timeout_s=120.0, max_jobs=1) as pool:
        results = list(pool.run([_job(a) for a in spheres]))
        assert [s for _, s, _ in results] == ["ok"] * 3
        assert pool.started_workers == 4  # the first, then a fresh Blender after each object


def test_custom_blender_path_without_blender_names_the_fix(tmp_path):
    pool = WorkerPool(1, str(tmp_path / "log"), blender_path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="portable Blender 4.2"):
        pool._start(0)
