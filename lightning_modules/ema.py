"""Exponential moving average of a module's weights, saved in and restored from Lightning checkpoints."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    """``shadow = decay · shadow + (1 − decay) · param`` after every optimiser step (floating-point tensors only).

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so early averages are not
    dominated by the random initialisation.
    """

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in self._tracked(module).items()}

    @staticmethod
    def _tracked(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in self._tracked(module).items():
            s = self.shadow[k]
            if s.device != v.device:
                self.shadow[k] = s = s.to(v.device)
            s.lerp_(v.detach().to(s.dtype), 1 - d)

    @contextlib.contextmanager
    def swapped_in(self, module: nn.Module):
        """The module with its EMA weights inside the block, its own weights back after."""
        backup = {k: v.detach().clone() for k, v in self._tracked(module).items()}
        module.load_state_dict(self.shadow, strict=False)
        try:
            yield module
        finally:
            module.load_state_dict(backup, strict=False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
