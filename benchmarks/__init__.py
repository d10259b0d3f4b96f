"""Scripts behind the figures in BENCHMARKS.md, and their shared timing helpers.

Run them as modules from the repository root (``python -m benchmarks.lrm_throughput --config tiny``): the scripts
import ``benchmarks``, ``configs`` and the packages as the tests do, without path tricks. Random-weight models and
synthetic batches come from ``lightning_modules.synthetic`` (the tests build the same ones).
"""

from __future__ import annotations

import statistics
import time

import torch


def sync(device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(fn(), seconds) with the device synchronised before and after."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Dense matmul FLOP/s of the device: the median over ``repeats`` timed n×n×n products after 3 warm-ups (the limit
    a benchmark measures its model against in the same run)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    return 2 * n ** 3 / statistics.median(timed(lambda: a @ b, device)[1] for _ in range(repeats))
