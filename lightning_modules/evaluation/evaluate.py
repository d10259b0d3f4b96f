"""``lift3d evaluate``: reconstruct held-out objects from their input view and score them as the papers do.

    lift3d evaluate --ckpt logs/lrm_paper/checkpoints/last.ckpt --shards data/shards/eval24 --out eval/lrm_paper

Per object of the shards (format v1, typically rendered with the ``eval24`` rig):

1. The input view (``--input-view``: the ``source`` role when the sample has one, else view 0, or an index) is
   prepared exactly as training prepares it (``datamodules.views``: resized to the encoder's input size, composited
   over ``--background``), and the model reconstructs the object from it.
2. **Appearance**: every other view is a held-out camera. The model renders it (no ray jitter, EMA weights when the
   checkpoint has them) and PSNR, SSIM and LPIPS against the stored view composited over the same background are
   computed unmasked and masked (the stored alpha), plus CLIP similarity when local CLIP weights are given
   (``lightning_modules.metrics.image``); the object's figure is the mean over its held-out views.
3. **Geometry** (``lightning_modules.metrics.geometry``, the TripoSR protocol): the mesh (marching cubes of the
   model's field) is mapped from the model's canonical frame back to the shard's normalised world with the input
   camera; the ground truth is the asset's mesh from ``--gt-meshes`` (``<key>.glb|gltf|obj|ply|stl|off``,
   normalised with the sample's meta.json) or, without it, the surface the shard's depth maps see (every view
   back-projected, thinned to one point per 1/256 voxel). 10K surface points of each, a rotation search + ICP
   (``--align none`` turns it off), Chamfer distance, F-score at 0.05 (One-2-3-45), 0.1, 0.2 and 0.5 (TripoSR), and
   volume IoU when both are watertight meshes.

Outputs in ``--out``: ``metrics.jsonl`` (one JSON object per object: key, category, every metric, seconds),
``failures.jsonl`` (objects that could not be read or reconstructed, with the reason), ``summary.json`` and
``summary.md`` (mean / median / std overall and per category, objects/min), ``report.md`` and ``report.html``
(the summary, a row per object with its input | renders | ground truth | depth strip, a histogram PNG per metric,
failures), ``renders/<key>.png``, ``meshes/<key>.glb`` with ``--save-meshes``, and a W&B run (a ``wandb.Table``
with one row per object, its strip as an image, and the summary; offline when no API key is set, with the sync
command printed).

Distributed: ``--devices N`` (and ``--num-nodes``) run N ranks through Lightning Fabric (DDP; gloo on CPU, NCCL on
GPUs; torchrun/SLURM environments are picked up). Object i goes to rank i mod world size; each rank writes its
renders, and the per-object records are gathered once, at the end, to rank 0, which writes the files.

Categories: meta.json's ``category`` when present (MVImgNet), else ``--categories`` (a JSON object key → category,
or a CSV/TSV of key,category lines), else ``uncategorised``.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import math
import os
import subprocess
import sys
import time
from typing import Optional

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from datamodules.decode import read_cameras, read_meta, sample_key, view_roles
from datamodules.shard_datamodule import DATA_ERRORS, resolve_shards
from datamodules.tar_index import LazySample, TarScanError, scan_samples
from datamodules.views import ViewSampler, collate, finalize
from geometry.cameras import backproject_depth
from geometry.mesh import LOADABLE_MESH_FORMATS, load_mesh, save_mesh
from lightning_modules.callbacks import image_grid

log = logging.getLogger(__name__)
GT_VOXEL = 1.0 / 128  # depth ground truth: one point per cell of this size (normalised units; the frame spans 2)


# --- the model -----------------------------------------------------------------------------------------------------
class LRMReconstructor:
    """An LRM checkpoint as the evaluation needs it: reconstruct from an input view, render cameras, extract a mesh
    in the sample's world. Training-only parts are not re-created from files: the encoder is built without fetching
    pretrained weights and the LPIPS backbone without its file (both are restored from the checkpoint's state)."""

    def __init__(self, ckpt: str, device: torch.device, mesh_resolution: Optional[int] = None,
                 mesh_level: Optional[str] = None, model_config: Optional[str] = None):
        from lightning_modules.lrm import LRMModule

        if not os.path.isfile(ckpt):
            raise FileNotFoundError(f"checkpoint {ckpt!r} does not exist: point --ckpt at a Lightning checkpoint of "
                                    "`lift3d fit` (e.g. logs/<run>/checkpoints/last.ckpt)")
        # hparams only: mmap leaves the weights on disk (they are read once, by load_from_checkpoint)
        hparams = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True).get("hyper_parameters")
        if hparams is None:
            raise ValueError(f"{ckpt!r} holds no hyper_parameters: not a checkpoint written by `lift3d fit`")
        encoder = dict(hparams.get("encoder") or {}, pretrained=False, checkpoint_path=None)
        self.module = LRMModule.load_from_checkpoint(ckpt, map_location="cpu", encoder=encoder,
                                                     lpips_pretrained=False, lpips_weights=None)
        self.module.to(device).eval()
        # meshing settings are run-time choices, not in the checkpoint: the model YAML's, then the command line's
        if model_config:
            import yaml

            if not os.path.isfile(model_config):
                raise FileNotFoundError(f"--model-config {model_config!r} does not exist: give the model YAML the "
                                        "checkpoint was trained with (e.g. configs/model/lrm_small.yaml)")
            with open(model_config) as f:
                init = (yaml.safe_load(f) or {}).get("init_args", {})
            self.module.mesh_resolution = init.get("mesh_resolution", self.module.mesh_resolution)
            self.module.mesh_level = init.get("mesh_level", self.module.mesh_level)
        if mesh_resolution:
            self.module.mesh_resolution = mesh_resolution
        if mesh_level is not None:
            self.module.mesh_level = None if mesh_level == "auto" else float(mesh_level)
        self.device = device
        self.input_size = int(self.module.net.encoder.img_size)

    def weights(self):
        return self.module.eval_weights()

    @torch.no_grad()
    def render_views(self, batch: dict) -> tuple[dict, torch.Tensor]:
        """Renders of the batch's target cameras (B = 1) and the object's planes."""
        out, planes, _ = self.module.forward_views(batch, stratified=False)
        return out, planes

    @torch.no_grad()
    def mesh(self, planes: torch.Tensor, source_c2w: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vertices in the sample's normalised world, faces, vertex colours; closed where the density reaches the
        edge of the model's volume, so a mesh is watertight (volume IoU) unless marching cubes leaves it open."""
        verts, faces, colours = self.module.extract_mesh(planes, closed=True)
        return self.module.to_world(verts, source_c2w), faces, colours


# --- inputs --------------------------------------------------------------------------------------------------------
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


def list_objects(shards) -> tuple[list[LazySample], list[dict]]:
    """Every readable sample of the shards, in order (each reads its members on access, so holding them all costs
    only their offsets), and the shard damage found on the way."""
    urls, _ = resolve_shards(shards)
    remote = [u for u in urls if "://" in u or u.startswith("pipe:")]
    if remote:
        raise ValueError(f"evaluation reads local shards (random access); {remote[0]!r} is remote: copy the shards "
                         "to a local or shared filesystem first")
    objects, damage = [], []
    for url in urls:
        try:
            objects += list(scan_samples(url))
        except TarScanError as exc:  # the intact samples before the damage were kept
            damage.append({"key": exc.dropped or exc.key, "shard": url, "stage": "read", "reason": exc.reason})
    return objects, damage


def find_gt_mesh(directory: Optional[str], key: str) -> Optional[str]:
    if not directory:
        return None
    for ext in LOADABLE_MESH_FORMATS:
        path = os.path.join(directory, key + ext)
        if os.path.isfile(path):
            return path
    return None


def merged(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mesh with vertices at the same position merged: asset files split vertices along UV seams and normals,
    which would make a closed surface read as open (no volume IoU)."""
    import trimesh

    mesh = trimesh.Trimesh(verts, faces, process=False)
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def depth_points(sample, cams: dict, depth_scale: float, voxel: float = GT_VOXEL) -> np.ndarray:
    """The surface the views' depth maps see: every view back-projected to the world, one point per voxel."""
    from datamodules.decode import decode_depth

    pts = [backproject_depth(decode_depth(sample, i, depth_scale, cams["hw"][i]), cams["K"][i].astype(np.float64),
                             cams["c2w"][i].astype(np.float64)) for i in range(len(cams["c2w"]))]
    pts = np.concatenate(pts)
    if len(pts) == 0:
        raise ValueError("no depth in any view: the object is not visible")
    _, first = np.unique(np.floor(pts / voxel).astype(np.int64), axis=0, return_index=True)
    return pts[np.sort(first)]


# --- one object ----------------------------------------------------------------------------------------------------
def held_out_batch(sample, input_view: str, input_size: int, render_size: int, background: str, device
                   ) -> tuple[dict, dict, dict, int]:
    """One object as the training code prepares it (``datamodules.views``, batch of 1): the input view (``auto``:
    the ``source`` role, else view 0; or an index) and every other view as a target, in view order. Returns the
    batch on ``device``, meta.json, the cameras and the input view's index."""
    key = sample_key(sample)
    meta = read_meta(sample)
    cams = read_cameras(sample, meta.get("num_views"))
    roles = view_roles(meta, len(cams["c2w"]), key)
    inp = (roles.index("source") if "source" in roles else 0) if input_view == "auto" else int(input_view)
    if not 0 <= inp < len(roles) or len(roles) < 2:
        raise ValueError(f"input view {inp} with {len(roles)} views: need the input plus at least one held-out view")
    sampler = ViewSampler(num_target_views=len(roles) - 1, input_view=inp, input_size=input_size,
                          target_size=render_size, background=background)
    raw = sampler(sample, np.random.default_rng(0))
    order = torch.argsort(raw["target_views"])  # held-out views in index order
    batch = finalize(collate([raw]))
    for k in ("target_views", "target_images", "target_masks", "target_depths", "target_c2w", "target_K"):
        batch[k] = batch[k][:, order]
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}, meta, cams, inp


class ObjectEvaluator:
    def __init__(self, model: LRMReconstructor, args, out_dir: str, categories: dict[str, str]):
        from lightning_modules.metrics import CLIPSimilarity, LPIPSMetric

        self.model, self.args, self.out_dir, self.categories = model, args, out_dir, categories
        lpips_weights = args.lpips_weights or model.module.hparams.get("lpips_weights")
        if lpips_weights and os.path.isfile(lpips_weights):
            self.lpips = LPIPSMetric(lpips_weights).to(model.device)
        else:
            self.lpips = None
            _rank_zero_warning("LPIPS skipped: no local VGG-16 weights (set --lpips-weights to torchvision's "
                               "vgg16-397923af.pth)")
        self.clip = CLIPSimilarity.from_path(args.clip_weights)
        if self.clip is not None:
            self.clip.model.to(model.device)

    def __call__(self, sample) -> tuple[dict, np.ndarray]:
        from lightning_modules.metrics import image_metrics, is_watertight, mesh_metrics

        start = time.perf_counter()
        key, args = sample_key(sample), self.args
        batch, meta, cams, inp = held_out_batch(sample, args.input_view, self.model.input_size, args.render_size,
                                                args.background, self.model.device)
        record: dict = {"key": key, "category": meta.get("category") or self.categories.get(key, "uncategorised"),
                        "input_view": inp, "held_out_views": len(cams["c2w"]) - 1}
        with self.model.weights():
            out, planes = self.model.render_views(batch)
            pred, target, mask = out["images"][0].float().clamp(0, 1), batch["target_images"][0], \
                batch["target_masks"][0]
            for name, value in image_metrics(pred, target, mask, self.lpips, self.clip).items():
                value = torch.nanmean(value.float())  # a view with an empty mask has no masked value
                record[name] = float(value) if torch.isfinite(value) else None
            picks = np.unique(np.linspace(0, pred.shape[0] - 1, min(args.report_views, pred.shape[0])).round())
            picks = torch.as_tensor(picks.astype(np.int64), device=pred.device)
            strip = image_grid({"input_image": batch["input_image"], "target_images": batch["target_images"][:, picks]},
                               {"images": out["images"][:, picks], "depth": out["depth"][:, picks]}, max_samples=1)
            try:
                verts, faces, colours = self.model.mesh(planes, batch["input_c2w"][0])
            except ValueError as exc:  # an empty or saturated field: no surface to score
                record["mesh_error"] = str(exc)
                verts = None
        if verts is not None:
            record["faces"] = int(len(faces))
            record["watertight"] = is_watertight(verts, faces)
            gt_path = find_gt_mesh(args.gt_meshes, key)
            if gt_path:
                gt = merged(*load_mesh(gt_path, meta.get("normalization")))
                record["gt"] = "mesh"
            else:
                if args.gt_meshes:
                    _rank_zero_warning(f"{key}: no ground-truth mesh {key}.* in {args.gt_meshes}; using depth points")
                gt = depth_points(sample, cams, float(meta["depth_scale"]))
                record["gt"] = "depth"
            record.update(mesh_metrics(verts, faces, gt, num_points=args.num_points, align_to_gt=args.align != "none"
                                       and args.align, seed=args.seed))
            if args.save_meshes:
                save_mesh(os.path.join(self.out_dir, "meshes", f"{key}.glb"), verts.astype(np.float32), faces,
                          colours)
        record["seconds"] = time.perf_counter() - start
        return record, strip


# --- summaries and reports -----------------------------------------------------------------------------------------
METRIC_ORDER = ("psnr", "ssim", "lpips", "psnr_masked", "ssim_masked", "lpips_masked", "clip", "chamfer",
                "fscore@0.05", "fscore@0.1", "fscore@0.2", "fscore@0.5", "volume_iou")
LOWER_IS_BETTER = {"lpips", "lpips_masked", "chamfer"}


def metric_names(records: list[dict]) -> list[str]:
    present = {k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return [m for m in METRIC_ORDER if m in present]


def summarise(records: list[dict], failures: list[dict], seconds: float) -> dict:
    """Mean / median / std / count of every metric overall and per category (None values are left out)."""
    names = metric_names(records)

    def stats(rows):
        out = {}
        for m in names:
            vals = np.array([r[m] for r in rows if isinstance(r.get(m), (int, float))], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            if len(vals):
                out[m] = {"mean": float(vals.mean()), "median": float(np.median(vals)), "std": float(vals.std()),
                          "n": int(len(vals))}
        return out

    cats = sorted({r["category"] for r in records})
    return {"objects": len(records), "failures": len(failures), "seconds": seconds,
            "objects_per_min": 60.0 * len(records) / seconds if seconds > 0 else None,
            "overall": stats(records), "categories": {c: stats([r for r in records if r["category"] == c])
                                                      for c in cats},
            "objects_per_category": {c: sum(r["category"] == c for r in records) for c in cats}}


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_table(summary: dict) -> str:
    """Markdown: one row per category (and "all"), the mean of each metric."""
    names = [m for m in METRIC_ORDER if m in summary["overall"]]
    head = "| category | objects | " + " | ".join(f"{m} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in names)
    lines = [head + " |", "|" + "---|" * (len(names) + 2)]
    rows = [("all", summary["objects"], summary["overall"])] + \
        [(c, summary["objects_per_category"][c], s) for c, s in summary["categories"].items()]
    for name, n, stats in rows:
        lines.append(f"| {name} | {n} | " + " | ".join(_fmt(stats.get(m, {}).get("mean")) for m in names) + " |")
    return "\n".join(lines)


def histograms(records: list[dict], directory: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    os.makedirs(directory, exist_ok=True)
    for m in metric_names(records):
        vals = [r[m] for r in records if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
        if not vals:
            continue
        fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
        ax.hist(vals, bins=min(20, max(5, len(vals))))
        ax.set_xlabel(m + (" (lower is better)" if m in LOWER_IS_BETTER else " (higher is better)"))
        ax.set_ylabel("objects")
        ax.set_title(f"{m}: mean {np.mean(vals):.4g} over {len(vals)}")
        fig.tight_layout()
        path = os.path.join(directory, f"{m.replace('@', '_at_')}.png")
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_reports(out_dir: str, records: list[dict], failures: list[dict], summary: dict, settings: dict) -> None:
    with open(os.path.join(out_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    with open(os.path.join(out_dir, "failures.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in failures)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({**summary, "settings": settings}, f, indent=2)
    table = summary_table(summary)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(table + "\n")
    hists = [os.path.relpath(p, out_dir) for p in histograms(records, os.path.join(out_dir, "histograms"))]
    names = metric_names(records)
    rate = summary["objects_per_min"]
    md = [f"# Evaluation of `{settings['ckpt']}`", "",
          f"{summary['objects']} objects from `{settings['shards']}` ({summary['failures']} failed), "
          f"{summary['seconds']:.1f} s, {_fmt(rate)} objects/min, {settings['world_size']} rank(s). "
          f"Input view: {settings['input_view']}; ground truth: {settings['gt']}; alignment: {settings['align']}.",
          "", "## Summary (means)", "", table, "", "## Histograms", ""]
    md += [f"![{h}]({h})" for h in hists]
    md += ["", "## Objects", "", "Each strip: input | renders of held-out views | ground truth | rendered depth.", "",
           "| key | category | " + " | ".join(names) + " | strip |", "|" + "---|" * (len(names) + 3)]
    for r in records:
        md.append(f"| {r['key']} | {r['category']} | " + " | ".join(_fmt(r.get(m)) for m in names) +
                  f" | ![{r['key']}](renders/{r['key']}.png) |")
    if failures:
        md += ["", "## Failures", "", "| key | shard | stage | reason |", "|---|---|---|---|"]
        md += [f"| {f.get('key')} | {f.get('shard')} | {f.get('stage')} | {f.get('reason')} |" for f in failures]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(_html(md))


def _html(md_lines: list[str]) -> str:
    """The Markdown report as a standalone HTML page (tables, headings, images; nothing else is used)."""
    import html
    import re

    body, in_table = [], False
    for line in md_lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("-") for c in cells):
                continue
            cells = [re.sub(r"!\[([^]]*)\]\(([^)]*)\)", r'<img src="\2" alt="\1">', html.escape(c)) for c in cells]
            tag = "th" if not in_table else "td"
            body.append(("<table>" if not in_table else "") + "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells)
                        + "</tr>")
            in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            body.append(re.sub(r"!\[([^]]*)\]\(([^)]*)\)", r'<img src="\2" alt="\1">', html.escape(line)))
        elif line:
            body.append("<p>" + re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(line)) + "</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 6px;font-size:13px}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>lift3d evaluation</title><style>{style}" \
           f"</style></head><body>{''.join(body)}</body></html>\n"


def log_wandb(out_dir: str, records: list[dict], summary: dict, settings: dict, args) -> Optional[str]:
    """The per-object table (with strips), the summary and the histograms as a W&B run; returns the sync command
    when the run is offline."""
    import wandb

    mode = args.wandb_mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    run = wandb.init(project=args.wandb_project, name=args.wandb_name, group="evaluate", job_type="evaluate",
                     dir=out_dir, mode=mode, config=settings,
                     reinit="create_new")  # its own run, even in a process with another one open (make demo's fit)
    names = metric_names(records)
    table = wandb.Table(columns=["key", "category", *names, "strip"])
    for r in records:
        strip = os.path.join(out_dir, "renders", f"{r['key']}.png")
        table.add_data(r["key"], r["category"], *[r.get(m) for m in names],
                       wandb.Image(strip) if os.path.isfile(strip) else None)
    run.log({"evaluation/objects": table,
             **{f"evaluation/histogram/{os.path.basename(p)[:-4]}": wandb.Image(p)
                for p in sorted(glob.glob(os.path.join(out_dir, "histograms", "*.png")))}})
    for m, s in summary["overall"].items():
        run.summary[f"evaluation/{m}"] = s["mean"]
    run.summary["evaluation/objects_per_min"] = summary["objects_per_min"]
    directory = run.dir
    run.finish()
    if mode == "offline":
        return f"wandb sync {os.path.dirname(directory)}"
    return None


@rank_zero_only
def _rank_zero_warning(msg: str) -> None:
    log.warning(msg)


def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


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
    p.add_argument("--gt-meshes", help="directory of ground-truth meshes <key>.glb|gltf|obj|ply|stl|off (the "
                   "rendered assets); without it the depth maps' points are the ground truth")
    p.add_argument("--categories", help="JSON {key: category} or CSV key,category (meta.json's category wins)")
    p.add_argument("--num-points", type=int, default=10_000, help="surface points per shape")
    p.add_argument("--align", default="yaw", choices=["yaw", "cube", "none"],
                   help="rotation search before ICP (none: compare in place)")
    p.add_argument("--model-config", help="the model YAML the checkpoint was trained with (configs/model/...): its "
                   "mesh_resolution and mesh_level are used (they are run-time settings, not in the checkpoint)")
    p.add_argument("--mesh-resolution", type=int, help="marching-cubes grid (default: --model-config's, else 256)")
    p.add_argument("--mesh-level", help="density level of the surface, or 'auto' (halfway from the grid's minimum "
                   "to its 99.5th percentile); default: --model-config's, else 10 (the paper config's)")
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
                   help="default: online with WANDB_API_KEY set, else offline")
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
        except DATA_ERRORS as exc:
            failures.append({"key": sample.key, "shard": sample.url, "stage": "evaluate",
                             "reason": f"{type(exc).__name__}: {exc}"})
            log.warning("evaluate: %s (%s) skipped: %s", sample.key, sample.url, exc)
            continue
        record["shard"] = sample.url
        Image.fromarray(strip).save(os.path.join(out_dir, "renders", f"{sample.key}.png"))
        records.append(record)
        if rank == 0 or world == 1:
            print(f"[evaluate] {len(records)}/{len(mine)} {sample.key}: " +
                  ", ".join(f"{m} {record[m]:.4g}" for m in ("psnr", "chamfer", "fscore@0.1")
                            if isinstance(record.get(m), float)), flush=True)
    if world > 1:  # the one gather of the run
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, (records, failures))
        records = [r for part in gathered for r in part[0]]
        failures = [f for part in gathered for f in part[1]]
    seconds = time.perf_counter() - start
    if rank != 0:
        return None
    records.sort(key=lambda r: r["key"])
    failures = damage + failures
    summary = summarise(records, failures, seconds)
    settings = {"ckpt": os.path.abspath(args.ckpt), "shards": " ".join(args.shards), "world_size": world,
                "input_view": args.input_view, "gt": "meshes in " + args.gt_meshes if args.gt_meshes else "depth",
                "align": args.align, "num_points": args.num_points, "render_size": args.render_size,
                "background": args.background, "git_commit": _git_commit(), "command": " ".join(sys.argv)}
    write_reports(out_dir, records, failures, summary, settings)
    print(summary_table(summary), flush=True)
    print(f"[evaluate] {len(records)} objects, {len(failures)} failed, {seconds:.1f} s "
          f"({_fmt(summary['objects_per_min'])} objects/min) → {out_dir}/report.html", flush=True)
    if args.wandb_mode != "disabled":
        sync = log_wandb(out_dir, records, summary, settings, args)
        if sync:
            print(f"[evaluate] W&B run saved offline; upload it with: {sync}", flush=True)
    return summary


def main(argv: Optional[list[str]] = None) -> Optional[dict]:
    from lightning.fabric import Fabric

    args = parser().parse_args(argv)
    if args.input_view != "auto" and not args.input_view.isdigit():
        raise SystemExit(f"lift3d evaluate: --input-view {args.input_view!r}: expected 'auto' or a view index")
    if args.mesh_level not in (None, "auto"):
        try:
            float(args.mesh_level)
        except ValueError:
            raise SystemExit(f"lift3d evaluate: --mesh-level {args.mesh_level!r}: expected a number or 'auto'")
    args.wandb_name = args.wandb_name or f"evaluate-{os.path.splitext(os.path.basename(args.ckpt))[0]}"
    devices = args.devices if args.devices == "auto" else int(args.devices)
    many = args.num_nodes > 1 or devices == "auto" or devices > 1
    fabric = Fabric(accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes,
                    strategy="ddp" if many else "auto")
    fabric.launch()
    try:
        return _evaluate(fabric, args)
    except (FileNotFoundError, ValueError) as exc:  # bad inputs: the message names the file and the fix
        raise SystemExit(f"lift3d evaluate: {exc}") from exc


if __name__ == "__main__":
    main()
