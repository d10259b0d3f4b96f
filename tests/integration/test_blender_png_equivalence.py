"""Our EXR → sRGB RGBA conversion gives the PNG Blender itself writes with the "Standard" view transform."""

import subprocess
import sys

import numpy as np
import pytest

from configs import ROOT

pytestmark = pytest.mark.slow

SCRIPT = r"""
import sys, numpy as np, bpy, cv2
sys.path.insert(0, {root!r})
from geometry.rigs import make_rig, object_rng
from render_farm import blender_scene as bs
from render_farm import synthetic as assets
a = assets.textured_box({tmp!r})
rig = make_rig("orbit", "x", 48, views_per_ring=1, elevations=(25.0,))
s = bs.RenderSettings(samples=8, resolution=48)
ours = bs.render_object(a.path, rig, s, 10000.0, rng=object_rng("lighting", "x", 0))["views"][0]["rgba"]
bpy.context.scene.render.use_persistent_data = False  # (re-rendering a persistent scene in a new format crashes 4.2)
fmt = bpy.context.scene.render.image_settings          # same scene, Blender's own PNG writer
fmt.file_format, fmt.color_mode, fmt.color_depth = "PNG", "RGBA", "8"
bpy.context.scene.render.filepath = {tmp!r} + "/blender.png"
bpy.ops.render.render(write_still=True)
theirs = cv2.cvtColor(cv2.imread({tmp!r} + "/blender.png", cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
np.save({tmp!r} + "/pair.npy", np.stack([ours, theirs]))
import os; os._exit(0)  # bpy 4.2 can crash in its own teardown at interpreter exit; the result is saved
"""


def test_rgba_matches_blenders_own_png(tmp_path):
    subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT), tmp=str(tmp_path))], check=True,
                   capture_output=True, cwd=ROOT)
    ours, theirs = np.load(tmp_path / "pair.npy").astype(int)
    assert np.abs(ours[..., 3] - theirs[..., 3]).max() <= 1
    opaque = (ours[..., 3] == 255) & (theirs[..., 3] == 255)
    assert opaque.sum() > 300
    diff = np.abs(ours[opaque][:, :3] - theirs[opaque][:, :3])
    assert diff.max() <= 2, f"max colour difference {diff.max()} levels"
