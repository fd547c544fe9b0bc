"""DaViT T/S/B/L with its spatial window and channel group attention on visattn's modules.

Paper: Ding et al., "DaViT: Dual Attention Vision Transformers" (arXiv 2204.03645). Each depth unit is a spatial
block then a channel block; both are ``x = x + cpe(x)`` (depthwise 3 x 3 ConvPosEnc), ``x = x + attn(LN(x))``,
``x = x + cpe(x)``, ``x = x + MLP(LN(x))``. Spatial attention is softmax attention inside 7 x 7 windows (no
position bias); channel group attention, per group of ``C_g = C / heads`` channels, is

    ``A = softmax((k * C_g^-1/2)^T v)`` (``C_g x C_g``),   ``out = q A^T``.

The network is timm's :class:`~timm.models.davit.DaVit` (stem, downsampling, stages, head, ``feature_info``,
``forward_intermediates``, grad checkpointing, ``reset_classifier``) with each ``SpatialBlock`` replaced by
:class:`DaVitSpatialBlock`, whose attention is visattn's :class:`~visattn.nn.davit.SpatialWindowAttention` (the
window mask on the whole map through visattn's tile engine, no window partition), and the attention of each
``ChannelBlock`` replaced by visattn's :class:`~visattn.nn.davit.ChannelAttention` (channel weights folded into the
output projection). The parameters are moved, not copied, and keep timm's names.

Checkpoints: the key mapping is the identity (``stages.{i}.blocks.{j}.{0,1}.{cpe1.proj, norm1, attn.qkv,
attn.proj, cpe2.proj, norm2, mlp.fc1, mlp.fc2}``, ``stem.*``, ``stages.{i}.downsample.*``, ``head.{norm,fc}``),
so timm's ``davit_{tiny,small,base}.msft_in1k`` weights load unchanged; the official repository's layout
(``patch_embeds``, ``main_blocks``, ``cpe.0/1``, ``norms``) is renamed by timm's ``checkpoint_filter_fn``. The
load is strict: keys that do not match raise PyTorch's error listing the missing and unexpected keys.

Image sizes: any. As in DaViT, the stem pads the image to a multiple of 4, each downsampling layer its map to a
multiple of 2, and each spatial block its map to a multiple of the window (zero tokens that take part as keys).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import davit as timm_davit
from torch import Tensor, nn

from ..nn.davit import ChannelAttention, SpatialWindowAttention
from ._pretrained import counterpart_cfgs

__all__ = ["DAVIT_ARGS", "TIMM_COUNTERPARTS", "DaVit", "DaVitSpatialBlock", "checkpoint_filter_fn"]

DAVIT_ARGS: dict[str, dict[str, tuple[int, ...]]] = {
    "visattn_davit_tiny": dict(depths=(1, 1, 3, 1), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24)),
    "visattn_davit_small": dict(depths=(1, 1, 9, 1), embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24)),
    "visattn_davit_base": dict(depths=(1, 1, 9, 1), embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32)),
    "visattn_davit_large": dict(depths=(1, 1, 9, 1), embed_dims=(192, 384, 768, 1536), num_heads=(6, 12, 24, 48)),
}
"""The architecture of each size, as timm's ``davit_{tiny,small,base,large}``."""

TIMM_COUNTERPARTS: dict[str, str] = {name: name.removeprefix("visattn_") for name in DAVIT_ARGS}
"""visattn model name -> the timm model with the same architecture and weights."""

_MODEL_ARGS = frozenset(inspect.signature(timm_davit.DaVit.__init__).parameters) - {"self"}


