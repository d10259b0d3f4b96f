"""``make demo``: the main job end to end on generated objects, in a few minutes on a CPU.

1. Renders a few generated objects with Blender (plus one broken file, to show it recorded and skipped) and writes
   format-v1 shards (``OUT/shards``).
2. Reads a training batch back through the ShardDataModule of ``configs/data/tiny.yaml`` and saves a preview
   (input | supervision views | depth) to ``OUT/preview.png``.
3. Trains ``lrm_tiny`` on the shards with ``lift3d fit --config configs/experiments/lrm_tiny.yaml`` and the
   demo's loss weights (:data:`SUPERVISION`: mask, depth and plane smoothness for a few hundred steps; a W&B offline
   run, checkpoints in ``OUT/lrm``).
4. Turns each object's source view (as an RGBA PNG in ``OUT/inputs``) into a mesh and a turntable GIF with
   ``lift3d predict`` (``OUT/meshes/*.glb``, ``*.gif``).
5. Scores those meshes against the geometry Blender rendered (each shard's ``mesh.npz``) with ``lift3d evaluate``
   (``OUT/training_objects/metrics.jsonl``: Chamfer, F-score, …) and writes the contact sheet
   ``OUT/contact_sheet.png``: a row per object, its input image | its mesh's turntable every 60°.
6. Renders two held-out generated objects with the ``eval24`` rig (``OUT/held_out``) and scores the checkpoint on
   them with ``lift3d evaluate`` (``OUT/evaluation/report.html``, ``metrics.jsonl``, a W&B offline run).

It ends with the table of step 5 (Chamfer and F-score at 0.1 of each training object's mesh) and names the contact
sheet. Every stage prints its duration; training prints a progress line every 5 % of its steps.
The whole demo takes about 3 minutes on an idle 2-core machine (2 min 52 s measured on 2026-12-05, all stages).
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import time

import numpy as np
import torch
from PIL import Image

from configs import DATA_DIR, EXPERIMENT_DIR, MODEL_DIR, RENDER_DIR, ROOT, load_block
from geometry.image import resize, write_image
from lightning_modules.callbacks import format_duration, image_grid
from render_farm import synthetic
from render_farm.config import load_render_config
from render_farm.farm import render_task
from render_farm.shards import read_header, resolve_shards, safe_output_path, sample_key, scan_samples, view_member
from render_farm.sources import LocalDirSource


def took(start: float) -> str:
    """`` in 12s`` / `` in 3m05s``: a stage's duration, for its closing line."""
    return f" in {format_duration(time.time() - start)}"


def build_datamodule(config_path: str, shards: str):
    spec = load_block(config_path, "data")
    module, _, name = spec.class_path.rpartition(".")
    args = dict(spec.init_args, train_shards=shards, val_shards=shards)
    return getattr(importlib.import_module(module), name)(**args)


def preview(batch: dict, path: str) -> None:
    """One row per sample: input view | supervision views | their depth (normalised), enlarged 3×."""
    grid = image_grid(batch, max_samples=batch["input_image"].shape[0])
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.Resampling.NEAREST).save(path)


