"""`lift3d evaluate` throughput (objects/min) and the metrics of a checkpoint on generated held-out objects.

    python -m benchmarks.evaluate_throughput [--ckpt data/demo/lrm/checkpoints/last.ckpt] [--resolution 64]

The held-out set: every valid generated asset of ``render_farm.synthetic`` (textured box, vertex-coloured sphere,
multi-material box + cylinder, non-manifold, and the OBJ/PLY/STL/GLB copies of a simple mesh) rendered by Blender
with the ``eval24`` rig (24 views) into ``--shards`` (rendered once, reused afterwards). The checkpoint defaults to
the tiny LRM that ``make demo`` trains (400 CPU steps on 3 generated objects). The ground truth is the assets'
meshes (``--gt-meshes``).

The figure is the whole evaluation (reading, reconstruction, rendering the 23 held-out views, marching cubes,
metrics, renders and reports) in objects/min. Limit measured in the same run: the model alone on the same objects
and views — reconstruct, render the held-out views, extract the mesh, nothing else — so the printed ratio is the
share of the evaluation's time the model itself takes (1.0 = metrics and reports cost nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import torch

from configs import MODEL_DIR, RENDER_DIR, ROOT
from lightning_modules.evaluation.cli import main as evaluate
from lightning_modules.evaluation.reconstruction import LRMReconstructor, held_out_batch, list_objects
from render_farm import synthetic


def render_held_out(shards: str, assets: str, resolution: int, samples: int, workers: int) -> None:
    from render_farm.config import load_render_config
    from render_farm.farm import render_task
    from render_farm.sources import LocalDirSource

    synthetic.all_assets(assets, include_broken=False)
    cfg = load_render_config(os.path.join(RENDER_DIR, "tiny.yaml"), resolution=resolution, samples=samples,
                             rig="eval24", rig_options={})
    summary = render_task(LocalDirSource(assets), shards, cfg, num_workers=workers, progress=True)
    print(f"[bench] held-out set: {summary.line()}", flush=True)


def model_only(ckpt: str, shards: str) -> float:
    """Seconds the model takes on every object: reconstruct from the input view, render the others, extract the
    mesh (the views prepared by the evaluation's own code, outside the timing)."""
    model = LRMReconstructor(ckpt, torch.device("cpu"), model_config=os.path.join(MODEL_DIR, "lrm_tiny.yaml"))
    seconds = 0.0
    for sample in list_objects(shards)[0]:
        batch, _, _, _ = held_out_batch(sample, "auto", model.input_size, 0, "white", model.device)
        start = time.perf_counter()
        with model.weights():
            _, planes = model.render_views(batch)
            try:
                model.mesh(planes, batch["input_c2w"][0])
            except ValueError:
                pass  # no surface: the evaluation records it the same way
        seconds += time.perf_counter() - start
    return seconds


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=os.path.join(ROOT, "data", "demo", "lrm", "checkpoints", "last.ckpt"))
    p.add_argument("--shards", default=os.path.join(ROOT, "data", "bench", "eval24", "shards"))
    p.add_argument("--assets", default=os.path.join(ROOT, "data", "bench", "eval24", "assets"))
    p.add_argument("--out", default=os.path.join(ROOT, "data", "bench", "eval24", "evaluation"))
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=2)
    args = p.parse_args(argv)
    if not os.path.isfile(args.ckpt):
        raise SystemExit(f"no checkpoint at {args.ckpt}: run `make demo` first (it trains the tiny LRM), or pass "
                         "--ckpt")
    if not os.path.isfile(os.path.join(args.shards, "index.json")):
        render_held_out(args.shards, args.assets, args.resolution, args.samples, args.num_workers)
    summary = evaluate(["--ckpt", args.ckpt, "--shards", args.shards, "--out", args.out, "--gt-meshes", args.assets,
                        "--model-config", os.path.join(MODEL_DIR, "lrm_tiny.yaml"),
                        "--accelerator", "cpu", "--wandb-mode", "disabled"])
    assert summary is not None, "lift3d evaluate returned no summary on the main process"
    model_s = model_only(args.ckpt, args.shards)
    model_rate = 60.0 * summary["objects"] / model_s
    result = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads", "objects": summary["objects"],
              "evaluation_objects_per_min": summary["objects_per_min"], "model_only_objects_per_min": model_rate,
              "ratio_evaluation_to_model_only": summary["objects_per_min"] / model_rate,
              "metrics": {m: round(s["mean"], 4) for m, s in summary["overall"].items()}}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
