"""One-2-3-45's option blocks (``features``, ``cost_volume``, ``sparse_cnn``, ``sdf``, ``colour``, ``renderer`` of
``configs/model/one2345_*.yaml``).

Each is the options of one block of :class:`lightning_modules.networks.one2345.model.One2345`; its defaults are the
block's (the paper's, SparseNeuS's sizes). Derived arguments (widths and the bound the model passes from block to
block) are not options.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_modules.networks.config import BlockConfig, default_of
from lightning_modules.networks.one2345.cost_volume import CostVolume
from lightning_modules.networks.one2345.features import FeatureFPN
from lightning_modules.networks.one2345.fields import BlendingColourNetwork, SDFNetwork
from lightning_modules.networks.one2345.renderer import NeuSRenderer
from lightning_modules.networks.one2345.sparse_cnn import SparseGeometryNet


@dataclass(frozen=True)
class FeaturesConfig(BlockConfig[FeatureFPN]):
    """:class:`FeatureFPN`: per-view 2-D features.

    Args:
        base_channels: width of the pyramid's first level.
        out_channels: C, channels of the fused map.
        out_stride: 1, 2 or 4: the fused map's stride.
    """

    block = FeatureFPN
    base_channels: int = default_of(FeatureFPN, "base_channels")
    out_channels: int = default_of(FeatureFPN, "out_channels")
    out_stride: int = default_of(FeatureFPN, "out_stride")


@dataclass(frozen=True)
class CostVolumeConfig(BlockConfig[CostVolume]):
    """:class:`CostVolume`: the sparse cost volume over [-bound, bound]³.

    Args:
        resolution: R, voxels per side.
        bound: half the side of the volume (the scene bound of the renderer too).
        min_views: views that must see a voxel for it to be active.
        chunk: voxels projected at a time (the result does not depend on it).
        near: z-depth below which a voxel is behind a camera.
    """

    block = CostVolume
    resolution: int = default_of(CostVolume, "resolution")
    bound: float = default_of(CostVolume, "bound")
    min_views: int = default_of(CostVolume, "min_views")
    chunk: int = default_of(CostVolume, "chunk")
    near: float = default_of(CostVolume, "near")


@dataclass(frozen=True)
class SparseCNNConfig(BlockConfig[SparseGeometryNet]):
    """:class:`SparseGeometryNet` (``in_channels`` = 2 × the FPN's channels).

    Args:
        out_channels: G, channels of the geometry volume.
        channels: per-level widths: (c0,) or (c0, c1).
        blocks: residual blocks per level.
    """

    block = SparseGeometryNet
    derived = ("in_channels",)
    out_channels: int = default_of(SparseGeometryNet, "out_channels")
    channels: tuple[int, ...] = default_of(SparseGeometryNet, "channels")
    blocks: int = default_of(SparseGeometryNet, "blocks")


@dataclass(frozen=True)
class SDFConfig(BlockConfig[SDFNetwork]):
    """:class:`SDFNetwork` (``geo_channels`` from the sparse CNN).

    Args:
        feature_dim: the hidden feature handed to the colour network.
        hidden: MLP width.
        num_layers: hidden layers.
        num_freqs: positional-encoding frequencies.
        radius: the sphere of the geometric initialisation.
    """

    block = SDFNetwork
    derived = ("geo_channels",)
    feature_dim: int = default_of(SDFNetwork, "feature_dim")
    hidden: int = default_of(SDFNetwork, "hidden")
    num_layers: int = default_of(SDFNetwork, "num_layers")
    num_freqs: int = default_of(SDFNetwork, "num_freqs")
    radius: float = default_of(SDFNetwork, "radius")


@dataclass(frozen=True)
class ColourConfig(BlockConfig[BlendingColourNetwork]):
    """:class:`BlendingColourNetwork` (``feature_dim`` from the SDF network, ``image_channels`` from the FPN).

    Args:
        hidden: MLP width.
        fallback: the colour of points no source view sees.
        near: z-depth below which a point is behind a source camera.
        use_image_features: IBRNet: the FPN maps join the colours in the blending MLP (false: colours only).
    """

    block = BlendingColourNetwork
    derived = ("feature_dim", "image_channels")
    extra = ("use_image_features",)
    hidden: int = default_of(BlendingColourNetwork, "hidden")
    fallback: float = default_of(BlendingColourNetwork, "fallback")
    near: float = default_of(BlendingColourNetwork, "near")
    use_image_features: bool = True


@dataclass(frozen=True)
class RendererConfig(BlockConfig[NeuSRenderer]):
    """:class:`NeuSRenderer` (``bound`` from the cost volume).

    Args:
        num_coarse: equal sections per ray.
        num_importance: NeuS up-sampled samples per ray.
        upsample_steps: steps the up-sampling takes (num_importance must split evenly into them).
        base_inv_s: the fixed inverse standard deviation of the first up-sampling step.
        chunk: rays rendered at a time.
        init_variance: the learned variance's initial value.
    """

    block = NeuSRenderer
    derived = ("bound",)
    num_coarse: int = default_of(NeuSRenderer, "num_coarse")
    num_importance: int = default_of(NeuSRenderer, "num_importance")
    upsample_steps: int = default_of(NeuSRenderer, "upsample_steps")
    base_inv_s: float = default_of(NeuSRenderer, "base_inv_s")
    chunk: int = default_of(NeuSRenderer, "chunk")
    init_variance: float = default_of(NeuSRenderer, "init_variance")
