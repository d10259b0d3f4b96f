"""The scoring side of ``lift3d evaluate``: one object's record (every metric, against its ground truth) and the
strip of renders the report shows.

* **Appearance**: the held-out views the model renders against the stored views composited over the same background:
  PSNR, SSIM and LPIPS unmasked and masked (the stored alpha), plus CLIP similarity when local CLIP weights are given
  (``lightning_modules.metrics.image``); the object's figure is the mean over its held-out views.
* **Geometry** (``lightning_modules.metrics.geometry``, the TripoSR protocol): the mesh (marching cubes of the
  model's field) is mapped from the model's canonical frame back to the shard's normalised world with the input
  camera; the ground truth is chosen per object by :func:`ground_truth`, and its source is the record's ``gt``:

  1. ``shard_mesh``: the sample's ``mesh.npz``, the geometry exactly as Blender rendered it (posed, skinned, with
     modifiers, in the normalised world; written by the render farm unless ``gt_mesh_faces: 0``);
  2. ``asset_file``: for samples without it, with ``--gt-meshes DIR``, the asset file found under DIR (recursively)
     through the source path meta.json records (``source_metadata.relpath`` / ``object_path``, then the uid, then
     the key), checked against meta.json's sha256 and normalised with its ``normalization``. trimesh does not pose
     skinned or animated assets, which is why the stored mesh wins;
  3. ``depth_points``: else the surface the shard's depth maps see (every view back-projected, thinned to one point
     per 1/128 voxel).

  10K surface points of each, a rotation search + ICP (``--align none`` turns it off; the record keeps the angle,
  ``align_rotation_deg``), Chamfer distance, F-score at 0.05 (One-2-3-45), 0.1, 0.2 and 0.5 (TripoSR), and volume IoU
  when both are watertight meshes. An object whose geometry cannot be scored (no predicted surface, no ground truth,
  a failed metric) keeps its appearance metrics and gets ``geometry_error``: the summary counts it as a failure.
"""

from __future__ import annotations

import hashlib
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
from render_farm.shards import decode_depth, read_gt_mesh, safe_output_path, sample_key

log = logging.getLogger(__name__)
GT_VOXEL = 1.0 / 128  # depth ground truth: one point per cell of this size (normalised units; the frame spans 2)


GT_SOURCES = ("shard_mesh", "asset_file", "depth_points")  # the record's ``gt``, in the order they are tried


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class AssetIndex:
    """The asset files under ``--gt-meshes DIR`` (recursively), found for a sample through what its meta.json
    records: the source path (``source_metadata.relpath`` of a local directory, ``object_path`` of Objaverse), then
    the uid, then the sample key as a file stem. A sample key is sanitised or hashed (``chair-1a2b3c4d`` for
    ``batch2/chair.glb``), so the recorded path is the reliable handle."""

    def __init__(self, directory: str):
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"--gt-meshes {directory!r} is not a directory; give the folder of the rendered "
                                    "assets (searched recursively)")
        self.directory = directory
        self.files: list[str] = []  # relative paths, "/"-separated
        for dirpath, _, names in os.walk(directory):
            for name in names:
                self.files.append(os.path.relpath(os.path.join(dirpath, name), directory).replace(os.sep, "/"))
        self.files.sort()

    def _by_path(self, rel: str) -> list[str]:
        rel = rel.replace(os.sep, "/").lstrip("/")
        if rel in self.files:
            return [rel]
        return [f for f in self.files if f.endswith("/" + rel)]

    def _by_stem(self, stem: str) -> list[str]:
        return [f for f in self.files if os.path.splitext(os.path.basename(f))[0] == stem]

    def find(self, key: str, meta: dict) -> tuple[Optional[str], str]:
        """(absolute path, how it was matched) or (None, why nothing matched)."""
        recorded = meta.get("source_metadata") or {}
        tries = []
        for name in ("relpath", "object_path"):
            if isinstance(recorded.get(name), str) and recorded[name]:
                tries.append((f"source_metadata.{name} {recorded[name]!r}", self._by_path(recorded[name])))
                tries.append((f"file name of {recorded[name]!r}", self._by_path(os.path.basename(recorded[name]))))
        for label, stem in (("uid", meta.get("uid")), ("key", key)):
            if isinstance(stem, str) and stem:
                tries.append((f"{label} {stem!r}", self._by_stem(stem)))
        problems = []
        for how, found in tries:
            found = [f for f in found if os.path.splitext(f)[1].lower() in LOADABLE_MESH_FORMATS] or found
            if not found:
                continue
            if len(found) > 1:
                problems.append(f"{how} matches {len(found)} files ({', '.join(found[:3])})")
                continue
            path = os.path.join(self.directory, found[0])
            if os.path.splitext(path)[1].lower() not in LOADABLE_MESH_FORMATS:
                problems.append(f"{found[0]} ({how}) cannot be read by trimesh: convert it to GLB")
                continue
            if isinstance(meta.get("sha256"), str) and _sha256(path) != meta["sha256"]:
                problems.append(f"{found[0]} ({how}) is not the file that was rendered (sha256 differs)")
                continue
            return path, how
        where = "; ".join(problems) if problems else \
            f"nothing matches {', '.join(how for how, _ in tries) or 'the sample'}"
        return None, f"no asset file in --gt-meshes {self.directory}: {where}"


