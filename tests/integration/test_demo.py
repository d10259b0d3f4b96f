"""`make demo` end to end (smaller images): Blender renders → shards → a datamodule batch → preview."""

import json

import numpy as np
import pytest
from PIL import Image, ImageSequence

from lightning_modules.launch import demo

pytestmark = pytest.mark.slow

# What the demo shows, from configs/data/tiny.yaml and configs/model/lrm_tiny.yaml
BATCH, TARGETS, CROP, ENLARGE = 2, 2, 32, 3  # preview: a row per sample, 32² target crops, enlarged 3×
MESH_RESOLUTION = 64                          # marching cubes over a 64³ grid of the [-1, 1]³ scene cube
TURNTABLE_FRAMES, TURNTABLE_SIZE = 36, 256    # lift3d predict's default turntable
CONTACT_FRAMES = 6                            # contact sheet: input | 6 of those frames (every 60°)


def check_preview(path) -> None:
    """preview.png: per sample, input | target views | their depths, each a 32² tile enlarged 3× (nearest); the
    views are composited on white, the depths grey and normalised to the sample's farthest pixel, and the two agree
    (white where the depth is empty, the object where it is not)."""
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    tiles_per_row = 1 + 2 * TARGETS
    assert img.shape == (BATCH * CROP * ENLARGE, tiles_per_row * CROP * ENLARGE, 3), \
        f"{img.shape[:2]}: expected {BATCH} rows of {tiles_per_row} {CROP}² tiles enlarged {ENLARGE}×"
    small = img[::ENLARGE, ::ENLARGE]
    assert (small.repeat(ENLARGE, 0).repeat(ENLARGE, 1) == img).all(), "preview is not a 3× nearest enlargement"
    for b in range(BATCH):
        row = small[b * CROP:(b + 1) * CROP]
        tiles = [row[:, i * CROP:(i + 1) * CROP] for i in range(tiles_per_row)]
        views, depths = tiles[1:1 + TARGETS], tiles[1 + TARGETS:]
        assert (tiles[0].min(-1) < 250).mean() > 0.05, f"sample {b}: the input tile shows no object"
        assert max(d.max() for d in depths) == 255, f"sample {b}: depths are not normalised to their maximum"
        assert sum((d[..., 0] > 0).sum() for d in depths) > 0, f"sample {b}: no foreground in any target view"
        for v, (view, depth) in enumerate(zip(views, depths)):
            assert (depth == depth[..., :1]).all(), f"sample {b} view {v}: the depth tile is not grey"
            fg = depth[..., 0] > 0
            if fg.any():
                assert (view[fg].min(-1) < 255).mean() > 0.9, f"sample {b} view {v}: white where the depth is set"
            if (~fg).any():
                assert (view[~fg].min(-1) == 255).mean() > 0.9, f"sample {b} view {v}: not white where it is empty"


def check_turntable(path) -> None:
    """The turntable GIF: frames of the mesh on white, framed in the picture, turning (consecutive frames differ)."""
    frames = [np.asarray(f.convert("RGB")).astype(int) for f in ImageSequence.Iterator(Image.open(path))]
    assert len(frames) == TURNTABLE_FRAMES and frames[0].shape == (TURNTABLE_SIZE, TURNTABLE_SIZE, 3), path
    for i, frame in enumerate(frames):
        mesh = frame.min(-1) < 255
        assert 0.02 < mesh.mean() < 0.9, f"{path} frame {i}: {mesh.mean():.1%} of the pixels show the mesh"
        assert not (mesh[0].any() or mesh[-1].any() or mesh[:, 0].any() or mesh[:, -1].any()), \
            f"{path} frame {i}: the mesh touches the border (not framed)"
    assert all((a != b).any() for a, b in zip(frames, frames[1:])), f"{path}: the turntable does not turn"


