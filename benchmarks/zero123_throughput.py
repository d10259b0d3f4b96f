"""Zero123 prediction throughput: predicted images/s of the pass's pipeline call, batched, against the UNet bound.

    python -m benchmarks.zero123_throughput [--weights /models/zero123-xl --device cuda --dtype float16]
                                            [--images 32 --batch-size 32 --steps 50 --guidance-scale 3.0]

Without ``--weights`` it builds the tiny random checkpoint the tests use (64² images) in a temporary directory and
runs on the CPU unless ``--device cuda`` is given. ``--images`` (image, relative camera) pairs go through
``Zero123Pipeline.__call__`` exactly as ``lift3d-render zero123`` calls it (one object = 32 pairs); the figure is the
median of ``--repeats`` timed calls after one warm-up, synchronised.

Limit for the ratio, measured in the same run on the same device: the UNet alone — one forward of each chunk's
batch (2 × chunk with guidance > 1, the [uncond; cond] batch) timed, times ``--steps``. The pipeline cannot beat
it; ``ratio = pipeline images/s ÷ UNet-bound images/s`` (≤ 1) is the share of the time spent in the denoiser, and
what is left is CLIP, the VAE encode/decode, the scheduler and host work.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from typing import Any

import numpy as np
import torch

from benchmarks import timed as bench_timed
from lightning_modules.networks.zero123 import Zero123Pipeline
from render_farm.zero123 import view_seed


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="a local diffusers Zero123 checkpoint (default: the tiny random test one)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--images", type=int, default=32, help="pairs per pipeline call (32 = one object)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per UNet call (as --batch-size of the pass)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="zero123-bench-") as tmp:
        weights = args.weights
        if weights is None:
            from tests.weights import save_tiny_zero123

            weights = save_tiny_zero123(os.path.join(tmp, "tiny-zero123"))
        pipe = Zero123Pipeline.from_pretrained(weights, device=args.device, dtype=args.dtype)
    device, size = pipe.device, pipe.image_size
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (args.images, size, size, 3)).astype(np.float32)
    cams = np.stack([rng.uniform(-0.3, 0.3, args.images), rng.uniform(0, 2 * np.pi, args.images),
                     np.zeros(args.images)], axis=-1)
    seeds = [view_seed(0, "bench", 40 + i) for i in range(args.images)]

    def timed(fn) -> float:
        return bench_timed(fn, device)[1]

    def call():
        pipe(images, cams, seeds, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
             batch_size=args.batch_size)

    # the limit: UNet forwards only, on the batches the pipeline feeds it
    branches = 2 if args.guidance_scale > 1.0 else 1
    chunks = [min(args.batch_size, args.images - i) for i in range(0, args.images, args.batch_size)]
    latent = size // pipe.vae_scale_factor
    unet: Any = pipe.unet  # a diffusers UNet2DConditionModel (untyped)
    dim = unet.config.cross_attention_dim
    t_step = pipe.scheduler.config.num_train_timesteps // 2

    def unet_only():
        with torch.no_grad():
            for b in chunks:
                x = torch.randn(branches * b, pipe.unet.config.in_channels, latent, latent, device=device,
                                dtype=pipe.dtype)
                h = torch.randn(branches * b, 1, dim, device=device, dtype=pipe.dtype)
                pipe.unet(x, t_step, encoder_hidden_states=h)

    unet_only()
    unet_s = float(np.median([timed(unet_only) for _ in range(args.repeats)])) * args.steps
    call()  # warm-up
    pipe_s = float(np.median([timed(call) for _ in range(args.repeats)]))
    rate, bound = args.images / pipe_s, args.images / unet_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# {datetime.date.today()} {name}, torch {torch.__version__}; python -m benchmarks.zero123_throughput "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}")
    print("| weights | image | dtype | images | batch | steps | guidance | pipeline | **images/s** "
          "| UNet-bound images/s | ratio |")
    print(f"| {os.path.basename(os.path.normpath(weights))} | {size}² | {args.dtype} | {args.images} | "
          f"{args.batch_size} | {args.steps} | {args.guidance_scale:g} | {pipe_s:.2f} s | **{rate:.2f}** | "
          f"{bound:.2f} | {rate / bound:.2f} |", flush=True)
    return {"images_per_s": rate, "unet_bound_images_per_s": bound, "ratio": rate / bound}


if __name__ == "__main__":
    main()