def find_gt_mesh(directory: Optional[str], key: str, meta: Optional[dict] = None) -> Optional[str]:
    """The asset file of sample ``key`` under ``directory`` (recursive; :class:`AssetIndex`), or None."""
    if not directory:
        return None
    return AssetIndex(directory).find(key, meta or {})[0]


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


def ground_truth(sample, meta: dict, cams: dict, assets: Optional[AssetIndex] = None):
    """The object's ground truth, its source (:data:`GT_SOURCES`) and a note (the file, or why the fallback):
    the stored ``mesh.npz``; else, with ``assets`` (``--gt-meshes``), the asset file meta.json leads to; else the
    depth maps' points. (verts, faces) for a mesh, (N, 3) points for depth. ValueError when there is none (no
    depth in any view) or a file cannot be read."""
    key = sample_key(sample)
    stored = read_gt_mesh(sample)
    if stored is not None:
        return merged(*stored), "shard_mesh", "mesh.npz (the geometry as rendered)"
    note = "the sample has no mesh.npz and no --gt-meshes was given"
    if assets is not None:
        path, how = assets.find(key, meta)
        if path is not None:
            return merged(*load_mesh(path, meta.get("normalization"))), "asset_file", f"{path} (by {how})"
        note = f"the sample has no mesh.npz; {how}"
    return depth_points(sample, cams, float(meta["depth_scale"])), "depth_points", note


class ObjectEvaluator:
    def __init__(self, model: LRMReconstructor, args, out_dir: str, categories: dict[str, str]):
        from lightning_modules.metrics import CLIPSimilarity, LPIPSMetric

        self.model, self.args, self.out_dir, self.categories = model, args, out_dir, categories
        self.assets = AssetIndex(args.gt_meshes) if getattr(args, "gt_meshes", None) else None
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
                record["geometry_error"] = f"no predicted surface: {exc}"
                verts = None
        record["align"] = args.align
        try:
            gt, record["gt"], record["gt_note"] = ground_truth(sample, meta, cams, self.assets)
        except (ValueError, OSError) as exc:  # no depth in any view, an unreadable mesh file or member
            record["gt"], gt = None, None
            earlier = record.get("geometry_error")
            record["geometry_error"] = (f"{earlier}; " if earlier else "") + f"no ground truth: {exc}"
        if record["gt"] == "depth_points" and self.assets is not None:
            _rank_zero_warning(f"{key}: scored against depth points: {record['gt_note']}")
        if verts is not None:
            record["faces"] = int(len(faces))
            record["watertight"] = is_watertight(verts, faces)
        if verts is not None and gt is not None:
            try:
                record.update(mesh_metrics(verts, faces, gt, num_points=args.num_points,
                                           align_to_gt=args.align != "none" and args.align, seed=args.seed))
            except ValueError as exc:
                record["geometry_error"] = f"geometry metrics failed: {exc}"
        if verts is not None:
            if args.save_meshes:
                save_mesh(safe_output_path(os.path.join(self.out_dir, "meshes"), key, ".glb"), verts.astype(np.float32),
                          faces, colours)
        record["seconds"] = time.perf_counter() - start
        return record, strip


@rank_zero_only
def _rank_zero_warning(msg: str) -> None:
    log.warning(msg)
