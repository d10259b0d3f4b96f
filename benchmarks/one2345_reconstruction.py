"""One-2-3-45 reconstruction latency: 32 posed views → mesh, split by stage, with peak memory.

    python -m benchmarks.one2345_reconstruction --config tiny  [--views 32] [--resolution 64]   # CPU
    python -m benchmarks.one2345_reconstruction --config paper --resolution 256 --device cuda   # the paper setting

Stages: FPN features, cost volume (project + mean/var over the views), sparse 3-D CNN (spconv) + densify, SDF grid
query (marching-cubes grid, ``--resolution``³), marching cubes (scikit-image, CPU), vertex colours (the blending
network at every vertex, looking along the normal). Each stage is the median of ``--repeats`` runs after one
warm-up, synchronised. Inputs: random images at the rig's cameras (the 32 neighbour views of the ``one2345`` rig:
what the model sees at inference, 4 Zero123 predictions around each of 8 views); random weights, whose SDF is the
geometric-init ball of radius 0.5 — an object-like surface for meshing.

Two references measured in the same run: the ``--target-s`` (the paper reports about 5 s on an A100; target 2 s on
an H200), and the SDF grid query's achieved FLOP rate against the device's dense fp32 matmul rate (the MLP's
linear layers counted analytically; the trilinear volume lookups and activations are extra work, not counted).
On the CPU spconv needs one intra-op thread (networks/one2345/sparse_cnn.py), so the whole run uses one.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import sys

import numpy as np
import torch

from benchmarks import matmul_rate
from benchmarks import timed as bench_timed
from configs import MODEL_DIR, load_model_block
from geometry.mesh import marching_cubes, query_grid
from geometry.rigs import one2345 as one2345_rig
from lightning_modules.networks.one2345.model import One2345, Scene
from lightning_modules.networks.one2345.sparse_cnn import to_dense


def sdf_flops_per_point(net: One2345) -> int:
    return sum(2 * m.in_features * m.out_features for m in net.sdf_net.modules() if isinstance(m, torch.nn.Linear))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", choices=["tiny", "paper"])
    p.add_argument("--views", type=int, default=32)
    p.add_argument("--size", type=int, default=0, help="source image size (default: 64 tiny, 256 paper)")
    p.add_argument("--resolution", type=int, default=0, help="marching-cubes grid (default: the config's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--target-s", type=float, default=2.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    cfg = load_model_block(MODEL_DIR / f"one2345_{args.config}.yaml").init_args
    size = args.size or (64 if args.config == "tiny" else 256)
    resolution = args.resolution or cfg.get("mesh_resolution", 256)
    torch.manual_seed(0)
    net = One2345(*(cfg.get(k) for k in ("features", "cost_volume", "sparse_cnn", "sdf", "colour", "renderer")))
    net = net.to(device).eval()
    rig = one2345_rig("benchmark", resolution=size)
    views = np.arange(8, 8 + args.views) % len(rig)
    images = torch.rand(1, args.views, 3, size, size, device=device)
    c2w = torch.tensor(rig.c2w[views], dtype=torch.float32, device=device)[None]
    K = torch.tensor(rig.K[views], dtype=torch.float32, device=device)[None]

    def timed(fn):
        return bench_timed(fn, device)

    names = ("features", "cost volume", "sparse CNN", "SDF grid", "marching cubes", "vertex colours")
    stages: dict[str, list[float]] = {k: [] for k in names}
    faces = active = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for r in range(args.repeats + 1):
        with torch.no_grad():
            (feats, stride), t_feat = timed(lambda: net.features(images))
            sparse, t_cost = timed(lambda: net.cost_volume(feats, c2w, K, stride))
            volume, t_cnn = timed(lambda: to_dense(net.geometry(sparse)))
        scene = Scene(volume, images, feats if net.colour_net.image_channels else None, stride, c2w, K,
                      int(sparse.feats.shape[0]))
        grid, t_grid = timed(lambda: query_grid(lambda x: net.sdf(scene, x), resolution, (-net.bound, net.bound),
                                                chunk=1 << 18, device=device))
        (verts, f), t_mc = timed(lambda: marching_cubes(grid, 0.0, (-net.bound, net.bound), inside="below"))
        v = torch.from_numpy(verts).to(device)
        _, t_col = timed(lambda: torch.cat([net.colour(scene, c) for c in v.split(1 << 14)]))
        faces, active = len(f), int(sparse.feats.shape[0])
        if r:  # the first round warms up
            for k, t in zip(names, (t_feat, t_cost, t_cnn, t_grid, t_mc, t_col)):
                stages[k].append(t)
    med = {k: float(np.median(v)) for k, v in stages.items()}
    total = sum(med.values())
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB (CUDA)"
        name = torch.cuda.get_device_name(device)
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB (max RSS; " \
               f"{rss_before / 2 ** 20:.2f} before)"
        name = "cpu, 1 thread"
    rate = matmul_rate(device)
    grid_rate = sdf_flops_per_point(net) * resolution ** 3 / med["SDF grid"]
    print(f"# {datetime.date.today()} {name}, torch {torch.__version__}; python -m benchmarks.one2345_reconstruction "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"views {args.views} at {size}², cost volume {net.cost_volume.resolution}³ ({active} active voxels), "
          f"mesh grid {resolution}³, {faces} faces; peak memory {peak}")
    print("| config | " + " | ".join(names) + " | **total** | target | total / target | SDF grid GFLOP/s / matmul |")
    print(f"| {args.config} | " + " | ".join(f"{v * 1e3:.0f} ms" for v in med.values())
          + f" | **{total:.3f} s** | {args.target_s:.1f} s | {total / args.target_s:.2f} | "
          f"{grid_rate / 1e9:.1f} / {rate / 1e9:.1f} = {grid_rate / rate:.2f} |", flush=True)
    return {"stages_s": med, "total_s": total, "faces": faces, "active_voxels": active}


if __name__ == "__main__":
    main()
