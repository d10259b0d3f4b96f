"""Assets over the configured limits are skipped and recorded, never rendered; the rest of the set still lands."""

import json
import os

import pytest

from configs import RENDER_DIR
from render_farm import synthetic
from render_farm.config import load_render_config
from render_farm.farm import render_task
from render_farm.sources import LocalDirSource

pytestmark = pytest.mark.slow


def _failures(out):
    return {r["key"]: r["reason"] for r in map(json.loads, open(out / "_state" / "task-00000.failures.jsonl"))}


def test_huge_files_and_too_many_faces_are_recorded(tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    sphere = synthetic.vertex_coloured_sphere(str(assets))  # an icosphere: hundreds of faces, tens of KB
    box = synthetic.textured_box(str(assets))  # 12 faces
    cfg = load_render_config(os.path.join(RENDER_DIR, "tiny.yaml"), resolution=32, samples=2,
                             rig_options={"num_views": 2}, max_faces=100)
    summary = render_task(LocalDirSource(str(assets)), str(tmp_path / "a"), cfg, progress=False)
    assert (summary.ok, summary.failed) == (1, 1)
    assert _failures(tmp_path / "a") == {sphere.uid: "asset too large: more than 100 faces (raise "
                                                     "render.max_faces to allow it)"}

    cfg = load_render_config(os.path.join(RENDER_DIR, "tiny.yaml"), resolution=32, samples=2,
                             rig_options={"num_views": 2},
                             max_file_mb=0.005)  # 5 KB: the sphere's file is larger, the box's is not
    summary = render_task(LocalDirSource(str(assets)), str(tmp_path / "b"), cfg, progress=False)
    reason = _failures(tmp_path / "b")[sphere.uid]
    assert summary.ok == 1 and reason.startswith("asset too large:") and "max_file_mb" in reason
    assert box.uid not in _failures(tmp_path / "b")
