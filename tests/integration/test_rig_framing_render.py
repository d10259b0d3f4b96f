"""Every rig frames the whole object in Blender: a box that fills [-1, 1]³ after normalisation, rendered with each
rig's default cameras (tiny images, few samples), has alpha 0 on the whole image border of every view."""

import os

import numpy as np
import pytest
import webdataset as wds

from configs import RENDER_DIR
from geometry.rigs import RIGS
from render_farm import synthetic as assets
from render_farm.shards import decode_rgba, read_header

pytestmark = pytest.mark.slow

RESOLUTION = 48


@pytest.fixture(scope="module")
def box_asset(tmp_path_factory):
    """The generated textured box: normalisation scales it to exactly [-1, 1]³, so it fills the box."""
    directory = tmp_path_factory.mktemp("framing_assets")
    assets.textured_box(str(directory))
    return directory


@pytest.mark.parametrize("name", sorted(RIGS))
def test_a_box_filling_object_never_touches_the_image_border(name, box_asset, tmp_path):
    from render_farm.config import load_render_config
    from render_farm.farm import render_task
    from render_farm.sources import LocalDirSource

    cfg = load_render_config(os.path.join(RENDER_DIR, "tiny.yaml"), resolution=RESOLUTION, samples=2, rig=name,
                             rig_options={}, shard_maxcount=8)
    summary = render_task(LocalDirSource(str(box_asset)), str(tmp_path / "shards"), cfg, num_workers=1,
                          progress=False)
    assert not summary.failures, summary.failures
    shards = sorted(str(p) for p in (tmp_path / "shards").glob("*.tar"))
    (sample,) = list(wds.WebDataset(shards, shardshuffle=False))
    meta, cams, _ = read_header(sample)
    assert meta["render"]["rig"] == name and len(cams["c2w"]) == len(RIGS[name]("any"))
    views_touching, fill = [], []
    for i in range(len(cams["c2w"])):
        alpha = decode_rgba(sample, i)[..., 3]
        border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
        if border.max() > 0:
            views_touching.append((i, int(border.max())))
        fill.append(float((alpha > 127).mean()))
    assert not views_touching, f"{name}: views with object pixels on the border (view, max alpha): {views_touching}"
    # the object is there and not a speck: each view covers a good part of the image
    assert min(fill) > 0.1, (name, min(fill))
    print(f"{name}: {len(fill)} views, object covers {min(fill):.2f}-{max(fill):.2f} of the image, border alpha 0")
