"""Zero123 / Zero123-XL (view-conditioned diffusion) on diffusers' building blocks; plain torch, no Lightning:

    cc_projection.py  CCProjection: [CLIP embedding ⊕ relative camera] → the UNet's cross-attention states
    pipeline.py       Zero123Pipeline: (image, relative camera) pairs → predicted views (DDIM, classifier-free
                      guidance, one generator per pair); loading each component from a local checkpoint directory
                      (check_weights_dir, WeightsError); zero123_condition, resolve_device
"""

from lightning_modules.networks.zero123.cc_projection import CCProjection
from lightning_modules.networks.zero123.pipeline import (
    COMPONENTS,
    DTYPES,
    WeightsError,
    Zero123Pipeline,
    check_weights_dir,
    resolve_device,
    zero123_condition,
)

__all__ = ["COMPONENTS", "DTYPES", "CCProjection", "WeightsError", "Zero123Pipeline", "check_weights_dir",
           "resolve_device", "zero123_condition"]
