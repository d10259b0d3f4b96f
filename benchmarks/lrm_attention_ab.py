"""Interleaved A/B micro-benchmarks of the LRM's encoder and transformer pieces on a CPU (issue 19's diagnosis).

    python -m benchmarks.lrm_attention_ab [--cases sdpa,modln,block,encoder] [--rounds 9] [--threads 2]
        [--openlrm DIR]

Every case builds its variants once, then times forward + backward of each in turn within every round (order
alternating round to round) and prints each variant's median time and the median (min–max) of its per-round ratio to
the first variant, with the load average: on a shared machine only the interleaved ratios mean anything. glibc's
mmap threshold is pinned at 128 KiB as in ``benchmarks/peer_openlrm.py`` (every tensor buffer freshly mapped), unless
``--no-pin``. Sizes are the small LRM's (``configs/model/lrm_small.yaml``), batch 1:

- ``sdpa``: attention of 12 heads × 64 in lift3d's layout (heads split from the projection by a view), self-attention
  over 768 triplane tokens, cross-attention 768 → 257 image tokens, the ViT's self-attention over 257: PyTorch's
  default SDPA (the flash CPU kernel) against its math backend, explicit matmul–softmax–matmul, and flash on
  contiguous copies. (OpenLRM's ``nn.MultiheadAttention`` with ``need_weights=False`` and Hugging Face's ViT with
  ``attn_implementation="sdpa"`` call the same ``scaled_dot_product_attention``.)
- ``modln``: ModLN as three passes, LN(f)·(1 + γ) + β, against lift3d's folded affine (one LayerNorm pass).
- ``block``: two lift3d TriplaneBlocks with the three-pass ModLN and with the folded one, and, given ``--openlrm``,
  two of OpenLRM's ConditionModulationBlocks.
- ``encoder``: lift3d's timm ViT-B/16 at 256² against a Hugging Face ViTModel of the same ViTConfig (as
  ``peer_openlrm.py`` builds OpenLRM's), random weights.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import statistics
import sys
import time
import types
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script: the repository

from lightning_modules.networks.lrm.transformer import ModLN, TriplaneBlock  # noqa: E402

HEADS, HEAD_DIM, TOKENS, IMAGE_TOKENS = 12, 64, 768, 257
DIM = HEADS * HEAD_DIM


def interleaved(variants: dict[str, Callable[[], None]], rounds: int) -> None:
    """Times each variant once per round, alternating the order; prints medians and ratios to the first."""
    for f in variants.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for name, f in (list(variants.items())[::-1] if r % 2 else variants.items()):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    base = next(iter(variants))
    for name, ts in times.items():
        ratios = [a / b for a, b in zip(ts, times[base])]
        print(f"  {name:34s} {statistics.median(ts) * 1e3:9.1f} ms   ÷ {base}: {statistics.median(ratios):.3f} "
              f"({min(ratios):.2f}–{max(ratios):.2f})", flush=True)
    print(f"  load average {' '.join(open('/proc/loadavg').read().split()[:3])}", flush=True)


def sdpa_cases(rounds: int) -> None:
    def explicit(q, k, v):
        return ((q * HEAD_DIM ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v

    for title, (t, n) in {"triplane self-attention 768 × 768": (TOKENS, TOKENS),
                          "triplane cross-attention 768 × 257": (TOKENS, IMAGE_TOKENS),
                          "ViT self-attention 257 × 257": (IMAGE_TOKENS, IMAGE_TOKENS)}.items():
        q0 = torch.randn(1, t, DIM, requires_grad=True)
        kv0 = torch.randn(1, n, 2 * DIM, requires_grad=True)
        grad = torch.randn(1, HEADS, t, HEAD_DIM)

        def variant(kind: str) -> Callable[[], None]:
            def run():
                q = q0.view(1, t, HEADS, HEAD_DIM).transpose(1, 2)
                k, v = kv0.view(1, n, 2, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
                if kind == "math":
                    with sdpa_kernel(SDPBackend.MATH):
                        y = F.scaled_dot_product_attention(q, k, v)
                elif kind == "explicit":
                    y = explicit(q, k, v)
                elif kind == "sdpa on contiguous copies":
                    y = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
                else:
                    y = F.scaled_dot_product_attention(q, k, v)
                y.backward(grad)
            return run

        print(title, "(forward + backward)", flush=True)
        interleaved({k: variant(k) for k in ("sdpa (default: flash)", "math", "explicit",
                                             "sdpa on contiguous copies")}, rounds)


def three_pass_modln(mod: ModLN, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    gamma, beta = mod.mlp(cond).unsqueeze(1).chunk(2, dim=-1)
    return mod.norm(x) * (1 + gamma) + beta


def modln_case(rounds: int) -> None:
    mod = ModLN(DIM, DIM)
    x, c = torch.randn(1, TOKENS, DIM, requires_grad=True), torch.randn(1, DIM, requires_grad=True)
    grad = torch.randn(1, TOKENS, DIM)
    print("ModLN 768 × 768 (forward + backward)", flush=True)
    interleaved({"three passes": lambda: three_pass_modln(mod, x, c).backward(grad),
                 "folded affine (lift3d)": lambda: mod(x, c).backward(grad)}, rounds)


def block_case(rounds: int, openlrm: str | None) -> None:
    ours = torch.nn.ModuleList(TriplaneBlock(DIM, HEADS, DIM, DIM) for _ in range(2))
    x0, cam = torch.randn(1, TOKENS, DIM, requires_grad=True), torch.randn(1, DIM, requires_grad=True)
    image = torch.randn(1, IMAGE_TOKENS, DIM, requires_grad=True)

    def run(blocks, three_pass: bool = False) -> Callable[[], None]:
        def step():
            x = x0
            for b in blocks:
                if three_pass:
                    x = x + b.cross(three_pass_modln(b.norm_cross, x, cam), image)
                    x = x + b.attn(three_pass_modln(b.norm_self, x, cam))
                    x = x + b.mlp(three_pass_modln(b.norm_mlp, x, cam))
                else:
                    x = b(x, image, cam)
            x.sum().backward()
        return step

    variants = {"lift3d, three-pass ModLN": run(ours, three_pass=True), "lift3d (folded ModLN)": run(ours)}
    if openlrm:  # OpenLRM's block module alone (its package __init__ pulls in the whole model)
        pkg = types.ModuleType("openlrm_models")
        pkg.__path__ = [os.path.join(openlrm, "openlrm", "models")]
        sys.modules["openlrm_models"] = pkg
        block = importlib.import_module("openlrm_models.block")
        theirs = torch.nn.ModuleList(block.ConditionModulationBlock(DIM, DIM, DIM, HEADS, 1e-6) for _ in range(2))
        variants["OpenLRM ConditionModulationBlock"] = lambda: _openlrm_step(theirs, x0, image, cam)
    print("2 transformer blocks, 768 tokens × 768, 12 heads, cross-attention to 257 (forward + backward)", flush=True)
    interleaved(variants, rounds)


def _openlrm_step(blocks, x, image, cam) -> None:
    for b in blocks:
        x = b(x, image, cam)
    x.sum().backward()


def encoder_case(rounds: int) -> None:
    from transformers import ViTConfig, ViTModel

    from lightning_modules.networks.lrm.encoder import DinoEncoder
    enc = DinoEncoder(img_size=256, pretrained=False).train()
    hf = ViTModel(ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                            image_size=256, patch_size=16, qkv_bias=True), add_pooling_layer=False).train()
    print(f"  Hugging Face attention implementation: {hf.config._attn_implementation}")
    image = torch.rand(1, 3, 256, 256)

    def timm_step():
        enc.zero_grad(set_to_none=True)
        enc(image).sum().backward()

    def hf_step():
        hf.zero_grad(set_to_none=True)
        hf(pixel_values=image, interpolate_pos_encoding=True).last_hidden_state.sum().backward()

    print("ViT-B/16 at 256², 257 tokens (forward + backward)", flush=True)
    interleaved({"timm (lift3d)": timm_step, "Hugging Face ViTModel (OpenLRM)": hf_step}, rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="sdpa,modln,block,encoder")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--openlrm", default=os.environ.get("OPENLRM_DIR"), help="OpenLRM checkout for the block case")
    ap.add_argument("--no-pin", action="store_true", help="leave glibc's dynamic mmap threshold")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.no_pin:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, as peer_openlrm.py
    cases = {"sdpa": lambda: sdpa_cases(args.rounds), "modln": lambda: modln_case(args.rounds),
             "block": lambda: block_case(args.rounds, args.openlrm), "encoder": lambda: encoder_case(args.rounds)}
    for name in args.cases.split(","):
        if name not in cases:
            raise SystemExit(f"unknown case {name!r} in --cases: choose from {', '.join(cases)}")
        cases[name]()


if __name__ == "__main__":
    main()
