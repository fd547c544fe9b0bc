"""Feature-map attention modules for CNNs: ``(B, C, H, W)`` in and out, ``(channels, ...)`` first like timm's
attention layers (PSA, ULSAM, PConv / PAT, RST's radial embedding, RTNet's HybridBlock)."""

from . import catalog as _catalog  # noqa: F401  (registers the modules)
from .hybrid_block import HybridBlock, MixedPad2d
from .partial_conv import FasterNetBlock, PartialConv2d
from .pat import PartialChannelAttention, PartialSelfAttention, PartialSpatialAttention, PATBlock
from .pat_attention import RelativePositionMHSA, euclidean_buckets
from .polarized import PolarizedSelfAttention
from .radial_embedding import RadialEmbedding2d
from .ulsam import SubspaceAttention
from .ulsam_mobilenet import ULSAM_CONFIGS, ULSAMReport, add_ulsam, count_flops

__all__ = [
    "ULSAM_CONFIGS",
    "FasterNetBlock",
    "HybridBlock",
    "MixedPad2d",
    "PATBlock",
    "PartialChannelAttention",
    "PartialConv2d",
    "PartialSelfAttention",
    "PartialSpatialAttention",
    "PolarizedSelfAttention",
    "RadialEmbedding2d",
    "RelativePositionMHSA",
    "SubspaceAttention",
    "ULSAMReport",
    "add_ulsam",
    "count_flops",
    "euclidean_buckets",
]
