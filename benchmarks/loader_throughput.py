"""Shard loader throughput per worker against the raw PNG-decode rate of the same bytes, measured in the same run.

    python -m benchmarks.loader_throughput [--shards 'data/shards/objaverse/*.tar'] [--objects 16] [--views 32]
                                           [--resolution 512] [--targets 4] [--passes 3]

Loader: ``datamodules.shard_datamodule.ShardDataset`` through a DataLoader in this process, batches of 8 (what one
DataLoader worker does:
scan the tar, parse meta/cameras, pick 1 input + ``--targets`` supervision views, read and decode only their
PNGs, build uint8/uint16 tensors, collate), at the stored resolution (512² by default), one OpenCV thread, after the
worker's ``tune_worker_malloc`` (both sides of the ratio run in this process after it). Compositing and
the float conversion run after the batch reaches the device (``datamodules.views.finalize`` in the datamodule's
``on_after_batch_transfer``); their CPU cost is printed separately for reference.
Limit: ``cv2.imdecode`` of exactly the PNG members the loader decoded (input RGBA, target RGBA + depth), from
memory, in the same process. Prints both rates in samples/s and their ratio (target ≥ 0.8), then a block for
BENCHMARKS.md. Without ``--shards`` it first writes ``--objects`` synthetic objects (smooth shaded shapes with
anti-aliased alpha and a depth map, PNG-realistic rather than noise) into a temporary directory.
"""

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader

from datamodules.shard_datamodule import ShardDataset, resolve_shards, tune_worker_malloc
from datamodules.views import ViewSampler, collate, finalize
from geometry.rigs import lrm32
from render_farm.shards import ShardWriter, encode_sample

DEPTH_SCALE = 1000.0


def synthetic_view(res: int, rng: np.random.Generator, view: int) -> dict:
    """A shaded ellipsoid with a box in front: smooth colours, soft silhouette, a depth map; no noise."""
    yy, xx = (np.mgrid[0:res, 0:res].astype(np.float32) + 0.5) / res * 2.0 - 1.0
    rgba = np.zeros((res, res, 4), np.float32)
    depth = np.zeros((res, res), np.float32)
    cx, cy, rx, ry = rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    r2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    light = np.array([0.4, -0.5, 0.77]) * (1 if view % 2 else 0.9)
    shade = np.clip(((xx - cx) / rx * light[0] + (yy - cy) / ry * light[1] + nz * light[2]), 0.05, 1.0)
    base = rng.uniform(0.3, 0.9, 3)
    alpha = np.clip((1.0 - r2) * res * 0.25, 0.0, 1.0)  # about one pixel of anti-aliased edge
    rgba[..., :3] = shade[..., None] * base
    rgba[..., 3] = alpha
    depth[r2 < 1.0] = (2.5 - 0.5 * nz)[r2 < 1.0]
    bx, by, s = rng.uniform(-0.3, 0.1), rng.uniform(0.0, 0.3), rng.uniform(0.15, 0.3)
    box = (xx > bx) & (xx < bx + s) & (yy > by) & (yy < by + s)
    rgba[box, :3] = np.array([0.85, 0.35, 0.2]) * (0.6 + 0.4 * (xx[box] - bx) / s)[:, None]
    rgba[box, 3] = 1.0
    depth[box] = 2.0 + 0.2 * (yy[box] - by)
    return {"rgba": np.round(rgba * 255).astype(np.uint8),
            "depth": np.round(depth * DEPTH_SCALE).astype(np.uint16)}


def write_synthetic(out: str, objects: int, views: int, res: int) -> None:
    with ShardWriter(out, maxcount=8) as writer:
        for n in range(objects):
            key = f"bench{n:04d}"
            rig = lrm32(key, resolution=res, num_views=views)
            rng = np.random.default_rng(n)
            vs = [synthetic_view(res, rng, i) for i in range(views)]
            writer.write(encode_sample(key, vs, rig.c2w, rig.K, rig.hw,
                                       {"depth_scale": DEPTH_SCALE, "view_roles": rig.roles, "source": "synthetic"}))


def run_loader(urls, counts, sampler, passes: int, batch_size: int = 8):
    """A real DataLoader over the dataset in this process (num_workers=0): the work one worker does, collation too."""
    ds = ShardDataset(urls, sampler, counts, resampled=False, shuffle_buffer=0, seed=0)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=0, collate_fn=collate)
    picks, n = [], 0
    start = time.perf_counter()
    for _ in range(passes):
        for batch in loader:
            for key, inp, targets in zip(batch["key"], batch["input_view"].tolist(), batch["target_views"].tolist()):
                picks.append((key, inp, targets))
            n += len(batch["key"])
    return n / (time.perf_counter() - start), picks, ds


