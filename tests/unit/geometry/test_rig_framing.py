"""The framing rule of ``geometry.rigs``: every rig's default cameras show the whole normalised object with the margin,
for many objects and seeds, and the configs that place cameras (the LRM's canonical camera, the render configs'
rigs and depth encoding) agree with it."""

import glob
import itertools
import math
import os

import numpy as np
import pytest
import torch
import yaml

from configs import RENDER_DIR, ROOT
from geometry.rays import project
from geometry.rigs import (
    FRAMING_MARGIN,
    LRM32_FOV_DEG,
    LRM32_RADIUS,
    OBJECT_RADIUS,
    ONE2345_FOV_DEG,
    ONE2345_RADIUS,
    RIGS,
    frames,
    framing_distance,
    framing_fov,
    make_rig,
)
from render_farm.config import load_render_config

BOX_CORNERS = np.array(list(itertools.product([-1.0, 1.0], repeat=3)))


def _corner_pixels(rig, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (V, 8, 2) and depths (V, 8) of the corners of [-scale, scale]³ in every view of ``rig``."""
    points = torch.as_tensor(BOX_CORNERS * scale)[None].expand(len(rig), -1, -1)
    uv, z = project(points, torch.as_tensor(rig.c2w), torch.as_tensor(rig.K))
    return uv.numpy(), z.numpy()


@pytest.mark.parametrize("name", sorted(RIGS))
def test_every_view_of_every_rig_frames_the_box_grown_by_the_margin(name):
    resolution = 64
    for seed, uid in itertools.product(range(3), [f"object-{i}" for i in range(40)]):
        rig = make_rig(name, uid, resolution, seed=seed)
        # the box grown by the margin has its corners on the grown bounding sphere, which the rule fits in the view
        uv, z = _corner_pixels(rig, 1.0 + FRAMING_MARGIN)
        assert np.all(z > 0), (name, uid, seed)
        assert np.all((uv > 0) & (uv < resolution)), (name, uid, seed, uv.min(), uv.max())
        assert frames(np.linalg.norm(rig.c2w[:, :3, 3], axis=1), rig.fov_deg), (name, uid, seed)


def test_the_rule_is_tight_a_tangent_point_lands_on_the_image_edge():
    fov = 40.0
    d = framing_distance(fov, margin=0.0)
    assert d == pytest.approx(OBJECT_RADIUS / math.sin(math.radians(fov / 2)))
    assert framing_fov(d, margin=0.0) == pytest.approx(fov)
    assert framing_fov(framing_distance(49.0)) == pytest.approx(49.0)
    # a camera on −Y at d looking at the origin: the sphere's tangent point in the image's +x direction
    rig = make_rig("orbit", "any", 100, views_per_ring=1, elevations=(0.0,), radius=d, fov_deg=fov)
    half = math.radians(fov / 2)
    tangent = OBJECT_RADIUS * np.array([math.cos(half), -math.sin(half), 0.0])
    uv, _ = project(torch.as_tensor(tangent)[None, None], torch.as_tensor(rig.c2w), torch.as_tensor(rig.K))
    assert uv[0, 0, 0].item() == pytest.approx(100.0, abs=1e-6)
    assert not frames(0.99 * d, fov, margin=0.0) and frames(d, fov, margin=0.0)
    with pytest.raises(ValueError, match="inside the object's bounding sphere"):
        framing_fov(1.0)


def test_one2345_is_zero123s_lens_at_a_distance_inside_zero123s_range():
    # Zero123 (objaverse-rendering): 35 mm lens, 32 mm sensor; distance U[1.5, 2.2] for an object of largest extent
    # 1, i.e. [3.0, 4.4] for lift3d's [-1, 1]³
    assert ONE2345_FOV_DEG == pytest.approx(2 * math.degrees(math.atan(16 / 35)))
    assert 3.0 <= ONE2345_RADIUS <= 4.4
    assert ONE2345_RADIUS == pytest.approx(framing_distance(ONE2345_FOV_DEG))


def test_the_lrm_canonical_camera_keeps_the_object_inside_the_triplane():
    # the canonical frame scales each sample's world by camera_distance / r (r the source's distance, in the lrm32
    # shell): camera_distance ≤ the shell's near end keeps the normalised box inside the triplane's [-1, 1]³
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "model", "lrm_*.yaml")))
    assert paths
    for path in paths:
        with open(path) as f:
            args = yaml.safe_load(f)["init_args"]
        distance = args["camera_distance"]
        bound = args.get("field", {}).get("bound", 1.0)
        assert distance <= LRM32_RADIUS[0] and distance / LRM32_RADIUS[0] <= bound, path
        # the canonical camera (lrm32's FOV) still frames the scaled object
        assert frames(distance, LRM32_FOV_DEG, radius=OBJECT_RADIUS * distance / LRM32_RADIUS[0]), path


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(RENDER_DIR, "*.yaml"))))
def test_render_configs_frame_the_object_and_encode_its_farthest_depth(path):
    cfg = load_render_config(path)
    rig = make_rig(cfg.rig, "config-check", 32, cfg.seed, **cfg.rig_options)
    distance = np.linalg.norm(rig.c2w[:, :3, 3], axis=1)
    assert frames(distance, rig.fov_deg), path
    # uint16 depth: the far side of the object must stay below 65535 / depth_scale
    assert (distance.max() + OBJECT_RADIUS) * cfg.depth_scale < 65535, (path, cfg.depth_scale)
