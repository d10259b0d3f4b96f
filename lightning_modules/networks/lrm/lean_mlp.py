"""The field MLP's training forward at half its activation memory: each SiLU → Linear pair keeps one tensor.

Autograd keeps two tensors of every hidden layer of a SiLU MLP for backward: the SiLU's input z (for its derivative)
and the next Linear's input silu(z) (for the weight gradient). Over the render's samples (1 × 2 × 32² rays × 96
samples in the peer benchmark: 24 MiB per 64-wide tensor) these are the largest activations of a training step, and
twice what a ReLU MLP keeps (ReLU's output is both). :func:`silu_linear` keeps z alone and recomputes silu(z) in
backward (one elementwise pass); the values, gradients and kernels are autograd's own (``F.silu``, ``F.linear``,
``aten.silu_backward``), so a step computes the same as with the plain ``nn.Sequential``.

    z ─► SiLU ─► Linear ─► y        kept for backward: z (and the weight); silu(z) recomputed from z
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _SiLULinear(torch.autograd.Function):
    """y = linear(silu(z), weight, bias), keeping z only."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = F.linear(F.silu(z), weight, bias)  # under autocast F.linear runs in its dtype, as in the Sequential
        ctx.save_for_backward(z, weight)
        ctx.has_bias, ctx.dtype = bias is not None, y.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        z, weight = ctx.saved_tensors
        a = F.silu(z).to(ctx.dtype)  # the Linear's input, recomputed
        g = grad_y.to(ctx.dtype)
        g2, a2 = g.reshape(-1, g.shape[-1]), a.reshape(-1, a.shape[-1])
        grad_w = (g2.t() @ a2).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = g2.sum(0).to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_z = None
        if ctx.needs_input_grad[0]:
            grad_a = (g @ weight.to(ctx.dtype)).to(z.dtype)
            grad_z = torch.ops.aten.silu_backward(grad_a, z)
        return grad_z, grad_w, grad_b


def silu_linear(z: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear(silu(z))``; under autograd it keeps z only (see the module docstring)."""
    if torch.is_grad_enabled() and (z.requires_grad or linear.weight.requires_grad):
        return _SiLULinear.apply(z, linear.weight, linear.bias)
    return linear(F.silu(z))


def lean_mlp(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` for a Sequential of Linear and SiLU layers, each SiLU with the Linear after it through
    :func:`silu_linear`; other layers run as they are."""
    layers = list(mlp)
    i = 0
    while i < len(layers):
        layer, after = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.SiLU) and isinstance(after, nn.Linear):
            x = silu_linear(x, after)
            i += 2
        else:
            x = layer(x)
            i += 1
    return x