def run_decode(urls, picks) -> float:
    """cv2.imdecode of exactly the members the loader decoded (bytes read into memory first, untimed)."""
    raw = {s["__key__"]: s for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())}
    jobs = []
    for key, inp, targets in picks:
        members = [f"{inp:03d}.rgba.png"] + [f"{t:03d}.{kind}.png" for t in targets for kind in ("rgba", "depth")]
        jobs.append([np.frombuffer(raw[key][m], np.uint8) for m in members])
    start = time.perf_counter()
    for bufs in jobs:
        for buf in bufs:
            cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return len(jobs) / (time.perf_counter() - start)


def time_finalize(ds, batch_size: int) -> float:
    """CPU milliseconds per sample of ``finalize`` (compositing + float conversion) on a collated batch."""
    batch = collate([s for _, s in zip(range(batch_size), ds)])
    finalize(batch)
    start = time.perf_counter()
    for _ in range(5):
        finalize(batch)
    return (time.perf_counter() - start) / 5 / batch_size * 1e3


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", help="shards to read (glob, brace pattern, directory); default: synthetic ones")
    ap.add_argument("--objects", type=int, default=16)
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--passes", type=int, default=3, help="epochs over the shards per round (views redrawn each time)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="paired rounds (loader pass, then decode of the same PNGs); the median ratio is reported")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)  # one worker's share of the machine, on both sides of the ratio
    tune_worker_malloc()  # what every DataLoader worker runs first (ShardDataModule's worker_init_fn)

    tmp = None
    if args.shards is None:
        tmp = tempfile.mkdtemp(prefix="lift3d-loader-bench-")
        t = time.perf_counter()
        write_synthetic(tmp, args.objects, args.views, args.resolution)
        print(f"wrote {args.objects} synthetic objects × {args.views} views at {args.resolution}² to {tmp} "
              f"in {time.perf_counter() - t:.1f}s")
    try:
        urls, counts = resolve_shards(args.shards or str(tmp))
        size = args.resolution if args.shards is None else 0
        sampler = ViewSampler(num_target_views=args.targets, input_size=size, target_size=size, background="white")
        run_loader(urls, counts, sampler, 1)  # warm-up: page cache, imports, allocator
        rounds = []
        for _ in range(args.rounds):  # paired and interleaved, so drift on a shared machine hits both sides
            loader_rate, picks, ds = run_loader(urls, counts, sampler, args.passes)
            decode_rate = run_decode(urls, picks)
            rounds.append((loader_rate / decode_rate, loader_rate, decode_rate))
        rounds.sort()
        ratio, loader_rate, decode_rate = rounds[len(rounds) // 2]
        finalize_ms = time_finalize(ds, 8)
        skipped = int(ds.error_counts.sum())
        shard_bytes = sum(os.path.getsize(u) for u in urls if os.path.isfile(u))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip() or platform.platform()
    cmd = "python -m benchmarks.loader_throughput " + " ".join(argv if argv is not None else sys.argv[1:])
    pngs = 1 + 2 * args.targets
    print(f"""
### Shard loader throughput (per worker) — {datetime.date.today().isoformat()}

- machine: `{uname}`, {os.cpu_count()} CPUs, OpenCV {cv2.__version__} with 1 thread
- command: `{cmd.strip()}`
- data: {len(urls)} shards, {sum(counts.values()) if counts else '?'} objects, {shard_bytes / 2**20:.0f} MiB; \
1 input + {args.targets} supervision views per sample ({pngs} PNGs decoded), {len(picks)} samples timed
- loader (ShardDataset + DataLoader in-process: tar scan → meta/cameras → {pngs} PNGs → uint8/uint16 tensors → \
batches of 8): \
**{loader_rate:.1f} samples/s**
- limit (cv2.imdecode of the same {pngs} PNG members per sample, from memory): **{decode_rate:.1f} samples/s**
- ratio loader / PNG decode: **{ratio:.2f}** (target ≥ 0.8){'' if ratio >= 0.8 else '  BELOW TARGET'}; median of \
{len(rounds)} paired rounds (range {rounds[0][0]:.2f}–{rounds[-1][0]:.2f}); rates above are that round's
- skipped/corrupt data events: {skipped}
- for reference: `finalize` (composite + float32, done on the device in training) costs {finalize_ms:.2f} ms per \
sample on this CPU
""")


if __name__ == "__main__":
    main()
