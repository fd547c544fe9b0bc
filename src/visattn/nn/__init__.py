"""nn.Modules: token mixers with parameters, the pluggable ``Attention`` module and model surgery."""

from . import mixers as _mixers  # noqa: F401  (registers the mixers)
from .affine_scaled import AffineScaledMixer
from .attention import Attention
from .axial import AxialAttention, LineAttention, MorphAxialAttention
from .complexformer import ComplexAttentionMixer
from .create_attn import AttnLayer, create_attn, get_attn, insert_attn
from .davit import ChannelAttention, ChannelGroupMixer, SpatialWindowAttention
from .deconstructed import DecoupledQKAttention, ElementwiseQKMixer, TaylorMixer
from .feature_maps import (
    FasterNetBlock,
    HybridBlock,
    PartialChannelAttention,
    PartialConv2d,
    PartialSelfAttention,
    PartialSpatialAttention,
    PATBlock,
    PolarizedSelfAttention,
    RadialEmbedding2d,
    SubspaceAttention,
    add_ulsam,
)
from .halo import HaloAttention
from .hedgehog import HedgehogFeatureMap, HedgehogMixer, softmax_mimicry_loss
from .hedgehog_distill import distill_attention, hedgehog_student
from .hierarchical import HierarchicalMixer
from .infsa import InfSAMixer, LinearInfSAMixer
from .inline_attention import InLineMixer
from .l2vit import L2ViTLinearMixer, LocalConcentrationModule
from .linear_attention import LinearAttentionMixer
from .masked import MaskedMixer
from .neighborhood import (
    NeighborhoodAttention,
    NeighborhoodAttention1d,
    NeighborhoodAttention2d,
    NeighborhoodAttention3d,
)
from .paro import ParoMixer
from .partition import PartitionAttention
from .radial_strip import DynamicRadialEmbedding, RadialStripAttention, RadialStripMixer, convert_mdt_state_dict
from .relative_position import FactorizedRelativeLogits, RelativePositionBias
from .replace import from_timm_attention, replace_attention
from .reversed_attention import (
    ReversedAttention,
    ReversedBlock,
    ReversedEncoder,
    ReversedMixer,
    dependency_tree,
    lite_keep_counts,
    prune_tokens,
)
from .softmax import SoftmaxMixer
from .softplus_attention import SoftplusAttentionMixer
from .sparsifiner import SparsifinerMixer
from .swin_v2 import CosineWindowMixer, ShiftedWindowAttentionV2, WindowAttentionV2
from .token_mixer import TokenMixer

__all__ = [
    "Attention",
    "FactorizedRelativeLogits",
    "HaloAttention",
    "MaskedMixer",
    "PartitionAttention",
    "RelativePositionBias",
    "SoftmaxMixer",
    "TokenMixer",
    "from_timm_attention",
    "replace_attention",
]
__all__ += ["ChannelAttention", "ChannelGroupMixer", "ConvPosEnc", "SpatialWindowAttention"]
__all__ += ["CosineWindowMixer", "ShiftedWindowAttentionV2", "WindowAttentionV2"]
__all__ += ["DynamicRadialEmbedding", "RadialStripAttention", "RadialStripMixer", "convert_mdt_state_dict"]
__all__ += ["HedgehogFeatureMap", "HedgehogMixer", "distill_attention", "hedgehog_student", "softmax_mimicry_loss"]
__all__ += ["InLineMixer", "InfSAMixer", "L2ViTLinearMixer", "LinearAttentionMixer", "LinearInfSAMixer"]
__all__ += ["LocalConcentrationModule"]
__all__ += ["AffineScaledMixer", "ComplexAttentionMixer", "SoftplusAttentionMixer"]
__all__ += ["DecoupledQKAttention", "ElementwiseQKMixer", "GatedMLP", "TaylorMixer"]
__all__ += ["ReversedAttention", "ReversedBlock", "ReversedEncoder", "ReversedMixer", "dependency_tree"]
__all__ += ["lite_keep_counts", "prune_tokens"]
__all__ += ["NeighborhoodAttention", "NeighborhoodAttention1d", "NeighborhoodAttention2d", "NeighborhoodAttention3d"]
__all__ += ["SparsifinerMixer"]
__all__ += ["ParoMixer"]
__all__ += ["HierarchicalMixer"]
__all__ += ["AxialAttention", "LineAttention", "MorphAxialAttention"]
__all__ += ["AttnLayer", "create_attn", "get_attn", "insert_attn", "add_ulsam"]
__all__ += ["FasterNetBlock", "HybridBlock", "PATBlock", "PartialChannelAttention", "PartialConv2d"]
__all__ += ["PartialSelfAttention", "PartialSpatialAttention", "PolarizedSelfAttention", "RadialEmbedding2d"]
__all__ += ["SubspaceAttention"]


def __getattr__(name: str) -> object:
    """``ConvPosEnc`` (timm's) and ``GatedMLP`` (a timm ``SwiGLU``) are imported on first access: importing timm
    imports timm.models, torchvision and torch._dynamo, which takes seconds."""
    if name == "ConvPosEnc":
        from .davit import ConvPosEnc

        return ConvPosEnc
    if name == "GatedMLP":
        from .gated_mlp import GatedMLP

        return GatedMLP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
