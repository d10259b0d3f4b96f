"""Render throughput of the farm against the public Objaverse scripts' approach, measured in the same run.

    python -m benchmarks.render_throughput [--resolutions 256 512] [--objects 2] [--samples 32]

Ours: ``lift3d-render`` with one persistent Blender worker (BVH kept between views, all passes from one
render). Baseline: ``benchmarks/_baseline_render.py`` — a fresh Blender process per object, every view rendered
three times (RGBA, depth, normals). Both use the lrm32 rig, the same resolution and samples. Image quality:
PSNR of the RGB (on white) against a high-sample reference of the same views; ours must not be below the
baseline's. Prints views/s, s/object, peak memory per worker, the speed ratio (target ≥ 2×) and the PSNRs.
"""

import argparse
import glob
import json
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

from configs import ROOT
from render_farm.synthetic import textured_box, vertex_coloured_sphere


def on_white(rgba):
    rgba = rgba.astype(np.float64) / 255.0
    return rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])


def psnr(a, b):
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))


def read_png(data_or_path):
    buf = np.frombuffer(data_or_path, np.uint8) if isinstance(data_or_path, bytes) else np.fromfile(data_or_path,
                                                                                                        np.uint8)
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)


def run_ours(asset_dir, out, resolution, samples):
    cmd = [sys.executable, "-m", "render_farm.cli", "objaverse", "--glb-dir", asset_dir, "--out", out,
           "--resolution", str(resolution), "--samples", str(samples), "--rig", "lrm32", "--num-workers", "1",
           "--no-progress"]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    seconds = time.perf_counter() - t
    rows = [json.loads(line) for line in open(os.path.join(out, "_state", "task-00000.done.jsonl"))]
    samples_ = {s["__key__"]: s for s in wds.WebDataset(sorted(glob.glob(out + "/*.tar")), shardshuffle=False)}
    return seconds, sum(r["views"] for r in rows), max(r["worker_maxrss_mb"] for r in rows), samples_


def run_baseline(assets, out, resolution, samples):
    t = time.perf_counter()
    views, rss = 0, 0.0
    for uid, path in assets:
        d = os.path.join(out, uid)
        subprocess.run([sys.executable, "-m", "benchmarks._baseline_render", path, d, uid, str(resolution),
                        str(samples), "lrm32"], cwd=ROOT, check=True, capture_output=True)
        stats = json.load(open(os.path.join(d, "stats.json")))
        views, rss = views + stats["views"], max(rss, stats["maxrss_mb"])
    return time.perf_counter() - t, views, rss


def reference(asset, uid, resolution, samples, views, out):
    """High-sample renders of a few views (the farm's own job, many samples) for the quality check."""
    subprocess.run([sys.executable, "-c", (
        "import sys, json, numpy as np; sys.path.insert(0, %r)\n"
        "from geometry.rigs import make_rig, object_rng\n"
        "from render_farm.blender_scene import render_object, RenderSettings\n"
        "rig = make_rig('lrm32', %r, %d)\n"
        "for k in ('c2w','K','hw','fov_deg'): setattr(rig, k, getattr(rig, k)[:%d])\n"
        "rig.roles = rig.roles[:%d]\n"
        "o = render_object(%r, rig, RenderSettings(samples=%d, resolution=%d), 10000.0,\n"
        "                  rng=object_rng('lighting', %r, 0))\n"
        "np.save(%r, np.stack([v['rgba'] for v in o['views']]))\n"
        "import os; os._exit(0)\n"
    ) % (str(ROOT), uid, resolution, views, views, asset, samples, resolution, uid, out)], check=True,
        capture_output=True)
    return np.load(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    p.add_argument("--objects", type=int, default=2)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--reference-samples", type=int, default=512)
    p.add_argument("--quality-views", type=int, default=2)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="lift3d-bench-render-")
    asset_dir = os.path.join(work, "assets")
    os.makedirs(asset_dir)
    makers = [textured_box, vertex_coloured_sphere]
    assets = [(a.uid, a.path) for a in (makers[i % 2](asset_dir, name=f"obj{i}") for i in range(args.objects))]
    print(f"# render throughput — {time.strftime('%Y-%m-%d')} — {platform.node()} {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {platform.python_version()}")
    print(f"command: python -m benchmarks.render_throughput --resolutions {' '.join(map(str, args.resolutions))} "
          f"--objects {args.objects} --samples {args.samples}")
    for res in args.resolutions:
        ours_s, ours_views, ours_rss, shards = run_ours(asset_dir, os.path.join(work, f"ours{res}"), res, args.samples)
        base_s, base_views, base_rss = run_baseline(assets, os.path.join(work, f"base{res}"), res, args.samples)
        uid, path = assets[0]
        ref = reference(path, uid, res, args.reference_samples, args.quality_views,
                        os.path.join(work, f"ref{res}.npy"))
        q_ours = np.mean([psnr(on_white(read_png(shards[uid][f"{i:03d}.rgba.png"])), on_white(ref[i]))
                          for i in range(args.quality_views)])
        q_base = np.mean([psnr(on_white(read_png(os.path.join(work, f"base{res}", uid, f"{i:03d}.png"))),
                               on_white(ref[i])) for i in range(args.quality_views)])
        ours_vps, base_vps = ours_views / ours_s, base_views / base_s
        print(f"{res}²  lrm32 ({ours_views // args.objects} views/object), {args.samples} spp")
        print(f"  ours      {ours_vps:7.2f} views/s  {ours_s / args.objects:7.1f} s/object  peak worker "
              f"{ours_rss:6.0f} MB  PSNR vs {args.reference_samples} spp {q_ours:.2f} dB")
        print(f"  baseline  {base_vps:7.2f} views/s  {base_s / args.objects:7.1f} s/object  peak worker "
              f"{base_rss:6.0f} MB  PSNR vs {args.reference_samples} spp {q_base:.2f} dB")
        print(f"  ratio     {ours_vps / base_vps:.2f}× baseline views/s (target ≥ 2×); quality "
              f"{'≥' if q_ours >= q_base - 1e-6 else '<'} baseline ({q_ours - q_base:+.2f} dB)")
        sys.stdout.flush()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
