"""LRM image → mesh latency, split by stage: encode, decode (transformer → planes), grid query, marching cubes,
vertex colours.

    python -m benchmarks.lrm_inference --config paper --resolution 256 [--precision bf16] [--repeats 3]

Random weights (no checkpoint can be downloaded here): the density grid of a random model is no object, so the
marching-cubes level is set to the grid's 90th percentile (a surface enclosing 10% of the volume, typically more
tangled than a real object's: an upper bound on the meshing time). Grid query and colours run on the model's
device in chunks; marching cubes is scikit-image on the CPU (the grid is copied back). Each stage is the median of
``--repeats`` runs after one warm-up, synchronised. Limit for the ratio: the target (1 s for the paper config at 256³
on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys

import numpy as np
import torch

from benchmarks import timed as bench_timed
from configs import MODEL_DIR, load_model_block
from geometry.cameras import intrinsics_from_fov
from geometry.mesh import marching_cubes, query_grid
from geometry.rays import canonical_c2w
from lightning_modules.networks.lrm.model import LRM
from lightning_modules.networks.lrm.transformer import camera_features


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", choices=["tiny", "small", "paper"])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=1 << 21, help="grid points per query chunk")
    p.add_argument("--target-s", type=float, default=1.0)
    p.add_argument("--surface", default="model", choices=["model", "sphere"],
                   help="model: mesh the random model's grid at its 90th percentile (a tangled worst case); "
                        "sphere: mesh a radius-0.8 sphere's grid of the same size (an object-like surface)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = load_model_block(MODEL_DIR / f"lrm_{args.config}.yaml").init_args
    net = LRM(dict(cfg["encoder"], pretrained=False, checkpoint_path=None), cfg["transformer"], cfg["field"],
              cfg["renderer"], cfg["camera_dim"]).to(device).eval()
    size = net.encoder.img_size
    image = torch.rand(1, 3, size, size, device=device)
    c2w = canonical_c2w(2.0, device=device)[None]
    K = torch.tensor(intrinsics_from_fov(50.0, size, size), dtype=torch.float32, device=device)[None]
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    def timed(fn):
        return bench_timed(fn, device)

    stages: dict[str, list[float]] = {k: [] for k in ("encode", "decode", "grid query", "marching cubes",
                                                      "vertex colours")}
    faces = 0
    for r in range(args.repeats + 1):
        with torch.no_grad(), autocast:
            tokens, t_enc = timed(lambda: net.encoder(image))
            planes, t_dec = timed(lambda: net.transformer(
                tokens, net.camera_embedder(camera_features(c2w, K, size, size))))
            planes = planes.float()
        grid, t_grid = timed(lambda: query_grid(lambda x: net.density(planes, x), args.resolution, (-1.0, 1.0),
                                                chunk=args.chunk, device=device))
        if args.surface == "sphere":
            axis = torch.linspace(-1, 1, args.resolution)
            x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
            grid = 10.0 * (0.8 - (x * x + y * y + z * z).sqrt())  # density-like: positive inside
        level = float(np.quantile(grid.numpy(), 0.9)) if args.surface == "model" else 0.0
        (verts, f), t_mc = timed(lambda: marching_cubes(grid, level))
        _, t_col = timed(lambda: net.colour(planes, torch.from_numpy(verts).to(device)))
        faces = len(f)
        if r:  # the first round warms up
            for k, v in zip(stages, (t_enc, t_dec, t_grid, t_mc, t_col)):
                stages[k].append(v)
    med = {k: float(np.median(v)) for k, v in stages.items()}
    total = sum(med.values())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {datetime.date.today()} {name}, torch {torch.__version__}; python -m benchmarks.lrm_inference "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}")
    print("| config | grid | surface | precision | " + " | ".join(stages)
          + " | **total** | faces | target | total / target |")
    print(f"| {args.config} | {args.resolution}³ | {args.surface} | {args.precision} | "
          + " | ".join(f"{v * 1e3:.0f} ms" for v in med.values())
          + f" | **{total:.3f} s** | {faces} | {args.target_s:.1f} s | {total / args.target_s:.2f} |", flush=True)
    return {"stages_s": med, "total_s": total, "faces": faces}


if __name__ == "__main__":
    main()
