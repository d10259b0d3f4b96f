"""Scripts behind the figures in BENCHMARKS.md, and their shared timing helpers."""

from __future__ import annotations

import time


def sync(device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(fn(), seconds) with the device synchronised before and after."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t