def test_demo_renders_reads_back_and_previews(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--resolution", "64", "--samples", "4", "--train-steps", "0"]) == 0
    out = capsys.readouterr().out
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["total_samples"] == 3  # three good objects; the truncated file is recorded, not rendered
    assert "recorded failure truncated" in out
    assert "batch['target_images']: (2, 2, 3, 32, 32)" in out  # tiny.yaml: 2 targets, 32² crops
    check_preview(tmp_path / "preview.png")
    # running it again resumes: nothing is rendered twice
    assert demo.main(["--out", str(tmp_path), "--resolution", "64", "--samples", "4", "--train-steps", "0"]) == 0
    assert "0 ok, 0 failed, 4 already done" in capsys.readouterr().out


def check_contact_sheet(path, inputs, meshed) -> None:
    """contact_sheet.png: a row per training object (in name order), its input image | CONTACT_FRAMES tiles, every
    tile TURNTABLE_SIZE²: the input photo on white, then its mesh turning, or (objects not in ``meshed``: no surface
    yet) the same white "no surface" tile in every frame."""
    from lightning_modules.launch.demo import no_surface_tile

    sheet = np.asarray(Image.open(path).convert("RGB")).astype(int)
    n = len(inputs)
    assert sheet.shape == (n * TURNTABLE_SIZE, (1 + CONTACT_FRAMES) * TURNTABLE_SIZE, 3), \
        f"{sheet.shape}: expected {n} rows of 1 input + {CONTACT_FRAMES} frames, {TURNTABLE_SIZE}² each"
    for row, image in enumerate(inputs):
        tiles = [sheet[row * TURNTABLE_SIZE:(row + 1) * TURNTABLE_SIZE, i * TURNTABLE_SIZE:(i + 1) * TURNTABLE_SIZE]
                 for i in range(1 + CONTACT_FRAMES)]
        photo = np.asarray(Image.open(image).convert("RGBA").resize((TURNTABLE_SIZE,) * 2)).astype(int)
        # the first tile is the input image over white: dark where the photo is opaque, white where transparent
        opaque = photo[..., 3] == 255
        assert np.abs(tiles[0][opaque] - photo[..., :3][opaque]).mean() < 8, f"row {row}: not the input {image}"
        clear = tiles[0][photo[..., 3] == 0].min(-1)  # (the two resamplings differ by a pixel at the silhouette)
        assert (clear >= 250).mean() > 0.98, f"row {row}: the input is not composited over white"
        if image.stem not in meshed:
            blank = no_surface_tile(TURNTABLE_SIZE).astype(int)
            assert all((tile == blank).all() for tile in tiles[1:]), f"row {row}: no 'no surface' tiles"
            continue
        for i, tile in enumerate(tiles[1:]):
            assert 0.02 < (tile.min(-1) < 255).mean() < 0.9, f"row {row} frame {i}: no framed mesh"
        assert all((a != b).any() for a, b in zip(tiles[1:], tiles[2:])), f"row {row}: the frames do not turn"


def test_demo_trains_the_tiny_lrm_and_exports_meshes(tmp_path, capsys):
    """The whole `make demo`, with fewer training steps: a W&B offline run, a checkpoint, one mesh per object that
    has a surface, the closing table of the training objects' meshes against the geometry Blender rendered, and the
    contact sheet. Twelve steps leave the density field fog (the untrained field thickened a little, no object yet):
    every object is reported as having no surface, with the advice to train longer, and nothing is meshed from fog;
    what a trained field's meshes look like is the overfitting and evaluation tests' (and `make demo`'s 400 steps)."""
    import trimesh

    objects = ["multi_material", "textured_box", "vertex_coloured_sphere"]
    assert demo.main(["--out", str(tmp_path), "--resolution", "64", "--samples", "4", "--train-steps", "12"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "lrm" / "checkpoints" / "last.ckpt").exists()
    assert list((tmp_path / "lrm").glob("wandb/offline-run-*")), "no W&B offline run"
    assert "[12/12, elapsed" in out, "no training progress line"
    meshes = sorted((tmp_path / "meshes").glob("*.glb"))
    inputs = sorted((tmp_path / "inputs").glob("*.png"))  # each object's source view, as the user's RGBA photo
    assert [p.stem for p in inputs] == objects
    for p in inputs:
        photo = Image.open(p)
        assert photo.mode == "RGBA" and (np.asarray(photo)[..., 3] == 255).mean() > 0.01, f"{p}: no opaque object"
    for m in meshes:
        mesh = trimesh.load(m, force="mesh")
        assert 100 < len(mesh.vertices) <= 3 * MESH_RESOLUTION ** 3, (m, len(mesh.vertices))  # ≤ 3 per grid point
        assert len(mesh.faces) > 100 and mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)
        assert np.linalg.norm(mesh.vertices, axis=1).max() <= 3 ** 0.5 + 1e-4, f"{m}: vertices outside the scene cube"
        check_turntable(m.with_suffix(".gif"))
    # the training objects' meshes against the geometry Blender rendered: the closing table, one row per object
    records = {r["key"]: r for r in map(json.loads, (tmp_path / "training_objects" / "metrics.jsonl").read_text()
                                        .splitlines())}
    assert sorted(records) == objects
    for key, r in records.items():
        assert r["gt"] == "shard_mesh", (key, r.get("gt"), r.get("geometry_error"))
        row = next(line for line in out.splitlines() if line.startswith(f"[demo]   {key} "))
        if "mesh_error" in r:  # fog: no surface, said in the table and in the advice line
            assert "no surface" in r["mesh_error"] and "no predicted surface" in row, (key, row)
        else:
            assert f"{r['chamfer']:.3f}" in row and f"{r['fscore@0.1']:.3f}" in row, row
    fog = [key for key, r in records.items() if "mesh_error" in r]
    assert fog == objects, f"after 12 steps only fog was expected, but {sorted(set(objects) - set(fog))} meshed"
    assert [m.stem for m in meshes] == [key for key in objects if key not in fog]
    assert f"[demo] no surface yet for {', '.join(fog)} after 12 steps" in out and "--train-steps 400" in out
    sheet = tmp_path / "contact_sheet.png"
    check_contact_sheet(sheet, inputs, meshed={m.stem for m in meshes})
    closing = out.rstrip().splitlines()[-8:]
    assert any(str(sheet) in line for line in closing), "the contact sheet is not named in the demo's last lines"
    # the held-out objects are scored and reported
    held_out = [json.loads(line) for line in (tmp_path / "evaluation" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in held_out) == ["held_out_box", "held_out_sphere"]
    assert all(r["held_out_views"] == 23 and "psnr" in r for r in held_out)
    assert (tmp_path / "evaluation" / "report.html").exists()
    assert list((tmp_path / "evaluation").glob("wandb/offline-run-*")), "evaluation logged into another W&B run"


# `make demo`'s closing table, measured (2026-12-05, 2-core CPU, the demo's mask, depth and TV weights; identical to 3
# decimals in two runs): Chamfer / F-score@0.1 against the shards' rendered meshes. Bounds leave ~25 % room; the
# sphere's bound is also under the 0.097 issue 16 asks for (the overfitting test's sphere before the framing change).
DEMO_TABLE = {  # object: (measured Chamfer, Chamfer bound, measured F-score, F-score bound)
    "multi_material": (0.044, 0.055, 0.946, 0.88),
    "textured_box": (0.057, 0.072, 0.883, 0.8),
    "vertex_coloured_sphere": (0.034, 0.045, 0.990, 0.93),
}


def test_make_demo_meshes_meet_the_measured_per_object_bounds(tmp_path, capsys):
    """`make demo` as shipped (default resolution, samples and 400 training steps): every training object has a
    surface, and its mesh's Chamfer and F-score@0.1 against the geometry Blender rendered hold the measured bounds."""
    assert demo.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no surface yet" not in out
    records = {r["key"]: r for r in map(json.loads, (tmp_path / "training_objects" / "metrics.jsonl").read_text()
                                        .splitlines())}
    assert sorted(records) == sorted(DEMO_TABLE)
    for key, (_, chamfer_bound, _, fscore_bound) in DEMO_TABLE.items():
        r = records[key]
        assert r["gt"] == "shard_mesh" and "mesh_error" not in r, (key, r.get("mesh_error"))
        assert r["chamfer"] <= chamfer_bound and r["fscore@0.1"] >= fscore_bound, (key, r["chamfer"], r["fscore@0.1"])
    check_contact_sheet(tmp_path / "contact_sheet.png", sorted((tmp_path / "inputs").glob("*.png")),
                        meshed=set(DEMO_TABLE))
