"""Registry entries of the feature-map modules, so ``visattn list --family modules``, ``visattn.create_attn`` and
the docs share one list."""

from __future__ import annotations

from functools import partial

from ...registry import register_module
from .hybrid_block import HybridBlock
from .partial_conv import FasterNetBlock, PartialConv2d
from .pat import PartialChannelAttention, PartialSelfAttention, PartialSpatialAttention, PATBlock
from .polarized import PolarizedSelfAttention
from .radial_embedding import RadialEmbedding2d
from .ulsam import SubspaceAttention

ATTN = ("definition", "attn_layer")
BOTH = ("definition", "official", "attn_layer")

register_module("psa_p", partial(PolarizedSelfAttention, mode="parallel"), paper="psa", complexity="O(HW C^2)",
                faces=BOTH, summary="Polarized self-attention, parallel (variant='official': released PSA_p)")
register_module("psa_s", partial(PolarizedSelfAttention, mode="sequential"), paper="psa", complexity="O(HW C^2)",
                faces=BOTH, summary="Polarized self-attention, sequential (variant='official': released PSA_s)")
register_module("ulsam", SubspaceAttention, paper="ulsam", complexity="O(HW C)", faces=BOTH,
                summary="Subspace attention: one softmax spatial map per channel group (variant='official': BN+ReLU)")
register_module("pconv", PartialConv2d, paper="partialnet", complexity="O(HW C^2 / n_div^2)", faces=ATTN,
                summary="FasterNet partial convolution: 3x3 conv on C/n_div channels (split_cat or slicing)")
register_module("fasternet_block", FasterNetBlock, paper="partialnet", complexity="O(HW C^2)", faces=ATTN,
                summary="FasterNet block: PConv, pointwise MLP, residual")
register_module("pat_ch", PartialChannelAttention, paper="partialnet", complexity="O(HW C^2 / n_div^2)",
                faces=ATTN, summary="PAT_ch mixer: PConv + mean/std channel gate on the untouched channels")
register_module("pat_sp", PartialSpatialAttention, paper="partialnet", complexity="O(HW C^2)", faces=ATTN,
                summary="PAT_sp: hard-sigmoid spatial gate on half the channels, BN + 1x1 conv on the other half")
register_module("pat_sf", PartialSelfAttention, paper="partialnet", complexity="O((HW)^2 C)", faces=ATTN,
                summary="PAT_sf mixer: PConv + MHSA with iRPE key biases on the untouched channels")
register_module("pat_block", PATBlock, paper="partialnet", complexity="O(HW C^2)", faces=("definition",),
                summary="PATNet block: PAT mixer, pointwise MLP (+ PAT_sp), residual")
register_module("radial_embedding", RadialEmbedding2d, paper="rst", complexity="O(HW C^2 k^2)", faces=ATTN,
                summary="RST dynamic radial embedding: conv + angle-map driven deformable conv")
register_module("hybrid_block", HybridBlock, paper="rtnet", complexity="O(HW C^2)", faces=("definition",),
                summary="RTNet HybridBlock: polar branch + tanh-Cartesian branch; forward(x, rois)")
