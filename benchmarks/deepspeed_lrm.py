"""LRM training through Lightning under DDP, DeepSpeed ZeRO-2 and ZeRO-3 + CPU offload: step time and peak GPU memory.

    python -m benchmarks.deepspeed_lrm [--config small] [--batch 4] [--views 4] [--crop 64] [--steps 10] [--devices 1]
        [--grad-checkpointing] [--modes ddp zero2 zero3_offload]

Each mode runs in a fresh process (DeepSpeed and CUDA memory statistics start clean): ``Trainer.fit`` of the config's
LRM (random weights, synthetic batches of the ``lrm32`` rig, as benchmarks/lrm_throughput.py) with precision
bf16-mixed, gradient clipping 1.0 and the strategy of configs/trainer (DDP, or lightning_modules.launch.deepspeed with
configs/deepspeed/<mode>.json). Step time: median wall time from ``on_train_batch_start`` to ``on_train_batch_end``
after ``--warmup`` steps, CUDA-synchronised. Peak memory: ``torch.cuda.max_memory_allocated`` after the warm-up.
Limit: the DDP run of the same model, batch and device in the same invocation; the table gives each mode's step
time and memory as a ratio to it. GPU only (DeepSpeed through Lightning needs CUDA).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import torch

from configs import ROOT

MODES = ("ddp", "zero2", "zero3_offload")


def run_mode(args) -> dict:
    import lightning as L
    import numpy as np
    from torch.utils.data import DataLoader

    from lightning_modules.launch.deepspeed import DeepSpeedStrategy
    from lightning_modules.synthetic import build_lrm, lrm_batch

    class StepTimer(L.Callback):
        def __init__(self):
            self.times, self.t = [], 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            torch.cuda.synchronize()
            if batch_idx == args.warmup:
                torch.cuda.reset_peak_memory_stats()
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            torch.cuda.synchronize()
            if batch_idx >= args.warmup:
                self.times.append(time.perf_counter() - self.t)

    torch.manual_seed(0)
    module = build_lrm(args.config, args.grad_checkpointing, True, torch.device("cpu"))
    batch = lrm_batch(module, args.batch, args.views, args.crop, torch.device("cpu"))
    samples = [{k: v[i] for k, v in batch.items()} for i in range(args.batch)]
    steps = args.warmup + args.steps
    strategy = "ddp" if args.mode == "ddp" else DeepSpeedStrategy(f"configs/deepspeed/{args.mode}.json")
    timer = StepTimer()
    trainer = L.Trainer(accelerator="gpu", devices=args.devices, strategy=strategy, precision="bf16-mixed",
                        max_steps=steps, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        default_root_dir=os.path.join(ROOT, "logs", "bench_deepspeed"))
    result = {"mode": args.mode, "params_M": sum(p.numel() for p in module.net.parameters()) / 1e6}
    try:
        trainer.fit(module, DataLoader(samples * steps, batch_size=args.batch))
    except torch.OutOfMemoryError as exc:
        return dict(result, oom=str(exc).splitlines()[0][:120])
    return dict(result, step_s=float(np.median(timer.times)), peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30,
                rank=trainer.global_rank)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small", choices=["tiny", "small", "paper"])
    p.add_argument("--batch", type=int, default=4, help="samples per GPU")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--grad-checkpointing", action="store_true", help="the model's switches (encoder + transformer)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one mode in this process (internal)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/deepspeed_lrm.py needs a CUDA GPU: Lightning's DeepSpeedStrategy runs on CUDA only "
                 "(run it on a GPU node, e.g. inside an srun/sbatch allocation)")
    if args.mode:
        result = run_mode(args)
        if result.get("rank", 0) == 0:
            print("RESULT " + json.dumps(result), flush=True)
        return

    modes = ["ddp"] + [m for m in args.modes if m != "ddp"]  # DDP first: the limit the others are compared with
    base = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in args.modes and a != "--modes"]
    results = {}
    for mode in modes:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.deepspeed_lrm", *base, "--mode", mode], cwd=ROOT,
                              capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            results[mode] = {"mode": mode, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]}
        else:
            results[mode] = json.loads(lines[-1][len("RESULT "):])
    ddp = results["ddp"]
    print(f"# {datetime.date.today()} {torch.cuda.get_device_name()} × {args.devices}, torch {torch.__version__}; "
          f"python -m benchmarks.deepspeed_lrm {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"lrm_{args.config} ({ddp.get('params_M', 0):.0f} M), {args.batch} × {args.views} × {args.crop}² per GPU, "
          f"bf16-mixed, grad checkpointing {'on' if args.grad_checkpointing else 'off'}")
    print("| strategy | step s | vs DDP | peak memory GiB | vs DDP |")
    print("|---|---|---|---|---|")
    for mode in modes:
        r = results[mode]
        if "step_s" not in r:
            print(f"| {mode} | {r.get('oom') and 'out of memory' or r.get('error')} | | | |")
            continue
        rel = ("{:.2f}×".format(r["step_s"] / ddp["step_s"]), "{:.2f}×".format(r["peak_gib"] / ddp["peak_gib"])) \
            if "step_s" in ddp else ("–", "–")
        print(f"| {mode} | {r['step_s']:.3f} | {rel[0]} | {r['peak_gib']:.2f} | {rel[1]} |", flush=True)


if __name__ == "__main__":
    main()
