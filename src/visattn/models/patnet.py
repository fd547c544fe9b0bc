"""PATNet T0/T1/T2/S/M/L: FasterNet's skeleton with partial attention blocks, on visattn's PAT modules.

Paper: Huang et al., "Partial Convolution Meets Visual Attention" (arXiv 2503.03148); released code and configs:
haiduo/PartialNet (``models/partialnet.py``, ``cfg/PartialNet_*.yaml``). The network is FasterNet's (arXiv
2303.03667): a 4 x 4 stride-4 convolution + BN, four stages with a 2 x 2 stride-2 convolution + BN between them
(doubling the width), global average pooling, a 1 x 1 convolution to 1280 features, the activation and a linear
classifier. Each block (``c_p = c / 4``) is

    stages 0-2, PAT_ch:  ``x + DropPath(MLP([Conv3x3(x_1) | BN(x_2 * Hardsigmoid(BN(Conv_{1x2}([mean, std](x_2)))))]))``
    stage 3,    PAT_sf:  ``x' = x + [Conv3x3(x_1) | MHSA_rpe(LN(x_2))]``,  ``x' + DropPath(MLP(x'))``

with ``MLP = PW_{c->2c} -> BN -> act -> PW_{2c->c}``, followed by PAT_sp where ``spatial_attn`` is set
(:class:`~visattn.nn.feature_maps.PATBlock`, :class:`~visattn.nn.feature_maps.PartialChannelAttention`,
:class:`~visattn.nn.feature_maps.PartialSelfAttention`, :class:`~visattn.nn.feature_maps.PartialSpatialAttention`).

Configurations (the release's yaml files; all n_div 4, mlp_ratio 2, feature_dim 1280, no layer scale):

    ======  =========  =============  ======  ==========  =========
    size    embed_dim  depths         act     PAT_sp      drop_path
    ======  =========  =============  ======  ==========  =========
    T0      32         1, 2, 8, 2     GELU    off         0.0
    T1      48         1, 2, 8, 2     GELU    on          0.02
    T2      64         2, 2, 6, 4     ReLU    off         0.05
    S       96         2, 2, 9, 4     ReLU    off         0.1
    M       128        2, 3, 16, 4    ReLU    off         0.2
    L       160        2, 3, 20, 4    ReLU    off         0.3
    ======  =========  =============  ======  ==========  =========

(``cfg/PartialNet_t0.yaml`` names ``model_name: convnext_tiny``, a slip; its PartialNet fields are used.) The paper
reports T0, T1 and S (with T2 named in its abstract); whether its table has M and L, and its parameter and FLOP
figures, could not be read here, so :mod:`visattn.models.published` records None for every size. All six sizes of
the release are registered.

Heads of PAT_sf: the paper gives 4 heads in T0 and 6 in the other sizes, the default here (``num_heads``). Every
released config sets ``patnet_t0: True``, which makes the released code use 4 heads in every size: pass
``num_heads=4`` to build the released networks (and to load their checkpoints). The release hard-codes dropout 0.1
on the attention weights and on the projection of PAT_sf (``attn_drop_rate``, ``proj_drop_rate``, default 0.1).

Methods (``forward_features``, ``forward_head``, ``forward_intermediates``, ``prune_intermediate_layers``,
``set_grad_checkpointing``, ``reset_classifier``, ``group_matcher``) are timm's ``FasterNet``'s: the module names
are the same (``patch_embed``, ``stages.{i}.{downsample,blocks}``, ``conv_head``, ``act``, ``classifier``).

Checkpoints: the release's flat layout is renamed by :func:`checkpoint_filter_fn` (Lightning's ``model.`` prefix
removed)::

    stages.{2i}.blocks.*                          -> stages.{i}.blocks.*
    stages.{2i-1}.{reduction,norm}.*              -> stages.{i}.downsample.{reduction,norm}.*
    avgpool_pre_head.1.weight                     -> conv_head.weight
    head.{weight,bias}                            -> classifier.{weight,bias}
    *.spatial_mixing.attn.cfc1.weight             -> *.spatial_mixing.gate_conv.weight       (PAT_ch)
    *.spatial_mixing.attn.bn.*                    -> *.spatial_mixing.gate_norm.*            (PAT_ch)
    *.spatial_mixing.attn.rpe_k.lookup_table_bias -> *.spatial_mixing.attn.rpe_bias          (PAT_sf)

All other names (``partial_conv3``, PAT_ch's output ``norm``, PAT_sf's ``norm``, ``attn.qkv``, ``attn.proj``, the
MLP's ``mlp.{0,1,3}`` and PAT_sp's ``mlp.4.{conv,conv_attn,norm,norm2}``) are the same. The load is strict.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from timm.layers import Linear, SelectAdaptivePool2d, calculate_drop_path_rates
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import fasternet as timm_fasternet
from timm.models._manipulate import checkpoint_seq
from torch import Tensor, nn

from ..nn.feature_maps import PartialSelfAttention, PATBlock
from ._pretrained import paper_cfg
from .fasternet import official_to_timm_layout

__all__ = ["PATNET_ARGS", "PATNet", "PATStage", "checkpoint_filter_fn"]

_RELU = partial(nn.ReLU, inplace=True)

PATNET_ARGS: dict[str, dict[str, Any]] = {
    "visattn_patnet_t0": dict(embed_dim=32, depths=(1, 2, 8, 2), act_layer=nn.GELU, drop_path_rate=0.0,
                              num_heads=4),
    "visattn_patnet_t1": dict(embed_dim=48, depths=(1, 2, 8, 2), act_layer=nn.GELU, drop_path_rate=0.02,
                              spatial_attn=True),
    "visattn_patnet_t2": dict(embed_dim=64, depths=(2, 2, 6, 4), drop_path_rate=0.05),
    "visattn_patnet_s": dict(embed_dim=96, depths=(2, 2, 9, 4), drop_path_rate=0.1),
    "visattn_patnet_m": dict(embed_dim=128, depths=(2, 3, 16, 4), drop_path_rate=0.2),
    "visattn_patnet_l": dict(embed_dim=160, depths=(2, 3, 20, 4), drop_path_rate=0.3),
}
"""The architecture of each size (haiduo/PartialNet's ``cfg/PartialNet_*.yaml``; heads as the paper)."""


class PATStage(nn.Module):
    """One PATNet stage: timm's FasterNet ``PatchMerging`` (absent in stage 0), then :class:`PATBlock` s."""

    def __init__(self, dim: int, depth: int, mixer: str, spatial_attn: bool, n_div: int, mlp_ratio: float,
                 drop_path: Sequence[float], num_heads: int, attn_drop: float, proj_drop: float,
                 act_layer: Callable[..., nn.Module], norm_layer: Callable[..., nn.Module], use_merge: bool,
                 merge_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.grad_checkpointing = False
        self.downsample = timm_fasternet.PatchMerging(dim // 2, merge_size, norm_layer, **dd) if use_merge \
            else nn.Identity()
        blocks = []
        for rate in drop_path:
            block = PATBlock(dim, mixer, spatial_attn, n_div, mlp_ratio, rate, num_heads, act_layer, norm_layer, **dd)
            if mixer == "self":
                block.spatial_mixing = PartialSelfAttention(dim, n_div, num_heads, attn_drop, proj_drop, **dd)
            blocks.append(block)
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class PATNet(timm_fasternet.FasterNet):
    """PATNet (arXiv 2503.03148; see the module docstring) with timm's FasterNet methods.

    Args:
        in_chans, num_classes, global_pool: input channels, classes, head pooling (timm's).
        embed_dim: width of stage 0 (doubled per stage); ``n_div`` and ``num_heads`` must divide what they split.
        depths: blocks per stage; stages before the last use PAT_ch, the last PAT_sf.
        mlp_ratio, n_div: MLP expansion (2) and PConv divisor (4).
        patch_size, merge_size: stem and merging strides (4, 2).
        feature_dim: width of the pre-logits 1 x 1 convolution (1280).
        drop_rate, drop_path_rate: head dropout, stochastic depth (linear over all blocks).
        act_layer, norm_layer: MLP and head activation (GELU in T0/T1, ReLU otherwise), BatchNorm.
        spatial_attn: PAT_sp in every block's MLP (T1).
        num_heads: heads of PAT_sf (paper: 4 in T0, 6 otherwise; release: 4 everywhere).
        attn_drop_rate, proj_drop_rate: PAT_sf's dropouts (release: 0.1).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg", embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 9, 4), mlp_ratio: float = 2.0, n_div: int = 4, patch_size: int = 4,
                 merge_size: int = 2, feature_dim: int = 1280, drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 act_layer: Callable[..., nn.Module] = _RELU, norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
                 spatial_attn: bool = False, num_heads: int = 6, attn_drop_rate: float = 0.1,
                 proj_drop_rate: float = 0.1, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        nn.Module.__init__(self)
        dd = {"device": device, "dtype": dtype}
        if isinstance(depths, int) or not depths or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                                                        for d in depths):
            raise ValueError(f"depths must be a non-empty sequence of positive ints, got {depths!r}")
        if isinstance(n_div, bool) or not isinstance(n_div, int) or n_div < 2 or embed_dim % n_div:
            raise ValueError(f"n_div must be an int >= 2 dividing embed_dim={embed_dim}, got {n_div!r}")
        last = int(embed_dim * 2 ** (len(depths) - 1))
        untouched = last - last // n_div
        if num_heads < 1 or untouched % num_heads:
            raise ValueError(f"num_heads must divide the {untouched} attended channels of the last stage "
                             f"(embed_dim={embed_dim}, n_div={n_div}), got {num_heads!r}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.num_stages = len(depths)
        self.feature_info: list[dict[str, Any]] = []
        self.patch_embed = timm_fasternet.PatchEmbed(in_chans, embed_dim, patch_size, norm_layer, **dd)
        rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages = []
        for i, depth in enumerate(depths):
            dim = int(embed_dim * 2 ** i)
            mixer = "self" if i == self.num_stages - 1 else "channel"
            stages.append(PATStage(dim, depth, mixer, spatial_attn, n_div, mlp_ratio, rates[i], num_heads,
                                   attn_drop_rate, proj_drop_rate, act_layer, norm_layer, i > 0, merge_size, **dd))
            self.feature_info.append(dict(num_chs=dim, reduction=2 ** (i + 2), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = last
        self.head_hidden_size = feature_dim
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.conv_head = nn.Conv2d(last, feature_dim, 1, bias=False, **dd)
        self.act = act_layer()
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = Linear(feature_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self._initialize_weights()


_PAT_RENAMES = (
    (re.compile(r"\.spatial_mixing\.attn\.cfc1\."), ".spatial_mixing.gate_conv."),
    (re.compile(r"\.spatial_mixing\.attn\.bn\."), ".spatial_mixing.gate_norm."),
    (re.compile(r"\.spatial_mixing\.attn\.rpe_k\.lookup_table_bias$"), ".spatial_mixing.attn.rpe_bias"),
)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map a checkpoint in haiduo/PartialNet's layout onto :class:`PATNet` (see the module docstring); visattn's
    own layout passes unchanged. Strict load afterwards."""
    out = {}
    for key, value in official_to_timm_layout(state_dict).items():
        for pattern, new in _PAT_RENAMES:
            key = pattern.sub(new, key)
        out[key] = value
    return out


default_cfgs = generate_default_cfgs({name: paper_cfg(
    "2503.03148", pool_size=(7, 7), crop_pct=0.9, first_conv="patch_embed.proj", classifier="classifier",
    paper_name="Partial Convolution Meets Visual Attention", origin_url="https://github.com/haiduo/PartialNet")
    for name in PATNET_ARGS})


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> PATNet:
    depths = kwargs.get("depths", PATNET_ARGS[variant]["depths"])
    out_indices = kwargs.pop("out_indices", tuple(range(len(depths))))
    return build_model_with_cfg(
        PATNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **dict(PATNET_ARGS[variant], **kwargs),
    )


@register_model
def visattn_patnet_t0(pretrained: bool = False, **kwargs: Any) -> PATNet:
    """PATNet-T0 (width 32, depths 1-2-8-2, GELU, 4 heads in PAT_sf)."""
    return _create("visattn_patnet_t0", pretrained, kwargs)


@register_model
def visattn_patnet_t1(pretrained: bool = False, **kwargs: Any) -> PATNet:
    """PATNet-T1 (width 48, depths 1-2-8-2, GELU, PAT_sp on, 6 heads; release: 4)."""
    return _create("visattn_patnet_t1", pretrained, kwargs)


@register_model
def visattn_patnet_t2(pretrained: bool = False, **kwargs: Any) -> PATNet:
    """PATNet-T2 (width 64, depths 2-2-6-4, ReLU, 6 heads; release: 4)."""
    return _create("visattn_patnet_t2", pretrained, kwargs)


@register_model
def visattn_patnet_s(pretrained: bool = False, **kwargs: Any) -> PATNet:
    """PATNet-S (width 96, depths 2-2-9-4, ReLU, 6 heads; release: 4)."""
    return _create("visattn_patnet_s", pretrained, kwargs)


@register_model
def visattn_patnet_m(pretrained: bool = False, **kwargs: Any) -> PATNet:
    """PATNet-M (width 128, depths 2-3-16-4, ReLU, 6 heads; release: 4)."""
    return _create("visattn_patnet_m", pretrained, kwargs)


@register_model
def visattn_patnet_l(pretrained: bool = False, **kwargs: Any) -> PATNet:
    """PATNet-L (width 160, depths 2-3-20-4, ReLU, 6 heads; release: 4)."""
    return _create("visattn_patnet_l", pretrained, kwargs)
