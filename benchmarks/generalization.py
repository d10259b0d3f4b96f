"""Does a model trained with lift3d generalise to objects it has not seen? Held-out scores against two baselines.

    python -m benchmarks.generalization [--train-objects 64 --held-out 8 --zoo 7 --steps 800 --checkpoints 4]

1. **Training set**: ``--train-objects`` (K) procedural objects of ``--train-seed`` (``render_farm.procedural``,
   LRM-Zero's recipe) rendered by Blender with the ``lrm32`` rig (``--views`` views at ``--train-resolution``).
2. **Held-out set**, rendered with the ``eval24`` rig at ``--eval-resolution``: ``--held-out`` (M) procedural
   objects of another seed (``--held-out-seed``: no training object among them) plus the first ``--zoo`` objects of
   the generated asset zoo the tests use (``render_farm.synthetic.all_assets``: textured box, vertex-coloured sphere,
   box + cylinder, non-manifold fan + tetrahedron, a box as OBJ/PLY/STL) — shapes of another kind altogether.
3. **Training**: the tiny LRM (``configs/experiments/lrm_tiny.yaml``: 2-layer ViT at 64², 2-layer transformer,
   triplanes 3×16×16×16, input + 4 whole target views at 32², batch 2, AdamW 2e-3) for ``--steps`` steps through the
   real ``lift3d fit``; its checkpoints are written at step 0 (the untrained model: the same weights the run starts
   from) and at ``--checkpoints`` evenly spaced steps; the mask loss weighs ``--mask-weight`` (the demo's 1.0:
   the untrained field is a faint white fog that only the mask loss clears in a short run).
4. **Evaluation**: ``lift3d evaluate`` of every checkpoint on the held-out set (PSNR over the 23 held-out views,
   Chamfer and F-score@0.1 against the stored rendered mesh, the TripoSR protocol with yaw alignment).
5. **Baselines, same run**: the untrained model (the step-0 checkpoint, scored above) and a fixed sphere whose
   radius is the training objects' mean surface distance from the centre (every object is normalised into
   [-1, 1]³), scored by the same geometry metrics (``mesh_metrics``) and, for PSNR, rasterised with the input
   view's mean foreground colour at the held-out cameras.

Printed and written to ``--out``: ``generalization.json`` (settings, machine, stage times, the learning curve, the
baselines, and the figure that matters: held-out F-score@0.1 after training as a ratio to each baseline, overall and
for the procedural and zoo parts) and ``generalization.png`` (held-out F-score@0.1 and PSNR against steps, the sphere
as a line). Renders are kept and reused by a rerun with the same sizes (the farm resumes); training and evaluation
run again.

Time (the defaults; measured end to end 2026-12-05 beside a fresh-clone ``make test`` on a 2-core machine, load
average 2.7–4.1, renders reused from an earlier run): training 800 steps 26.5 min (~2 s a step under that load;
~0.6 s idle), 5 evaluations of 15 objects 10.6 min, the sphere 0.4 min: 37.7 min; rendering 64 × 12 + 15 × 24 views
at 64², 8 spp adds ~1–4 min. Idle, about 20 minutes. 800 steps because the held-out F-score peaked at 200–400 steps
in that run and fell by 800 (the tiny model fitting its 64 objects, or one run's noise: not told apart yet), so a
longer run did not look like it would buy generalisation; a larger model or training set is the next lever.
``generalization.json`` records each stage's wall and CPU seconds.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import time

import lightning as L
import numpy as np

from configs import EXPERIMENT_DIR, MODEL_DIR, RENDER_DIR
from lightning_modules.launch.demo import SUPERVISION as DEMO_SUPERVISION

FSCORE = "fscore@0.1"


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (the Blender workers) so far: what the
    time estimate for an idle machine is made from (wall time on a shared machine says little)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
FIGURES = ("psnr", "chamfer", FSCORE)


class CheckpointAtStart(L.Callback):
    """Writes ``<dirpath>/step=000000.ckpt`` before the first step: the untrained model of this very run."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0:
            trainer.save_checkpoint(os.path.join(self.dirpath, "step=000000.ckpt"))