def write_source_views(shard_dir: str, out_dir: str) -> list[str]:
    """Each object's source view (the LRM's input) as an RGBA PNG, as a user would hand one to ``lift3d predict``;
    the paths in name order (the shards hold the objects in the order the render workers finished them)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    urls, _ = resolve_shards(shard_dir)
    for sample in (s for url in urls for s in scan_samples(url)):
        _, _, roles = read_header(sample)
        view = roles.index("source") if "source" in roles else 0
        path = safe_output_path(out_dir, sample_key(sample), ".png")
        with open(path, "wb") as f:
            f.write(sample[view_member(view, "rgba")])
        paths.append(path)
    return sorted(paths)


def train_and_predict(shard_dir: str, out: str, steps: int) -> tuple[str, list[str], str]:
    """Trains, then meshes each object's source view: (checkpoint, input images, mesh directory)."""
    from lightning_modules.launch.cli import main as lift3d

    run_dir = os.path.abspath(os.path.join(out, "lrm"))
    config = os.path.join(EXPERIMENT_DIR, "lrm_tiny.yaml")
    common = [f"--data.init_args.train_shards={shard_dir}", f"--data.init_args.val_shards={shard_dir}"]
    supervision = [f"--model.init_args.{k}={v}" for k, v in SUPERVISION.items()]
    print(f"[demo] training lrm_tiny for {steps} steps: lift3d fit --config {os.path.relpath(config, ROOT)} "
          f"{' '.join(supervision)}", flush=True)
    ckpt = os.path.join(run_dir, "checkpoints", "last.ckpt")
    t = time.time()
    resume = [f"--ckpt_path={ckpt}"] if os.path.exists(ckpt) else []  # a second `make demo` continues the run
    lift3d(["fit", "--config", config, *common, *resume, f"--trainer.max_steps={steps}",
            *supervision,
            f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
            "--trainer.callbacks=" + json.dumps([
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": f"{run_dir}/checkpoints", "save_last": True, "every_n_train_steps": steps,
                               "enable_version_counter": False}},
                {"class_path": "lightning_modules.callbacks.ThroughputLogger"},
                {"class_path": "lightning_modules.callbacks.ProgressPrinter",  # the progress bar is off: lines instead
                 "init_args": {"every_n_steps": max(1, steps // 20)}},
                {"class_path": "lightning_modules.callbacks.VisualLogger",
                 "init_args": {"every_n_steps": max(1, steps // 2), "mesh_resolution": 64}}]),
            "--trainer.enable_progress_bar=false",
            f"--trainer.check_val_every_n_epoch={max(1, steps // 2)}"])
    print(f"[demo] training done{took(t)}: {os.path.relpath(ckpt)}", flush=True)
    t = time.time()
    inputs_dir = os.path.join(out, "inputs")
    inputs = write_source_views(shard_dir, inputs_dir)
    mesh_dir = os.path.abspath(os.path.join(out, "meshes"))
    print(f"[demo] meshes from {len(inputs)} input images: lift3d predict --ckpt_path {ckpt}", flush=True)
    # the images are prepared as the checkpoint's training inputs were (64 px, not re-framed): it records them
    lift3d(["predict", "--config", config, f"--ckpt_path={ckpt}", "--trainer.callbacks=[]",
            "--data=datamodules.images.ImageDataModule", f"--data.images={os.path.abspath(inputs_dir)}",
            f"--model.init_args.predict_dir={mesh_dir}"])
    meshes = sorted(glob.glob(os.path.join(mesh_dir, "*.glb")))
    print(f"[demo] {len(meshes)} meshes{took(t)}: {', '.join(os.path.relpath(m) for m in meshes)}", flush=True)
    return ckpt, inputs, mesh_dir


DEFAULT_STEPS = 400  # lrm_tiny training steps of `make demo`
# lrm_tiny's loss weights in the demo (the config's are for its tests' runs): what a few hundred steps on three objects
# need for meshes that have the objects' shape. Measured on the demo's shards at 400 steps (Chamfer / F-score@0.1 of
# the closing table; BENCHMARKS.md "The demo's meshes"):
# - mask 1.0: the untrained field is a faint fog through the whole volume, white fog on the white background costs the
#   colour loss nothing, and only the mask loss clears it (at 0.1 no object has a surface after 40 steps and the fog
#   thickens; at 1.0 all three have one at 80 and 100 steps).
# - depth 0.1 (L1 to the rendered depth, on the mask): from colour and mask alone the density stays soft: the renders
#   are right (silhouette IoU 0.96) but rays terminate 0.17 behind the sphere's surface and the half-opacity surface
#   lies inside it (mesh radius 0.84 of 1; sphere 0.121 / 0.450). Longer training does not fix it (800 steps: 0.107),
#   finer planes make it worse (32² planes: 0.100, boxier); the depth every shard carries does (0.056 / 0.921).
# - total variation 0.01 on the planes: lrm_tiny's 16² planes come out of a 2×2 stride-2 transposed convolution, whose
#   period-2 texel pattern shows as axis-aligned ridges on every mesh; smoothing the planes removes most of them
#   (sphere 0.034 / 0.990, box 0.057 / 0.883, two-part object 0.044 / 0.946).
# The price is appearance: PSNR at the training cameras 2.8–3.7 dB lower on the sphere and the two-part object.
SUPERVISION = {"mask_weight": 1.0, "depth_weight": 0.1, "tv_weight": 0.01}
CONTACT_FRAMES = 6  # turntable frames per contact-sheet row: predict's 36 frames taken every 60°
TABLE_METRICS = (("chamfer", "Chamfer"), ("fscore@0.1", "F-score@0.1"))


def score_training_objects(ckpt: str, shard_dir: str, out: str) -> list[dict]:
    """``lift3d evaluate`` on the training shards: each object's mesh, reconstructed from its source view as
    ``lift3d predict`` reconstructs it and taken to the object's world, against the geometry Blender rendered (the
    shard's ``mesh.npz``). Returns the records of ``OUT/training_objects/metrics.jsonl`` (one per object)."""
    from lightning_modules.launch.cli import main as lift3d

    t = time.time()
    scores = os.path.join(out, "training_objects")
    print(f"[demo] scoring the training objects' meshes: lift3d evaluate --shards {os.path.relpath(shard_dir)}",
          flush=True)
    lift3d(["evaluate", "--ckpt", ckpt, "--shards", shard_dir, "--out", scores,
            "--model-config", os.path.join(MODEL_DIR, "lrm_tiny.yaml"), "--render-size", "64",
            "--wandb-mode", "disabled"])  # the held-out evaluation (below) has the W&B run
    with open(os.path.join(scores, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    print(f"[demo] training objects scored{took(t)}: {os.path.relpath(scores)}/report.html", flush=True)
    return records


def score_table(records: list[dict]) -> list[str]:
    """The demo's closing table: a line per training object with :data:`TABLE_METRICS` and the ground truth."""
    width = max(len(r["key"]) for r in records)
    lines = [f"{'object':<{width}}  " + "  ".join(f"{name:>11}" for _, name in TABLE_METRICS) + "  ground truth"]
    for r in records:
        values = [f"{r[m]:>11.3f}" if isinstance(r.get(m), float) else f"{'-':>11}" for m, _ in TABLE_METRICS]
        note = r.get("gt") or r.get("geometry_error")
        if r.get("mesh_error"):  # the model's field has no surface for this object (fog): nothing to score
            note = f"{note}; no predicted surface"
        lines.append(f"{r['key']:<{width}}  " + "  ".join(values) + f"  {note}")
    return lines


def no_surface_tile(size: int) -> np.ndarray:
    """A (size, size, 3) white tile with a grey frame and "no surface": a contact-sheet frame of an object whose
    density field has no surface yet (too few training steps)."""
    from PIL import ImageDraw

    tile = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(tile)
    draw.rectangle([2, 2, size - 3, size - 3], outline=(160, 160, 160))
    draw.text((size // 2, size // 2), "no surface", fill=(120, 120, 120), anchor="mm")
    return np.asarray(tile)


def contact_sheet(inputs: list[str], mesh_dir: str, path: str, frames: int = CONTACT_FRAMES) -> str:
    """A row per input image: the image (over white, at the turntable's size) | ``frames`` evenly spaced frames of
    the turntable ``lift3d predict`` rendered of its mesh (``<mesh_dir>/<image name>.gif``)."""
    import imageio.v3 as iio

    from lightning_modules.lrm import LRMModule
    from lightning_modules.networks.config import default_of

    size = default_of(LRMModule, "turntable_size")  # what lift3d predict renders the demo's turntables at
    rows = []
    for image in inputs:
        gif = os.path.join(mesh_dir, os.path.splitext(os.path.basename(image))[0] + ".gif")
        if os.path.exists(gif):
            spin = iio.imread(gif, index=None)[..., :3]  # (N, S, S, 3) uint8
            picks = spin[np.linspace(0, len(spin), frames, endpoint=False).astype(int)]
        else:  # no surface (lift3d predict warned): the row says so instead of a turntable
            picks = np.stack([no_surface_tile(size)] * frames)
        rgba = np.asarray(Image.open(image).convert("RGBA"), dtype=np.float32) / 255.0
        photo = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])  # straight alpha over white
        photo = (resize(photo, *picks.shape[1:3]).clip(0.0, 1.0) * 255.0).round().astype(np.uint8)
        rows.append(np.concatenate([photo, *picks], axis=1))
    return write_image(path, np.concatenate(rows, axis=0))


def evaluate_held_out(ckpt: str, out: str, resolution: int, samples: int, num_workers: int) -> None:
    """Held-out objects (a sphere and a box unlike the training renders' cameras: the eval24 rig) → the report."""
    from lightning_modules.launch.cli import main as lift3d

    t = time.time()
    held_out = os.path.join(out, "held_out")
    assets = os.path.join(held_out, "assets")
    os.makedirs(assets, exist_ok=True)
    synthetic.vertex_coloured_sphere(assets, name="held_out_sphere")
    synthetic.textured_box(assets, name="held_out_box")
    cfg = load_render_config(os.path.join(RENDER_DIR, "tiny.yaml"), resolution=resolution, samples=samples,
                             rig="eval24", rig_options={})
    summary = render_task(LocalDirSource(assets), os.path.join(held_out, "shards"), cfg, num_workers=num_workers,
                          progress=True)
    print(f"[demo] held-out objects (eval24 rig){took(t)}: {summary.line()}", flush=True)
    t = time.time()
    report = os.path.join(out, "evaluation")
    print(f"[demo] lift3d evaluate --ckpt {os.path.relpath(ckpt)} --shards {os.path.relpath(held_out)}/shards",
          flush=True)
    lift3d(["evaluate", "--ckpt", ckpt, "--shards", os.path.join(held_out, "shards"), "--gt-meshes", assets,
            "--out", report, "--model-config", os.path.join(MODEL_DIR, "lrm_tiny.yaml"),
            "--wandb-name", "demo-evaluate"])
    print(f"[demo] evaluation done{took(t)}: {os.path.relpath(report)}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/demo", help="output directory (shards, logs, preview.png)")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=DEFAULT_STEPS,
                   help="lrm_tiny training steps (0: stop after the preview)")
    args = p.parse_args(argv)
    t0 = time.time()
    asset_dir = os.path.join(args.out, "assets")
    os.makedirs(asset_dir, exist_ok=True)
    made = [synthetic.textured_box(asset_dir), synthetic.vertex_coloured_sphere(asset_dir),
            synthetic.multi_material(asset_dir), synthetic.truncated_glb(asset_dir)]
    print(f"[demo] generated {len(made)} assets in {asset_dir} (one deliberately truncated){took(t0)}", flush=True)
    t = time.time()

    cfg = load_render_config(os.path.join(RENDER_DIR, "tiny.yaml"), resolution=args.resolution,
                             samples=args.samples, rig_options={"num_views": 12})
    shard_dir = os.path.join(args.out, "shards")
    summary = render_task(LocalDirSource(asset_dir), shard_dir, cfg, num_workers=args.num_workers, progress=True)
    print(f"[demo] rendered{took(t)}: {summary.line()}", flush=True)
    for uid, reason in summary.failures:
        print(f"[demo]   recorded failure {uid}: {reason}", flush=True)

    t = time.time()
    dm = build_datamodule(os.path.join(DATA_DIR, "tiny.yaml"), shard_dir)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)  # what a training step receives
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            print(f"[demo] batch[{k!r}]: {tuple(v.shape)} {v.dtype}", flush=True)
    out_png = os.path.join(args.out, "preview.png")
    preview(batch, out_png)
    print(f"[demo] preview (input | views | depth){took(t)} → {out_png}", flush=True)
    if args.train_steps:
        ckpt, inputs, mesh_dir = train_and_predict(shard_dir, args.out, args.train_steps)
        records = score_training_objects(ckpt, shard_dir, args.out)
        sheet = contact_sheet(inputs, mesh_dir, os.path.join(args.out, "contact_sheet.png"))
        evaluate_held_out(ckpt, args.out, min(args.resolution, 64), args.samples, args.num_workers)
        print("[demo] the training objects' meshes against the geometry Blender rendered (lift3d evaluate's "
              "metrics, normalised units: Chamfer lower is better, F-score@0.1 = share of points within 0.1):",
              flush=True)
        for line in score_table(records):
            print(f"[demo]   {line}", flush=True)
        missing = [r["key"] for r in records if r.get("mesh_error")]
        if missing:
            print(f"[demo] no surface yet for {', '.join(missing)} after {args.train_steps} steps (the density field "
                  f"is still fog): train longer, e.g. --train-steps {max(DEFAULT_STEPS, 2 * args.train_steps)}",
                  flush=True)
        print(f"[demo] contact sheet (a row per object: input image | its mesh's turntable every "
              f"{360 // CONTACT_FRAMES}°) → {sheet}", flush=True)
    print(f"[demo] done{took(t0)}; shards in {shard_dir}, index {shard_dir}/index.json", flush=True)
    return 0


if __name__ == "__main__":
    from lightning_modules.launch.cli import quiet_third_party_deprecations

    quiet_third_party_deprecations()  # the command only, as for `lift3d` (tests call main and see every warning)
    raise SystemExit(main())