class DaVitSpatialBlock(nn.Module):
    """DaViT's spatial block, NCHW in and out, built from a timm ``SpatialBlock`` (its modules are taken over).

    ``s = x + cpe1(x)``; ``x = s + drop_path(attn(norm1(s)))`` on the channels-last map; ``x = x + cpe2(x)``;
    ``x = x + drop_path(mlp(norm2(x)))``. ``attn`` is :class:`~visattn.nn.davit.SpatialWindowAttention` holding
    timm's ``qkv`` and ``proj`` layers.
    """

    def __init__(self, source: timm_davit.SpatialBlock) -> None:
        super().__init__()
        old = source.attn
        self.dim, self.num_heads, self.window_size = source.dim, source.num_heads, tuple(source.window_size)
        self.cpe1, self.norm1 = source.cpe1, source.norm1
        with torch.device(old.qkv.weight.device):
            self.attn = SpatialWindowAttention(self.dim, self.num_heads, self.window_size,
                                               qkv_bias=old.qkv.bias is not None)
        self.attn.qkv, self.attn.proj = old.qkv, old.proj
        self.drop_path1 = source.drop_path1
        self.cpe2 = source.cpe2
        self.norm2, self.mlp = source.norm2, source.mlp
        self.drop_path2 = getattr(source, "drop_path2", None)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.cpe1(x).permute(0, 2, 3, 1)
        x = shortcut + self.drop_path1(self.attn(self.norm1(shortcut)))
        x = self.cpe2(x.permute(0, 3, 1, 2))
        if self.mlp is None:
            return x
        x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)


def _channel_attention(source: timm_davit.ChannelAttention) -> ChannelAttention:
    """visattn's channel attention holding ``source``'s ``qkv`` and ``proj`` layers."""
    dim = source.qkv.in_features
    with torch.device(source.qkv.weight.device):
        attn = ChannelAttention(dim, source.num_heads, qkv_bias=source.qkv.bias is not None)
    attn.qkv, attn.proj = source.qkv, source.proj
    return attn


class DaVit(timm_davit.DaVit):
    """timm's ``DaVit`` with visattn's spatial blocks and channel attention (see the module docstring).

    Arguments are timm's ``DaVit`` arguments; unknown names raise a ``TypeError`` listing the accepted ones, and
    the Florence-2 variants' ``channel_attn_v2=True`` (a different channel attention) raises a ``ValueError``.
    """

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - _MODEL_ARGS)
        if unknown:
            raise TypeError(f"unknown DaViT argument(s) {unknown}; accepted: {sorted(_MODEL_ARGS)}")
        if kwargs.get("channel_attn_v2", False):
            raise ValueError("visattn DaViT builds DaViT's channel attention; channel_attn_v2=True (Florence-2's "
                             "variant) is not supported")
        super().__init__(**kwargs)
        for stage in self.stages:
            for unit in stage.blocks:
                for name, block in list(unit.named_children()):
                    if isinstance(block, timm_davit.SpatialBlock):
                        setattr(unit, name, DaVitSpatialBlock(block))
                    elif isinstance(block, timm_davit.ChannelBlock):
                        block.attn = _channel_attention(block.attn)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map a DaViT checkpoint onto :class:`DaVit`: timm's layout unchanged (identity), the official repository's
    renamed by timm's filter (see the module docstring). Strict load afterwards."""
    return dict(timm_davit.checkpoint_filter_fn(dict(state_dict), model))


default_cfgs = generate_default_cfgs(counterpart_cfgs(TIMM_COUNTERPARTS, url=""))


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> DaVit:
    depths = kwargs.get("depths", DAVIT_ARGS[variant]["depths"])
    out_indices = kwargs.pop("out_indices", tuple(range(len(depths))))
    return build_model_with_cfg(
        DaVit, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **dict(DAVIT_ARGS[variant], **kwargs),
    )


@register_model
def visattn_davit_tiny(pretrained: bool = False, **kwargs: Any) -> DaVit:
    """DaViT-T (28.4 M parameters; timm ``davit_tiny``) on visattn's attention."""
    return _create("visattn_davit_tiny", pretrained, kwargs)


@register_model
def visattn_davit_small(pretrained: bool = False, **kwargs: Any) -> DaVit:
    """DaViT-S (49.7 M parameters; timm ``davit_small``) on visattn's attention."""
    return _create("visattn_davit_small", pretrained, kwargs)


@register_model
def visattn_davit_base(pretrained: bool = False, **kwargs: Any) -> DaVit:
    """DaViT-B (88.0 M parameters; timm ``davit_base``) on visattn's attention."""
    return _create("visattn_davit_base", pretrained, kwargs)


@register_model
def visattn_davit_large(pretrained: bool = False, **kwargs: Any) -> DaVit:
    """DaViT-L (196.8 M parameters; timm ``davit_large``, no released ImageNet-1k weights) on visattn's attention."""
    return _create("visattn_davit_large", pretrained, kwargs)