# ------------------------------------------------------------------------------------------------------ rendering
def render(source, out: str, rig: str, resolution: int, samples: int, views: int | None, workers: int) -> dict:
    from render_farm.config import load_render_config
    from render_farm.farm import render_task

    cfg = load_render_config(os.path.join(RENDER_DIR, "tiny.yaml"), resolution=resolution, samples=samples, rig=rig,
                             rig_options={"num_views": views} if views else {})
    summary = render_task(source, out, cfg, num_workers=workers, progress=False)
    print(f"[generalization] {os.path.relpath(out)}: {summary.line()}", flush=True)
    if summary.failed:
        raise RuntimeError(f"{summary.failed} objects failed to render into {out}: {summary.failures[:3]}; see "
                           f"{out}/_state/task-00000.failures.jsonl")
    return {"objects": summary.ok + summary.already_done, "rendered_now": summary.ok, "seconds": summary.seconds}


def render_sets(args) -> dict:
    from render_farm import synthetic
    from render_farm.procedural import ProceduralSource
    from render_farm.sources import LocalDirSource

    if args.train_seed == args.held_out_seed:
        raise SystemExit(f"--held-out-seed {args.held_out_seed} is --train-seed: the held-out objects would be the "
                         f"training objects; pass another seed")
    out = {}
    train = os.path.join(args.out, "train")
    out["train"] = render(ProceduralSource(args.train_objects, args.train_seed, os.path.join(train, "_assets")),
                          train, "lrm32", args.train_resolution, args.samples, args.views, args.num_workers)
    held = os.path.join(args.out, "held_out")
    if args.held_out:
        out["held_out_procedural"] = render(
            ProceduralSource(args.held_out, args.held_out_seed, os.path.join(held, "procedural", "_assets")),
            os.path.join(held, "procedural"), "eval24", args.eval_resolution, args.samples, None, args.num_workers)
    if args.zoo:
        assets = os.path.join(held, "zoo_assets")
        os.makedirs(assets, exist_ok=True)
        for asset in synthetic.all_assets(os.path.join(args.out, "zoo_all"), include_broken=False)[:args.zoo]:
            shutil.copy(asset.path, assets)
        out["held_out_zoo"] = render(LocalDirSource(assets), os.path.join(held, "zoo"), "eval24",
                                     args.eval_resolution, args.samples, None, args.num_workers)
    return out


def held_out_dirs(args) -> dict[str, str]:
    held = os.path.join(args.out, "held_out")
    return {name: os.path.join(held, name) for name, n in (("procedural", args.held_out), ("zoo", args.zoo)) if n}


