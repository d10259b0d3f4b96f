"""``lift3d evaluate``: reconstruct held-out objects from their input view and score them as the papers do.

    lift3d evaluate --ckpt logs/lrm_paper/checkpoints/last.ckpt --shards data/shards/eval24 --out eval/lrm_paper

Per object of the shards (format v1, typically rendered with the ``eval24`` rig):

1. The input view (``--input-view``: the ``source`` role when the sample has one, else view 0, or an index) is
   prepared exactly as training prepares it (``datamodules.views``: resized to the encoder's input size, composited
   over ``--background``), and the model reconstructs the object from it.
2. **Appearance** at every other view (a held-out camera) and 3. **geometry** against the object's ground truth
   (the stored rendered mesh, else the asset file under ``--gt-meshes``, else the depth maps' surface), as
   :mod:`lightning_modules.evaluation.scoring` describes: one home for what is scored and how. Geometry metrics are
   summarised per ground-truth source, never averaged across sources; an object without ground truth or with a
   failed geometry metric is a failure (stage ``geometry``) with its reason.

Outputs in ``--out``: ``metrics.jsonl`` (one JSON object per object: key, category, every metric, seconds),
``failures.jsonl`` (objects that could not be read or reconstructed, with the reason), ``summary.json`` and
``summary.md`` (mean / median / std overall and per category, objects/min), ``report.md`` and ``report.html``
(the summary, a row per object with its input | renders | ground truth | depth strip, a histogram PNG per metric,
failures), ``renders/<key>.png``, ``meshes/<key>.glb`` with ``--save-meshes``, and a W&B run (a ``wandb.Table``
with one row per object, its strip as an image, and the summary; online or offline by the rule ``lift3d fit``
follows: offline without an API key in WANDB_API_KEY or ~/.netrc, with the sync command printed).

Distributed: ``--devices N`` (and ``--num-nodes``) run N ranks through Lightning Fabric (DDP; gloo on CPU, NCCL on
GPUs; torchrun/SLURM environments are picked up). Object i goes to rank i mod world size; each rank writes its
renders, and the per-object records are gathered once, at the end, to rank 0, which writes the files.

Categories: meta.json's ``category`` when present (MVImgNet), else ``--categories`` (a JSON object key → category,
or a CSV/TSV of key,category lines), else ``uncategorised``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from typing import Optional

import torch

from datamodules.shard_datamodule import DATA_ERRORS
from lightning_modules.evaluation.reconstruction import LRMReconstructor, list_objects, read_checkpoint_settings
from lightning_modules.evaluation.report import (
    _fmt,
    log_wandb,
    metric_failures,
    summarise,
    summary_table,
    write_reports,
)
from lightning_modules.evaluation.scoring import ObjectEvaluator
from lightning_modules.launch import tracking
from render_farm.shards import safe_output_path

log = logging.getLogger(__name__)


def read_categories(path: Optional[str]) -> dict[str, str]:
    """key → category from a JSON object or a CSV/TSV file of ``key,category`` lines (a header line is allowed)."""
    if not path:
        return {}
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--categories {path!r} does not exist: give a JSON object {{key: category}} or a "
                                "CSV of key,category lines")
    if path.endswith(".json"):
        with open(path) as f:
            doc = json.load(f)
        if not isinstance(doc, dict):
            raise ValueError(f"--categories {path!r}: expected a JSON object key → category, got "
                             f"{type(doc).__name__}")
        return {str(k): str(v) for k, v in doc.items()}
    with open(path, newline="") as f:
        dialect = "excel-tab" if path.endswith(".tsv") else "excel"
        rows = [r for r in csv.reader(f, dialect=dialect) if r and not r[0].startswith("#")]
    bad = [r for r in rows if len(r) < 2]
    if bad:
        raise ValueError(f"--categories {path!r}: every line must be key,category; first bad line: {bad[0]!r}")
    return {r[0].strip(): r[1].strip() for r in rows if r[0].strip() not in ("key", "uid")}


# --- the command ---------------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lift3d evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint of `lift3d fit` (LRM)")
    p.add_argument("--shards", required=True, nargs="+", help="held-out shards: files, globs, brace patterns or "
                   "directories (format v1, e.g. rendered with --rig eval24)")
    p.add_argument("--out", default="logs/evaluate", help="output directory")
    p.add_argument("--input-view", default="auto", help="'auto' (the source role, else view 0) or a view index")
    p.add_argument("--render-size", type=int, default=0, help="held-out views rendered and compared at this size "
                   "(0: the stored resolution)")
    p.add_argument("--background", default="white", choices=["white", "black"])
    p.add_argument("--gt-meshes", help="directory of the rendered asset files (.glb|gltf|obj|ply|stl|off, searched "
                   "recursively, matched through meta.json's source path, then uid, then key): the ground truth of "
                   "samples without a stored mesh.npz; without it such samples are scored against their depth points")
    p.add_argument("--categories", help="JSON {key: category} or CSV key,category (meta.json's category wins)")
    p.add_argument("--num-points", type=int, default=10_000, help="surface points per shape")
    p.add_argument("--align", default="yaw", choices=["yaw", "cube", "none"],
                   help="rotation search before ICP (none: compare in place)")
    p.add_argument("--model-config", help="the model YAML the checkpoint was trained with (configs/model/...): its "
                   "mesh_resolution and mesh_level are used (they are run-time settings, not in the checkpoint)")
    p.add_argument("--mesh-resolution", type=int, help="marching-cubes grid (default: --model-config's, else 256)")
    p.add_argument("--mesh-level", help="density level of the surface, or 'auto' (where rays from outside "
                   "turn half opaque); default: --model-config's, else 10 (the paper config's)")
    p.add_argument("--lpips-weights", help="torchvision vgg16-397923af.pth for LPIPS (default: the model's "
                   "lpips_weights when that file exists; else LPIPS is skipped)")
    p.add_argument("--clip-weights", help="directory of a transformers CLIPModel (save_pretrained) for CLIP "
                   "similarity; skipped without it")
    p.add_argument("--report-views", type=int, default=4, help="held-out views shown per object in the report")
    p.add_argument("--save-meshes", action="store_true", help="also write meshes/<key>.glb (normalised world)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N objects (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="1", help="ranks per node (an int, or 'auto')")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--wandb-project", default="lift3d")
    p.add_argument("--wandb-name", help="W&B run name (default: evaluate-<checkpoint stem>)")
    p.add_argument("--wandb-mode", choices=["online", "offline", "disabled"],
                   help="default: WANDB_MODE when set, else online with a W&B API key (WANDB_API_KEY or `wandb "
                   "login`'s ~/.netrc entry), else offline: the rule of `lift3d fit`")
    return p


def _evaluate(fabric, args) -> Optional[dict]:
    rank, world = fabric.global_rank, fabric.world_size
    out_dir = os.path.abspath(args.out)
    os.makedirs(os.path.join(out_dir, "renders"), exist_ok=True)
    categories = read_categories(args.categories)
    objects, damage = list_objects(args.shards)
    if args.limit:
        objects = objects[:args.limit]
    model = LRMReconstructor(args.ckpt, fabric.device, args.mesh_resolution, args.mesh_level, args.model_config)
    evaluator = ObjectEvaluator(model, args, out_dir, categories)
    from PIL import Image

    start = time.perf_counter()
    records, failures = [], []
    mine = objects[rank::world]  # samples found by the one scan of the shards
    for sample in mine:
        try:
            record, strip = evaluator(sample)
            render = safe_output_path(os.path.join(out_dir, "renders"), sample.key, ".png")
        except DATA_ERRORS as exc:  # incl. CorruptSampleError: unusable cameras, a key that is not the format's
            failures.append({"key": sample.key, "shard": sample.url, "stage": "evaluate",
                             "reason": f"{type(exc).__name__}: {exc}"})
            log.warning("evaluate: %s (%s) skipped: %s", sample.key, sample.url, exc)
            continue
        record["shard"] = sample.url
        Image.fromarray(strip).save(render)
        records.append(record)
        if rank == 0 or world == 1:
            print(f"[evaluate] {len(records)}/{len(mine)} {sample.key}: " +
                  ", ".join(f"{m} {record[m]:.4g}" for m in ("psnr", "chamfer", "fscore@0.1")
                            if isinstance(record.get(m), float)), flush=True)
    if world > 1:  # the one gather of the run
        gathered: list = [None] * world  # each rank's (records, failures)
        torch.distributed.all_gather_object(gathered, (records, failures))
        records = [r for part in gathered for r in part[0]]
        failures = [f for part in gathered for f in part[1]]
    seconds = time.perf_counter() - start
    if rank != 0:
        return None
    records.sort(key=lambda r: r["key"])
    failures = damage + failures + metric_failures(records)
    summary = summarise(records, failures, seconds)
    settings = {"ckpt": os.path.abspath(args.ckpt), "shards": " ".join(args.shards), "world_size": world,
                "input_view": args.input_view,
                "gt": "the stored mesh.npz, else " + (f"the asset file under {args.gt_meshes}, else "
                                                      if args.gt_meshes else "") + "the depth points",
                "align": args.align, "num_points": args.num_points, "render_size": args.render_size,
                "background": args.background, "git_commit": tracking.git_state()["commit"],
                "command": " ".join(sys.argv)}
    write_reports(out_dir, records, failures, summary, settings)
    print(summary_table(summary), flush=True)
    print(f"[evaluate] {len(records)} objects, {len(failures)} failed, {seconds:.1f} s "
          f"({_fmt(summary['objects_per_min'])} objects/min) → {out_dir}/report.html", flush=True)
    if args.wandb_mode != "disabled":
        sync = log_wandb(out_dir, records, summary, settings, args)
        if sync:
            print(f"[evaluate] W&B run saved offline; upload it with: {sync}", flush=True)
    return summary


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line, checked, with its defaults resolved: the W&B run name, and the W&B mode by the one rule
    ``lift3d fit`` also follows (``lightning_modules.launch.tracking.wandb_mode``)."""
    args = parser().parse_args(argv)
    if args.input_view != "auto" and not args.input_view.isdigit():
        raise SystemExit(f"lift3d evaluate: --input-view {args.input_view!r}: expected 'auto' or a view index")
    if args.mesh_level not in (None, "auto"):
        try:
            float(args.mesh_level)
        except ValueError:
            raise SystemExit(f"lift3d evaluate: --mesh-level {args.mesh_level!r}: expected a number or 'auto'")
    args.wandb_name = args.wandb_name or f"evaluate-{os.path.splitext(os.path.basename(args.ckpt))[0]}"
    args.wandb_mode = args.wandb_mode or tracking.wandb_mode()[0]
    return args


def main(argv: Optional[list[str]] = None) -> Optional[dict]:
    from lightning.fabric import Fabric

    args = parse_args(argv)
    devices = args.devices if args.devices == "auto" else int(args.devices)
    many = args.num_nodes > 1 or devices == "auto" or devices > 1
    fabric = Fabric(accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes,
                    strategy="ddp" if many else "auto")
    try:  # the checkpoint (tensors only) and --model-config checked before Fabric starts any work
        read_checkpoint_settings(args.ckpt, args.model_config)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"lift3d evaluate: {exc}") from exc
    fabric.launch()
    try:
        return _evaluate(fabric, args)
    except (FileNotFoundError, ValueError) as exc:  # bad inputs: the message names the file and the fix
        raise SystemExit(f"lift3d evaluate: {exc}") from exc


if __name__ == "__main__":
    main()
