"""Zero123's camera-conditioning projection (one Linear): [CLIP image embedding ⊕ relative camera] → UNet states."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class CCProjection(ModelMixin, ConfigMixin):
    """[CLIP embedding (E) ⊕ relative camera (4)] → cross-attention states (D): ``Linear(E + 4 → D)``.

    Same config keys and parameter names (``projection.weight``/``projection.bias``) as the ``cc_projection/``
    folder of real diffusers Zero123 checkpoints, so their weights load unchanged.
    """

    @register_to_config
    def __init__(self, in_channel: int = 772, out_channel: int = 768):
        super().__init__()
        self.in_channel, self.out_channel = in_channel, out_channel
        self.projection = torch.nn.Linear(in_channel, out_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)
