"""LRM training-step throughput, peak memory, FLOPs per sample and MFU against a matmul rate measured in the same run.

    python -m benchmarks.lrm_throughput --config tiny [--batch 2] [--views 4] [--crop 32] [--steps 5]
    python -m benchmarks.lrm_throughput --config paper --batch 8 --views 4 --crop 128 --precision bf16 \
        [--grad-checkpointing] [--deferred-backprop]

One step = what ``LRMModule.training_step`` + the optimiser do (canonical cameras, encoder, transformer, rendering of
``--views`` ``--crop``² views with the config's samples per ray, MSE + LPIPS, backward, gradient clipping, fused AdamW),
on a synthetic batch (``lightning_modules.synthetic``: random images, cameras of the ``lrm32`` rig). FLOPs are counted
once with ``torch.utils.flop_counter.FlopCounterMode`` over a forward + backward of one sample (× batch) (matmuls,
convolutions and attention: the "model FLOPs" of MFU; the optimiser and elementwise work are not counted). Limit: a
dense square matmul of the same dtype on the same device (``--matmul-size``, ``benchmarks.matmul_rate``), timed in the
same run; MFU = counted FLOPs/s ÷ that rate (and ÷ the device's datasheet peak when ``--peak-tflops`` is given).
Prints a table row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import resource
import sys
import time

import numpy as np
import torch

from benchmarks import matmul_rate, sync
from lightning_modules.lrm import LRMModule
from lightning_modules.synthetic import build_lrm, lrm_batch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def step_fn(module: LRMModule, opt, batch: dict, dtype: torch.dtype, device: torch.device):
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def step(optimise: bool = True) -> float:
        with autocast:
            out, planes, scale = module.forward_views(batch, stratified=True)
            terms = module.losses(batch, out, planes, scale)
        terms["loss"].backward()
        if optimise:
            torch.nn.utils.clip_grad_norm_(module.net.parameters(), 1.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return float(terms["loss"].detach())
    return step


def count_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step(optimise=False)
    return float(counter.get_total_flops())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", choices=["tiny", "small", "paper"])
    p.add_argument("--batch", type=int, default=2, help="samples per device")
    p.add_argument("--views", type=int, default=4, help="supervision views per sample")
    p.add_argument("--crop", type=int, default=32, help="rendered size of each supervision view")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--deferred-backprop", action="store_true")
    p.add_argument("--matmul-size", type=int, default=0, help="0: 8192 on GPU, 2048 on CPU")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="datasheet dense peak of the device, for reference")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sampler", default=None, choices=["grid_sample", "embedding_bag"], help="override the config's")
    p.add_argument("--profile", type=int, default=0, help="also print the N most expensive ops of one step")
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.precision]
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    n = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    limit = matmul_rate(device, dtype, n, repeats=10)

    module = build_lrm(args.config, args.grad_checkpointing, args.deferred_backprop, device, args.sampler).train()
    params = sum(p.numel() for p in module.net.parameters())
    opt = torch.optim.AdamW(module.net.parameters(), lr=1e-4, betas=(0.9, 0.95),
                            fused=device.type == "cuda" or None)
    batch = lrm_batch(module, args.batch, args.views, args.crop, device)
    step = step_fn(module, opt, batch, dtype, device)
    times = []
    try:
        for _ in range(args.warmup):
            step()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - t)
    except torch.OutOfMemoryError as exc:
        print(f"| {args.config} | {args.batch} × {args.views} × {args.crop}² | {args.precision} "
              f"| {'yes' if args.grad_checkpointing else 'no'} | {'yes' if args.deferred_backprop else 'no'} "
              f"| out of memory: {str(exc).splitlines()[0][:120]} |", flush=True)
        return {"oom": True}
    step_s = float(np.median(times))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            step()
            sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile, max_name_column_width=60))
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    # FLOPs are linear in the batch: counted on one sample (the counter's bookkeeping needs memory of its own)
    one = {k: v[:1] for k, v in batch.items()}
    flops = count_flops(step_fn(module, opt, one, dtype, device)) * args.batch
    achieved = flops / step_s
    result = {
        "config": args.config, "batch": args.batch, "views": args.views, "crop": args.crop,
        "precision": args.precision, "grad_checkpointing": args.grad_checkpointing,
        "deferred_backprop": args.deferred_backprop, "params_M": params / 1e6,
        "step_s": step_s, "samples_per_s": args.batch / step_s,
        "tokens_per_s": args.batch * module.tokens_per_sample / step_s,
        "gflops_per_sample": flops / args.batch / 1e9, "achieved_tflops": achieved / 1e12,
        "matmul_tflops": limit / 1e12, "mfu_vs_matmul": achieved / limit,
        "mfu_vs_peak": achieved / (args.peak_tflops * 1e12) if args.peak_tflops else None,
        "peak_memory_gib": peak / 2 ** 30,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
    }
    print(f"# {datetime.date.today()} {result['device']}, torch {torch.__version__}; "
          f"python -m benchmarks.lrm_throughput {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"sampler: {module.net.field.sampler_on(device)}")
    print("| config | batch × views × crop² | precision | ckpt | deferred BP | step s | samples/s | GFLOP/sample "
          "| achieved TFLOP/s | matmul TFLOP/s | **MFU** (vs matmul) | peak memory GiB |")
    print(f"| {args.config} ({params / 1e6:.1f} M) | {args.batch} × {args.views} × {args.crop}² | {args.precision} "
          f"| {'yes' if args.grad_checkpointing else 'no'} | {'yes' if args.deferred_backprop else 'no'} "
          f"| {step_s:.3f} | {result['samples_per_s']:.2f} | {result['gflops_per_sample']:.1f} "
          f"| {result['achieved_tflops']:.2f} | {result['matmul_tflops']:.1f} | **{result['mfu_vs_matmul']:.1%}** "
          f"| {result['peak_memory_gib']:.2f} |", flush=True)
    return result


if __name__ == "__main__":
    main()
