"""The LRM's option blocks (``encoder``, ``transformer``, ``field``, ``renderer`` of ``configs/model/lrm_*.yaml``).

Each is the options of one block of :class:`lightning_modules.networks.lrm.model.LRM`; its defaults are the block's
(the paper's sizes). Derived arguments (widths the model passes from block to block) are not options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from lightning_modules.networks.config import BlockConfig, default_of
from lightning_modules.networks.lrm.encoder import DinoEncoder
from lightning_modules.networks.lrm.renderer import TriplaneField, VolumeRenderer
from lightning_modules.networks.lrm.transformer import TriplaneTransformer


@dataclass(frozen=True)
class EncoderConfig(BlockConfig[DinoEncoder]):
    """:class:`DinoEncoder`: a timm DINO ViT.

    Args:
        model_name: timm model name.
        img_size: input size (the positional embedding is interpolated to it).
        pretrained: load the hub's weights (when reachable).
        checkpoint_path: a local timm/PyTorch state dict of ``model_name`` (wins over the hub).
        freeze: no gradients through the encoder.
        overrides: timm ``create_model`` keyword arguments that change the architecture (e.g. a tiny depth).
        grad_checkpointing: activation checkpointing of the ViT blocks.
    """

    block = DinoEncoder
    model_name: str = default_of(DinoEncoder, "model_name")
    img_size: int = default_of(DinoEncoder, "img_size")
    pretrained: bool = default_of(DinoEncoder, "pretrained")
    checkpoint_path: Optional[str] = default_of(DinoEncoder, "checkpoint_path")
    freeze: bool = default_of(DinoEncoder, "freeze")
    overrides: Optional[dict[str, Any]] = default_of(DinoEncoder, "overrides")
    grad_checkpointing: bool = default_of(DinoEncoder, "grad_checkpointing")


@dataclass(frozen=True)
class TransformerConfig(BlockConfig[TriplaneTransformer]):
    """:class:`TriplaneTransformer`: camera-modulated transformer over triplane tokens (``image_dim`` from the encoder,
    ``cond_dim`` = the model's ``camera_dim``).

    Args:
        dim: token width.
        layers: transformer layers.
        heads: attention heads.
        token_res: triplane tokens per plane side (3·token_res² tokens).
        triplane_dim: channels of the upsampled planes.
        mlp_ratio: MLP hidden width / dim.
        grad_checkpointing: activation checkpointing of the layers.
    """

    block = TriplaneTransformer
    derived = ("image_dim", "cond_dim")
    dim: int = default_of(TriplaneTransformer, "dim")
    layers: int = default_of(TriplaneTransformer, "layers")
    heads: int = default_of(TriplaneTransformer, "heads")
    token_res: int = default_of(TriplaneTransformer, "token_res")
    triplane_dim: int = default_of(TriplaneTransformer, "triplane_dim")
    mlp_ratio: float = default_of(TriplaneTransformer, "mlp_ratio")
    grad_checkpointing: bool = default_of(TriplaneTransformer, "grad_checkpointing")


@dataclass(frozen=True)
class FieldConfig(BlockConfig[TriplaneField]):
    """:class:`TriplaneField`: the NeRF MLP over triplane features (``triplane_dim`` from the transformer).

    Args:
        aggregate: how the three planes' features combine.
        hidden: MLP width.
        layers: MLP layers.
        bound: the scene cube [-bound, bound]³.
        density_bias: added to the density logit (an empty scene at initialisation).
        sampler: plane lookup, the same maths either way: ``auto`` (default) picks per device at run time,
            ``embedding_bag`` on CUDA (its backward is faster on GPUs), ``grid_sample`` on a CPU (faster there).
    """

    block = TriplaneField
    derived = ("triplane_dim",)
    aggregate: Literal["sum", "concat"] = default_of(TriplaneField, "aggregate")
    hidden: int = default_of(TriplaneField, "hidden")
    layers: int = default_of(TriplaneField, "layers")
    bound: float = default_of(TriplaneField, "bound")
    density_bias: float = default_of(TriplaneField, "density_bias")
    sampler: Literal["auto", "grid_sample", "embedding_bag"] = default_of(TriplaneField, "sampler")


@dataclass(frozen=True)
class RendererConfig(BlockConfig[VolumeRenderer]):
    """:class:`VolumeRenderer` (``bound`` from the field).

    Args:
        num_coarse: stratified samples per ray.
        num_fine: importance samples per ray.
        chunk: rays rendered at a time.
        deferred_backprop: render without the graph, then backpropagate patch by patch (less memory); null: when
            the render's activations would take more than ``defer_above`` of the device's memory.
        defer_above: that fraction, in (0, 1].
    """

    block = VolumeRenderer
    derived = ("bound",)
    num_coarse: int = default_of(VolumeRenderer, "num_coarse")
    num_fine: int = default_of(VolumeRenderer, "num_fine")
    chunk: int = default_of(VolumeRenderer, "chunk")
    deferred_backprop: Optional[bool] = default_of(VolumeRenderer, "deferred_backprop")
    defer_above: float = default_of(VolumeRenderer, "defer_above")
