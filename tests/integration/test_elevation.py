"""One-2-3-45 elevation estimation on real Blender renders of the ``one2345`` rig.

Ground-truth neighbour renders stand in for Zero123's predictions. The object is a box with a multi-scale colour
noise texture (a different tile of it on each face) written here: the render farm's checkerboard ``textured_box``
is too repetitive for SIFT — most of its matches are one-cell-off mismatches and a few of its views land 5–35°
off — so it is not used for the accuracy bound.
"""

import os

import numpy as np
import pytest
import trimesh
from PIL import Image

from configs import RENDER_DIR
from render_farm import synthetic as assets

pytestmark = pytest.mark.slow

BOUND_DEG = 5.0  # |estimate − truth| for every ground-truth view
RESOLUTION = 256  # One-2-3-45's image size; SIFT needs the detail
NUM_GT = 3


def noise_textured_box(directory: str, name: str = "noise_box", seed: int = 0) -> str:
    """A unit box whose six faces show six different tiles of a smooth multi-scale RGB noise texture, as GLB."""
    rng = np.random.default_rng(seed)
    h, w = 512, 768  # 2 × 3 tiles of 256²
    img = np.zeros((h, w, 3))
    for cells, amp in ((6, 1.0), (12, 0.7), (24, 0.5), (48, 0.35)):  # octaves: blobs of several sizes
        small = (rng.uniform(0.0, 1.0, (cells * 2, cells * 3, 3)) * 255).astype(np.uint8)
        blobs = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        img += amp * np.asarray(blobs, dtype=np.float64) / 255.0
    img = (img - img.min()) / (img.max() - img.min())
    texture = Image.fromarray((img * 255).astype(np.uint8), "RGB")
    mesh = assets.uv_box(1.0)  # 4 vertices per face, each face spanning the full UV square
    uv = mesh.visual.uv.copy()
    for face in range(6):  # face k → tile (row, col) of the 2 × 3 atlas
        row, col = divmod(face, 3)
        uv[4 * face:4 * face + 4, 0] = (col + uv[4 * face:4 * face + 4, 0]) / 3.0
        uv[4 * face:4 * face + 4, 1] = (row + uv[4 * face:4 * face + 4, 1]) / 2.0
    material = trimesh.visual.material.PBRMaterial(name="noise", baseColorTexture=texture, metallicFactor=0.0,
                                                   roughnessFactor=1.0)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    path = os.path.join(directory, f"{name}.glb")
    with open(path, "wb") as f:
        f.write(mesh.export(file_type="glb"))
    return path


@pytest.fixture(scope="module")
def one2345_shards(tmp_path_factory):
    """The noise box rendered by Blender with the one2345 rig (3 gt views + 4 neighbours each) at 256², 8 spp."""
    from render_farm.config import load_render_config
    from render_farm.farm import render_task
    from render_farm.sources import LocalDirSource

    root = tmp_path_factory.mktemp("elevation")
    (root / "assets").mkdir()
    noise_textured_box(str(root / "assets"))
    cfg = load_render_config(os.path.join(RENDER_DIR, "tiny.yaml"), rig="one2345", resolution=RESOLUTION,
                             samples=8, rig_options={"num_gt": NUM_GT}, shard_maxcount=1)
    summary = render_task(LocalDirSource(str(root / "assets")), str(root / "shards"), cfg, num_workers=2,
                          progress=False)
    assert not summary.failures, summary.failures
    return root / "shards"


def _views(shard_dir):
    """(key, gt view, true elevation, [5 RGBA images: gt then its neighbours]) for every gt view."""
    from render_farm.shards import decode_rgba, read_cameras, read_meta, scan_samples

    out = []
    for url in sorted(shard_dir.glob("*.tar")):
        for sample in scan_samples(str(url)):
            meta, cams = read_meta(sample), read_cameras(sample)
            assert meta["render"]["rig"] == "one2345"
            for gt, nbrs in sorted(meta["neighbours_of"].items(), key=lambda kv: int(kv[0])):
                gt = int(gt)
                centre = cams["c2w"][gt, :3, 3].astype(np.float64)
                elevation = float(np.degrees(np.arcsin(centre[2] / np.linalg.norm(centre))))
                images = [decode_rgba(sample, v, cams["hw"][v]) for v in [gt, *nbrs]]
                out.append((sample["__key__"], gt, elevation, images))
    return out


def test_elevation_of_rendered_views_is_within_bound(one2345_shards):
    from geometry.elevation import estimate_elevation

    views = _views(one2345_shards)
    assert len(views) == NUM_GT
    errors = []
    for key, gt, truth, images in views:
        res = estimate_elevation(images)  # alpha → masks; one2345 defaults: radius 4.37, FOV 49.13°
        err = res.elevation_deg - truth
        errors.append(err)
        print(f"{key} view {gt}: true {truth:6.2f}°, estimated {res.elevation_deg:6.2f}°, error {err:+.2f}° "
              f"({res.num_matches} matches)")
    assert np.all(np.abs(errors) <= BOUND_DEG), \
        f"elevation errors {np.round(errors, 2).tolist()} exceed ±{BOUND_DEG}°"


def test_swapped_neighbours_score_much_worse(one2345_shards):
    """Swapping the +10° and −10° elevation neighbours leaves no elevation that explains the matches: the best
    score gets several times worse (a check that the score really uses the cameras, and that the images must come
    in the order of the offsets)."""
    from geometry.elevation import estimate_elevation

    key, gt, truth, images = _views(one2345_shards)[0]
    swapped = [images[0], images[2], images[1], images[3], images[4]]
    res = estimate_elevation(swapped)
    right = estimate_elevation(images)
    print(f"{key} view {gt}: true {truth:.2f}°, estimate {right.elevation_deg:.2f}°, with swapped neighbours "
          f"{res.elevation_deg:.2f}° (best score {res.errors.min():.3f} vs {right.errors.min():.3f})")
    assert res.errors.min() > 3.0 * right.errors.min()
