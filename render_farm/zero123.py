"""The Zero123 prediction pass of One-2-3-45: render shards (``one2345`` rig) → shards with 32 predicted views.

For every object, Zero123 / Zero123-XL (``lightning_modules.networks.zero123``, weights from a local directory)
predicts each ground-truth view's 4 neighbours (±10° elevation/azimuth) from that view and the relative camera. The
new sample holds the object's 40 original views byte-for-byte plus the 32 predictions. Shards are read and written
through ``render_farm.shards`` (the format's one home).

Pass (one task of ``lift3d-render zero123``)::

    input shards sorted[task::count] ─ per object: meta.json (view_roles, neighbours_of), cameras.npz, PNGs
      ─ gt g = 0..7, its neighbours n in neighbours_of[g] order: cond = rgba[g] over white resized to S²,
        camera = zero123_relative_camera(c2w[g], c2w[n]), seed = view_seed(seed, key, n)
      ─ ShardWriter(out, task): original members byte-for-byte, views 40..71 = predictions (RGBA with alpha 255,
        depth all 0), cameras of the neighbours, meta.json + predictions_of / zero123 / predicted_views

Conventions: Zero123's relative camera comes from ``geometry.cameras.zero123_relative_camera`` (camera centres in
spherical coordinates about the origin, +Z up). Batches never span objects and every pair has its own generator,
so a resumed run writes the same bytes as an uninterrupted one. Defaults follow Zero123: guidance 3.0, DDIM
50 steps, η = 1.0 (Zero123's and One-2-3-45's samplers).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field

import cv2
import diffusers
import numpy as np

from geometry.cameras import zero123_relative_camera
from geometry.image import resize
from lightning_modules.networks.zero123 import (
    WeightsError,
    Zero123Pipeline,
    check_weights_dir,
    resolve_device,
    zero123_condition,
)
from render_farm.shards import (
    CAMERAS,
    MAX_VIEWS,
    META,
    CorruptSampleError,
    ShardWriter,
    TarScanError,
    check_views,
    decode_rgba,
    encode_cameras,
    encode_png,
    read_header,
    resolve_shards,
    sample_key,
    scan_samples,
    view_member,
)
from render_farm.tasks import report_task, resolve_task, round_robin

PRED_ROLE = "zero123_pred"
NEIGHBOUR_ROLE = "gt_neighbor"


class SampleError(Exception):
    """An input sample that cannot be predicted (recorded in the failure manifest; the run goes on)."""


def view_seed(seed: int, key: str, view: int) -> int:
    """The generator seed of one predicted view: a function of (run seed, object key, view index) only."""
    digest = hashlib.sha256(f"zero123:{seed}:{key}:{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ------------------------------------------------------------------------------------------------ reading shards
def list_shards(patterns: list[str]) -> list[str]:
    """The local shards ``patterns`` name (files, globs, brace patterns, directories: ``render_farm.shards``'s
    rules), once each, as sorted absolute paths. Raises ``FileNotFoundError`` naming a pattern that matches nothing
    or a shard that is not a local file."""
    urls, _ = resolve_shards(list(patterns))
    for url in urls:
        if not os.path.isfile(url):
            raise FileNotFoundError(f"{url!r} is not a local file: the Zero123 pass reads local .tar shards")
    return sorted({os.path.abspath(u) for u in urls})


def _read_shard(shard: str, fail):
    """The samples of a shard; damage (after the samples before it) goes to ``fail`` as ``shard:<name>``."""
    try:
        yield from scan_samples(shard)
    except (TarScanError, OSError) as exc:
        fail(f"shard:{os.path.basename(shard)}", f"unreadable shard {shard}: {type(exc).__name__}: {exc}",
             traceback.format_exc(), shard=shard)


@contextlib.contextmanager
def _unreadable():
    """The format reader's :class:`CorruptSampleError` as this pass's :class:`SampleError` (key, member, reason)."""
    try:
        yield
    except CorruptSampleError as exc:
        raise SampleError(f"{exc.key}.{exc.member} is unreadable: {exc.reason}") from exc


def _parse_object(sample) -> tuple[dict, dict, list[str], list[tuple[int, list[int]]]]:
    """(meta, cameras, view roles, [(gt view, its neighbour views)]) of a one2345 sample; :class:`SampleError`
    otherwise (the format's checks are ``render_farm.shards.read_header``'s and ``check_views``')."""
    meta, cams, roles = read_header(sample)
    if "predictions_of" in meta:
        raise SampleError("the sample already holds Zero123 predictions (an output of this pass, not a render shard)")
    if "neighbours_of" not in meta:
        rig = meta["render"].get("rig") if isinstance(meta.get("render"), dict) else None
        raise SampleError(f"meta.json has no neighbours_of (rig {rig!r}); the Zero123 pass needs shards rendered "
                          f"with --rig one2345")
    n = len(roles)
    pairs = []
    try:
        items = sorted(meta["neighbours_of"].items(), key=lambda kv: int(kv[0]))
    except (AttributeError, TypeError, ValueError) as exc:
        raise SampleError(f"neighbours_of must map gt view indices to lists of views: {exc}") from exc
    for g_str, nbrs in items:
        g = int(g_str)
        if not 0 <= g < n or roles[g] != "gt" or not isinstance(nbrs, list) \
                or not all(isinstance(v, int) and 0 <= v < n for v in nbrs):
            raise SampleError(f"neighbours_of[{g_str}] = {nbrs} does not name a gt view and views within 0..{n - 1}")
        pairs.append((g, list(nbrs)))
    check_views(sample, range(n), n)
    strays = sorted(k for k in sample if k[:3].isdigit() and int(k[:3]) >= n)
    if strays:
        raise SampleError(f"members beyond the {n} views of meta.json: {', '.join(strays[:4])}")
    if n + sum(len(v) for _, v in pairs) > MAX_VIEWS:
        raise SampleError(f"too many views for format v1 (at most {MAX_VIEWS})")
    return meta, cams, roles, pairs


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """``img`` at h × w by lift3d's one resampling rule (``geometry.image.resize``: area when shrinking, bilinear
    when growing), untouched at its size."""
    return resize(img, h, w)


def condition_image(rgba: np.ndarray, size: int) -> np.ndarray:
    """An RGBA view composited over white and resized to size² (float RGB in [0, 1])."""
    rgb, alpha = rgba[..., :3].astype(np.float32) / 255.0, rgba[..., 3:].astype(np.float32) / 255.0
    return np.clip(_resize(rgb * alpha + (1.0 - alpha), size, size), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------- the pass
@dataclass
class PassSettings:
    weights: str
    steps: int = 50
    guidance_scale: float = 3.0
    eta: float = 1.0
    batch_size: int = 32
    seed: int = 0
    dtype: str = "float32"


def predict_object(pipe: Zero123Pipeline, sample, cfg: PassSettings) -> tuple[dict, dict]:
    """(format-v1 sample with the predictions appended, done-list record) of one one2345 render sample (a mapping
    of member bytes with ``__key__``, as ``render_farm.shards.scan_samples`` yields it)."""
    t0 = time.time()
    key = sample_key(sample)
    with _unreadable():
        meta, cams, roles, pairs = _parse_object(sample)
    n = len(roles)
    size = pipe.image_size
    conds: dict[int, np.ndarray] = {}
    rel = []  # (elevation, azimuth, radius) per target; an (N, 3) array below
    seeds: list[int] = []
    targets: list[tuple[int, int]] = []
    for g, nbrs in pairs:
        if g not in conds:
            with _unreadable():
                conds[g] = condition_image(decode_rgba(sample, g), size)
        for v in nbrs:
            rel.append(zero123_relative_camera(cams["c2w"][g], cams["c2w"][v]))
            seeds.append(view_seed(cfg.seed, key, n + len(targets)))
            targets.append((g, v))
    images = np.stack([conds[g] for g, _ in targets]) if targets else np.zeros((0, size, size, 3), np.float32)
    rel = np.asarray(rel, np.float64).reshape(-1, 3)
    preds = pipe(images, zero123_condition(rel[:, 0], rel[:, 1], rel[:, 2]), seeds, cfg.steps, cfg.guidance_scale,
                 cfg.eta, cfg.batch_size)

    out: dict[str, str | bytes] = {"__key__": key}
    out.update({k: sample[k] for k in sample if not k.startswith("__") and k not in (META, CAMERAS)})  # byte-for-byte
    predictions_of: dict[str, list[int]] = {}
    for j, ((g, v), pred) in enumerate(zip(targets, preds)):
        idx = n + j
        h, w = (int(x) for x in cams["hw"][v])
        rgb = _resize((np.clip(pred, 0, 1) * 255.0 + 0.5).astype(np.uint8), h, w)
        rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=-1)
        out[view_member(idx, "rgba")] = encode_png(rgba)
        out[view_member(idx, "depth")] = encode_png(np.zeros((h, w), np.uint16))
        predictions_of.setdefault(str(g), []).append(idx)
    views = np.concatenate([np.arange(n), np.array([v for _, v in targets], dtype=np.int64)])  # ground-truth poses
    out[CAMERAS] = encode_cameras(cams["c2w"][views], cams["K"][views], cams["hw"][views])
    meta = dict(meta, num_views=n + len(targets), view_roles=roles + [PRED_ROLE] * len(targets),
                predictions_of=predictions_of, predicted_views={"alpha": "opaque", "depth": "none"},
                zero123={"weights": os.path.basename(os.path.normpath(cfg.weights)), "steps": cfg.steps,
                         "guidance_scale": cfg.guidance_scale, "eta": cfg.eta, "seed": cfg.seed, "image_size": size,
                         "dtype": cfg.dtype, "diffusers": diffusers.__version__})
    out[META] = json.dumps(meta, sort_keys=True).encode()
    return out, {"views": n + len(targets), "predicted": len(targets), "seconds": round(time.time() - t0, 3)}


@dataclass
class PassSummary:
    task: int
    count: int
    shards: int = 0
    seen: int = 0
    already_done: int = 0
    ok: int = 0
    failed: int = 0
    predicted: int = 0
    seconds: float = 0.0
    failures: list = field(default_factory=list)

    def line(self) -> str:
        rate = self.predicted / self.seconds if self.seconds > 0 else 0.0
        return (f"zero123 task {self.task}/{self.count}: {self.ok} ok, {self.failed} failed, {self.already_done} "
                f"already done of {self.seen} objects in {self.shards} shards; {self.predicted} views predicted in "
                f"{self.seconds:.1f}s = {rate:.2f} views/s")


def predict_task(shards: list[str], out_dir: str, cfg: PassSettings, task: int = 0, count: int = 1,
                 device: str = "auto", retry_failed: bool = False, shard_maxcount: int = 64,
                 progress: bool = True, pipeline: Zero123Pipeline | None = None) -> PassSummary:
    """Predict this task's slice (sorted input shards[task::count]) into ``out_dir``; resumable, crash-safe."""
    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    mine = round_robin(shards, task, count)
    summary = PassSummary(task, count, shards=len(mine))
    pipe = pipeline
    t0 = time.time()
    bar = tqdm(desc=f"zero123 task {task}", unit="obj", disable=not progress, file=sys.stderr)
    with ShardWriter(out_dir, task, maxcount=shard_maxcount) as writer:
        skip = set(writer.done) | (set() if retry_failed else set(writer.failed))

        def fail(key, reason, excerpt="", **extra):
            writer.record_failure(key, reason, excerpt, **extra)
            summary.failed += 1
            summary.failures.append((key, reason))

        for shard in mine:
            shard_key = f"shard:{os.path.basename(shard)}"
            if shard_key in skip:
                continue
            for sample in _read_shard(shard, fail):
                key = sample_key(sample)
                summary.seen += 1
                bar.update(1)
                if key in skip:
                    summary.already_done += 1
                    continue
                if key in writer.done:  # the same key twice among the inputs
                    fail(key, "duplicate object key: already written from another input shard", shard=shard)
                    continue
                if pipe is None:
                    pipe = Zero123Pipeline.from_pretrained(cfg.weights, device=device, dtype=cfg.dtype)
                try:
                    out, record = predict_object(pipe, sample, cfg)
                except (SampleError, ValueError, cv2.error, OSError) as exc:
                    fail(key, f"{type(exc).__name__}: {exc}", traceback.format_exc(), shard=shard)
                    continue
                writer.write(out, dict(record, source_shard=os.path.basename(shard)))
                summary.ok += 1
                summary.predicted += record["predicted"]
    bar.close()
    summary.seconds = time.time() - t0
    return summary


# ------------------------------------------------------------------------------------------------ command line
def run(args: argparse.Namespace) -> int:
    """``lift3d-render zero123``: prints one summary line; 0 when the pass ran (failures are in the manifest),
    2 for unusable arguments."""
    if args.steps < 1 or args.batch_size < 1 or args.shard_maxcount < 1:
        print(f"zero123: --steps {args.steps}, --batch-size {args.batch_size} and --shard-maxcount "
              f"{args.shard_maxcount} must be ≥ 1", file=sys.stderr)
        return 2
    try:
        check_weights_dir(args.weights)
        resolve_device(args.device)
        task, count = resolve_task(args.rank, args.world_size)
    except (WeightsError, ValueError) as exc:
        print(f"zero123: {exc}", file=sys.stderr)
        return 2
    try:
        shards = list_shards(args.shards)
    except FileNotFoundError as exc:
        print(f"zero123: no .tar shards match --shards {' '.join(args.shards)}: {exc}", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out)
    shards_in_out = [s for s in shards if os.path.dirname(s) == out]
    if shards_in_out:
        print(f"zero123: --out {args.out} is where input shards are ({shards_in_out[0]}); write the predictions to "
              f"another directory", file=sys.stderr)
        return 2
    if not shards:
        print(f"zero123: no .tar shards match --shards {' '.join(args.shards)} (give globs in quotes, directories "
              f"or files)", file=sys.stderr)
        return 2
    cfg = PassSettings(weights=args.weights, steps=args.steps, guidance_scale=args.guidance_scale, eta=args.eta,
                       batch_size=args.batch_size, seed=args.seed, dtype=args.dtype)
    try:
        summary = predict_task(shards, args.out, cfg, task, count, device=args.device,
                               retry_failed=args.retry_failed, shard_maxcount=args.shard_maxcount,
                               progress=not args.no_progress)
    except WeightsError as exc:
        print(f"zero123: {exc}", file=sys.stderr)
        return 2
    report_task(summary, args.out, task)
    return 0
