"""The scoring side of ``lift3d evaluate``: one object's record (every metric, against its ground truth) and the
strip of renders the report shows.

* **Appearance**: the held-out views the model renders against the stored views composited over the same background:
  PSNR, SSIM and LPIPS unmasked and masked (the stored alpha), plus CLIP similarity when local CLIP weights are given
  (``lightning_modules.metrics.image``); the object's figure is the mean over its held-out views.
* **Geometry** (``lightning_modules.metrics.geometry``, the TripoSR protocol): the mesh (marching cubes of the
  model's field) is mapped from the model's canonical frame back to the shard's normalised world with the input
  camera; the ground truth is the asset's mesh from ``--gt-meshes`` (``<key>.glb|gltf|obj|ply|stl|off``,
  normalised with the sample's meta.json) or, without it, the surface the shard's depth maps see (every view
  back-projected, thinned to one point per 1/256 voxel). 10K surface points of each, a rotation search + ICP
  (``--align none`` turns it off), Chamfer distance, F-score at 0.05 (One-2-3-45), 0.1, 0.2 and 0.5 (TripoSR), and
  volume IoU when both are watertight meshes.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from geometry.cameras import backproject_depth
from geometry.mesh import LOADABLE_MESH_FORMATS, load_mesh, save_mesh
from lightning_modules.callbacks import image_grid
from lightning_modules.evaluation.reconstruction import LRMReconstructor, held_out_batch
from render_farm.shards import decode_depth, safe_output_path, sample_key

log = logging.getLogger(__name__)
GT_VOXEL = 1.0 / 128  # depth ground truth: one point per cell of this size (normalised units; the frame spans 2)


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
    pts = [backproject_depth(decode_depth(sample, i, depth_scale, cams["hw"][i]), cams["K"][i].astype(np.float64),
                             cams["c2w"][i].astype(np.float64)) for i in range(len(cams["c2w"]))]
    pts = np.concatenate(pts)
    if len(pts) == 0:
        raise ValueError("no depth in any view: the object is not visible")
    _, first = np.unique(np.floor(pts / voxel).astype(np.int64), axis=0, return_index=True)
    return pts[np.sort(first)]


class ObjectEvaluator:
    def __init__(self, model: LRMReconstructor, args, out_dir: str, categories: dict[str, str]):
        from lightning_modules.metrics import CLIPSimilarity, LPIPSMetric

        self.model, self.args, self.out_dir, self.categories = model, args, out_dir, categories
        lpips_weights = args.lpips_weights or model.module.hparams.get("lpips_weights")
        self.lpips: Optional[LPIPSMetric] = None
        if lpips_weights and os.path.isfile(lpips_weights):
            self.lpips = LPIPSMetric(lpips_weights).to(model.device)
        else:
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
                save_mesh(safe_output_path(os.path.join(self.out_dir, "meshes"), key, ".glb"), verts.astype(np.float32),
                          faces, colours)
        record["seconds"] = time.perf_counter() - start
        return record, strip


@rank_zero_only
def _rank_zero_warning(msg: str) -> None:
    log.warning(msg)