# ------------------------------------------------------------------------------------------------------ training
def train(args) -> tuple[list[tuple[int, str]], float]:
    """``lift3d fit`` of the tiny LRM on the training shards; (step, checkpoint) pairs from step 0, and seconds."""
    from lightning_modules.launch.cli import main as lift3d

    run = os.path.abspath(os.path.join(args.out, "run"))
    shutil.rmtree(run, ignore_errors=True)  # a fresh run every time: the curve starts at step 0
    ckpts = os.path.join(run, "checkpoints")
    shards = os.path.abspath(os.path.join(args.out, "train"))
    every = max(1, args.steps // args.checkpoints)
    t = time.time()
    lift3d(["fit", "--config", args.experiment, f"--data.init_args.train_shards={shards}",
            f"--data.init_args.val_shards={shards}", f"--data.init_args.shuffle_buffer={args.shuffle_buffer}",
            f"--seed_everything={args.seed}", f"--trainer.max_steps={args.steps}",
            f"--model.init_args.mask_weight={args.mask_weight}",
            "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}",
            "--trainer.logger.init_args.name=generalization",
            "--trainer.callbacks=" + json.dumps([
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": ckpts, "filename": "step={step:06d}", "auto_insert_metric_name": False,
                               "every_n_train_steps": every, "save_top_k": -1, "save_last": False,
                               "enable_version_counter": False}},
                {"class_path": "benchmarks.generalization.CheckpointAtStart", "init_args": {"dirpath": ckpts}},
                {"class_path": "lightning_modules.callbacks.ProgressPrinter",
                 "init_args": {"every_n_steps": max(1, args.steps // 10)}}])])
    seconds = time.time() - t
    found = sorted((int(os.path.basename(p)[len("step="):-len(".ckpt")]), p)
                   for p in glob.glob(os.path.join(ckpts, "step=*.ckpt")))
    if not found or found[0][0] != 0 or found[-1][0] != args.steps:
        raise RuntimeError(f"expected checkpoints from step 0 to {args.steps} in {ckpts}, found "
                           f"{[s for s, _ in found]}")
    return found, seconds


# ------------------------------------------------------------------------------------------------------ evaluation
def evaluate(args, step: int, ckpt: str) -> dict:
    """``lift3d evaluate`` of one checkpoint on the held-out shards; the per-object records with their group."""
    from lightning_modules.evaluation.cli import main as lift3d_evaluate

    out = os.path.join(args.out, "evaluation", f"step={step:06d}")
    dirs = held_out_dirs(args)
    t = time.time()
    lift3d_evaluate(["--ckpt", ckpt, "--shards", *dirs.values(), "--out", out, "--model-config",
                     os.path.join(MODEL_DIR, "lrm_tiny.yaml"), "--mesh-resolution", str(args.mesh_resolution),
                     "--wandb-mode", "disabled", "--accelerator", "cpu", "--seed", str(args.seed)])  # errors exit
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {"step": step, "seconds": time.time() - t, "records": records}


def group_of(key: str, args) -> str:
    from render_farm.procedural import asset_uid

    return "procedural" if key.startswith(asset_uid(args.held_out_seed, 0).rsplit("-", 1)[0] + "-") else "zoo"


def summarise(records: list[dict], args) -> dict:
    """Mean of each figure over the held-out objects, overall and per group; an object without a geometry score (no
    predicted surface) scores F-score 0 (counted in ``no_surface``), never left out."""
    out = {}
    for group in ("overall", "procedural", "zoo"):
        rows = [r for r in records if group == "overall" or group_of(r["key"], args) == group]
        if not rows:
            continue
        entry: dict = {"objects": len(rows), "no_surface": sum(r.get(FSCORE) is None for r in rows)}
        entry["psnr"] = float(np.mean([r["psnr"] for r in rows if r.get("psnr") is not None]))
        entry[FSCORE] = float(np.mean([r.get(FSCORE) or 0.0 for r in rows]))
        chamfers = [r["chamfer"] for r in rows if r.get("chamfer") is not None]
        entry["chamfer"] = float(np.mean(chamfers)) if chamfers else None  # over the objects with a surface
        out[group] = entry
    return out


# ------------------------------------------------------------------------------------------------------ the sphere
def sphere_radius(train_dir: str) -> float:
    """The training objects' mean distance of their surface from the centre (each mesh.npz, area-weighted)."""
    from geometry.mesh import sample_surface
    from render_farm.shards import read_gt_mesh, resolve_shards, scan_samples

    radii = []
    for url in resolve_shards(train_dir)[0]:
        for sample in scan_samples(url):
            mesh = read_gt_mesh(dict(sample))
            if mesh is None:
                raise ValueError(f"{url}: sample {sample.key} has no mesh.npz (rendered with gt_mesh_faces: 0?)")
            pts = sample_surface(mesh[0].astype(np.float64), mesh[1], 4096, seed=0)
            radii.append(float(np.linalg.norm(pts, axis=1).mean()))
    return float(np.mean(radii))


def sphere_baseline(args, radius: float) -> list[dict]:
    """Per held-out object: the fixed sphere's geometry metrics (``mesh_metrics``, as ``lift3d evaluate`` scores a
    mesh) and PSNR over the held-out views (the sphere rasterised in the input view's mean foreground colour)."""
    import torch
    import trimesh

    from geometry.raster import render_mesh
    from lightning_modules.evaluation.reconstruction import held_out_batch
    from lightning_modules.evaluation.scoring import ground_truth
    from lightning_modules.metrics import mesh_metrics, psnr
    from render_farm.shards import resolve_shards, sample_key, scan_samples

    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    verts, faces = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    records = []
    for directory in held_out_dirs(args).values():
        for url in resolve_shards(directory)[0]:
            for sample in scan_samples(url):
                batch, meta, cams, _ = held_out_batch(sample, "auto", 64, 0, "white", torch.device("cpu"))
                image, mask = batch["input_image"][0], batch["input_mask"][0, 0] > 0.5
                colour = image[:, mask].mean(1).numpy() if mask.any() else np.full(3, 0.5)
                preds = []
                for c2w, K, target in zip(batch["target_c2w"][0], batch["target_K"][0], batch["target_images"][0]):
                    h, w = target.shape[-2:]
                    rgb = render_mesh(verts, faces, np.tile(colour, (len(verts), 1)), c2w.numpy(), K.numpy(), h, w,
                                      shading="none")["rgb"]
                    preds.append(rgb.permute(2, 0, 1))
                record = {"key": sample_key(sample),
                          "psnr": float(psnr(torch.stack(preds).float(), batch["target_images"][0]).mean())}
                gt, record["gt"], _ = ground_truth(sample, meta, cams)
                record.update(mesh_metrics(verts, faces, gt, num_points=10_000, align_to_gt="yaw", seed=args.seed))
                records.append(record)
    return records


# ------------------------------------------------------------------------------------------------------ report
def plot(curve: list[dict], sphere: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c["step"] for c in curve]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], FSCORE, "held-out F-score@0.1 (higher is better)"),
                              (axes[1], "psnr", "held-out PSNR, dB (higher is better)")):
        for group, style in (("overall", "o-"), ("procedural", "s--"), ("zoo", "^:")):
            if group in curve[0]["scores"]:
                ax.plot(steps, [c["scores"][group][metric] for c in curve], style, label=f"model, {group}")
        ax.axhline(sphere["overall"][metric], color="grey", linestyle="-.", label="fixed sphere, overall")
        ax.set_xlabel("training step (0 = untrained)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def ratio(a, b):
    return float(a / b) if a is not None and b else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/benchmarks/generalization", help="renders, run, evaluations, results")
    p.add_argument("--train-objects", type=int, default=64, help="K: procedural training objects")
    p.add_argument("--held-out", type=int, default=8, help="M: procedural held-out objects (another seed)")
    p.add_argument("--zoo", type=int, default=7, help="held-out objects of the generated asset zoo (0-7)")
    p.add_argument("--steps", type=int, default=800, help="training steps (batch 2)")
    p.add_argument("--checkpoints", type=int, default=4, help="evaluated checkpoints after step 0, evenly spaced")
    p.add_argument("--train-resolution", type=int, default=64, help="lrm32 render resolution of the training set")
    p.add_argument("--eval-resolution", type=int, default=64, help="eval24 render resolution of the held-out set")
    p.add_argument("--views", type=int, default=12, help="lrm32 views per training object")
    p.add_argument("--samples", type=int, default=8, help="Cycles samples per pixel")
    p.add_argument("--num-workers", type=int, default=2, help="Blender worker processes")
    p.add_argument("--mesh-resolution", type=int, default=64, help="marching-cubes grid of the evaluation")
    p.add_argument("--shuffle-buffer", type=int, default=64)
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--held-out-seed", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="training and evaluation seed")
    p.add_argument("--experiment", default=os.path.join(EXPERIMENT_DIR, "lrm_tiny.yaml"))
    p.add_argument("--mask-weight", type=float, default=DEMO_SUPERVISION["mask_weight"],
                   help="the mask loss weight (the demo's: the only loss that clears the initial fog in a short "
                        "run; the measured run used it without the demo's depth and TV terms)")
    args = p.parse_args(argv)
    if not 0 <= args.zoo <= 7 or args.train_objects < 1 or args.steps < 1 or args.checkpoints < 1 \
            or args.held_out + args.zoo < 1:
        p.error("need --train-objects ≥ 1, --steps ≥ 1, --checkpoints ≥ 1, --zoo in 0..7 and a held-out object")
    os.makedirs(args.out, exist_ok=True)
    t0, c0 = time.time(), cpu_seconds()
    stages: dict = {"render": render_sets(args)}
    stages["render_seconds"], stages["render_cpu_seconds"] = time.time() - t0, cpu_seconds() - c0
    c = cpu_seconds()
    ckpts, stages["train_seconds"] = train(args)
    stages["train_cpu_seconds"] = cpu_seconds() - c
    curve = []
    t, c = time.time(), cpu_seconds()
    for step, ckpt in ckpts:
        result = evaluate(args, step, ckpt)
        curve.append({"step": step, "scores": summarise(result["records"], args), "seconds": result["seconds"]})
        print(f"[generalization] step {step}: {json.dumps(curve[-1]['scores']['overall'])}", flush=True)
    stages["evaluate_seconds"], stages["evaluate_cpu_seconds"] = time.time() - t, cpu_seconds() - c
    t, c = time.time(), cpu_seconds()
    radius = sphere_radius(os.path.join(args.out, "train"))
    sphere_records = sphere_baseline(args, radius)
    sphere = {"radius": radius, **summarise(sphere_records, args), "objects_scored": sphere_records}
    stages["sphere_seconds"], stages["sphere_cpu_seconds"] = time.time() - t, cpu_seconds() - c
    trained, untrained = curve[-1]["scores"], curve[0]["scores"]
    ratios = {group: {"fscore_vs_untrained": ratio(trained[group][FSCORE], untrained[group][FSCORE]),
                      "fscore_vs_sphere": ratio(trained[group][FSCORE], sphere[group][FSCORE])}
              for group in trained}
    png = os.path.join(args.out, "generalization.png")
    plot(curve, sphere, png)
    doc = {
        "benchmark": "generalization", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": len(os.sched_getaffinity(0))},
        "settings": {k: v for k, v in vars(args).items()}, "model": "lrm_tiny", "stages": stages,
        "total_seconds": time.time() - t0, "curve": curve,
        "baselines": {"untrained": untrained, "sphere": sphere},
        "trained": trained, "ratios": ratios, "png": png,
    }
    path = os.path.join(args.out, "generalization.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print("\n| held-out | objects | PSNR trained / untrained / sphere | Chamfer trained / untrained / sphere | "
          "F@0.1 trained / untrained / sphere | **F@0.1 ratio** vs untrained / vs sphere |")
    print("|---|---|---|---|---|---|")
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    times = lambda v: "— (baseline 0)" if v is None else f"{v:.2f}×"  # noqa: E731
    for group, r in ratios.items():
        a, b, s = trained[group], untrained[group], sphere[group]
        print(f"| {group} | {a['objects']} | {a['psnr']:.2f} / {b['psnr']:.2f} / {s['psnr']:.2f} | "
              f"{fmt(a['chamfer'])} / {fmt(b['chamfer'])} / {fmt(s['chamfer'])} | "
              f"{a[FSCORE]:.3f} / {b[FSCORE]:.3f} / {s[FSCORE]:.3f} | "
              f"**{times(r['fscore_vs_untrained'])}** / **{times(r['fscore_vs_sphere'])}** |")
    print(f"\n[generalization] {args.train_objects} training objects, {args.steps} steps; sphere radius {radius:.3f}; "
          f"{time.time() - t0:.0f}s in all; {path}, {png}", flush=True)
    return 0


if __name__ == "__main__":
    from lightning_modules.launch.cli import quiet_third_party_deprecations

    quiet_third_party_deprecations()
    raise SystemExit(main())
