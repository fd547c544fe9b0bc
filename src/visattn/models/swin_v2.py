"""Swin Transformer V2 T/S/B (window 8 and 16, 256 px) with its window attention on visattn's ``WindowAttentionV2``.

Paper: Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution" (arXiv 2111.09883). Inside each
(shifted) window, scaled cosine attention with a log-spaced continuous position bias and residual post-norm:

    ``Sim(q_i, k_j) = cos(q_i, k_j) / tau + B_ij``,   ``B = 16 sigmoid(MLP(sign(d) log2(1 + |8 d / (W - 1)|) / 3))``,
    ``x = x + LN(Attn(x))``,   ``x = x + LN(MLP(x))``.

The network is timm's ``SwinTransformerV2`` built with timm's ``swinv2_{tiny,small,base}_window{8,16}_256``
arguments, with every block's ``WindowAttention`` replaced by :class:`SwinV2WindowAttention`, visattn's
:class:`~visattn.nn.swin_v2.WindowAttentionV2` (cosine logits through fused SDPA with the bias and shift mask as
one float mask; the position-bias MLP evaluated once per weight version when no gradient is needed). The
window partition, cyclic shift and padding stay timm's. Parameter names are timm's, so timm's checkpoints
(``timm/swinv2_*_256.ms_in1k`` on the Hugging Face hub) load unchanged: :func:`checkpoint_filter_fn` is timm's
filter (the official Microsoft layout is converted, buffers dropped, patch embedding resampled) followed by a
strict load.

Image sizes: built for 256, a model runs other sizes when created with ``dynamic_img_size=True`` (or
``strict_img_size=False``); maps whose sides are not multiples of the window are zero-padded at the bottom and
right, and the padded tokens take part in attention as in timm and the official code. ``img_size`` at creation
sets the size the shift masks are precomputed for.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import swin_transformer_v2 as timm_swin
from torch import Tensor, nn

from .._checks import check_image_batch
from ..nn.swin_v2 import WindowAttentionV2, relative_position_index
from ._pretrained import counterpart_cfgs

__all__ = ["TIMM_COUNTERPARTS", "SwinTransformerV2", "SwinV2WindowAttention", "checkpoint_filter_fn"]

SWIN_V2_ARGS: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}
"""Architecture of each size, as timm's ``swinv2_*_256`` models."""

WINDOWS = (8, 16)

TIMM_COUNTERPARTS: dict[str, str] = {
    f"visattn_swinv2_{size}_window{w}_256": f"swinv2_{size}_window{w}_256" for size in SWIN_V2_ARGS for w in WINDOWS
}
"""visattn model name -> the timm model with the same architecture and weights."""


class SwinV2WindowAttention(WindowAttentionV2):
    """:class:`~visattn.nn.swin_v2.WindowAttentionV2` taking over the parameters of a timm ``WindowAttention``.

    Adds what timm's Swin-V2 blocks call on their attention: ``set_window_size`` (new window, same MLP
    weights: the continuous bias extends to any window) and ``init_non_persistent_buffers``.
    """

    @classmethod
    def from_timm(cls, source: timm_swin.WindowAttention) -> SwinV2WindowAttention:
        """A module sharing ``source``'s parameters (``qkv``, ``q_bias``, ``v_bias``, ``logit_scale``,
        ``cpb_mlp``, ``proj``) and its dropout rates."""
        with torch.device(source.qkv.weight.device):
            new = cls(source.dim, tuple(source.window_size), source.num_heads, source.q_bias is not None,
                      source.attn_drop.p, source.proj_drop.p, tuple(source.pretrained_window_size))
        new.logit_scale = source.logit_scale
        new.cpb_mlp = source.cpb_mlp
        new.qkv = source.qkv
        new.q_bias = source.q_bias
        new.v_bias = source.v_bias
        new.proj = source.proj
        return new

    def set_window_size(self, window_size: int | Sequence[int]) -> None:
        """Attend in windows of ``window_size`` from now on (the position-bias MLP is kept)."""
        size = timm_swin.to_2tuple(window_size)
        if tuple(size) == self.window_size:
            return
        self.window_size = tuple(size)
        self.init_non_persistent_buffers()

    def init_non_persistent_buffers(self) -> None:
        """Recompute the relative position index for the current window on the module's device."""
        device = self.proj.weight.device
        self.register_buffer("relative_position_index", relative_position_index(self.window_size, device),
                             persistent=False)


class SwinTransformerV2(timm_swin.SwinTransformerV2):
    """timm's ``SwinTransformerV2`` with every block's attention replaced by :class:`SwinV2WindowAttention`.

    Everything else (patch embedding, shifted-window partition, post-norm blocks, patch merging, head,
    ``forward_intermediates``, ``set_grad_checkpointing``, ``reset_classifier``) is timm's. Unknown keyword
    arguments raise ``TypeError`` listing the accepted ones.
    """

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - _SWIN_PARAMETERS)
        if unknown:
            raise TypeError(f"unknown Swin-V2 argument(s) {unknown}; accepted: {sorted(_SWIN_PARAMETERS)}")
        super().__init__(**kwargs)
        for block in self.modules():
            if isinstance(block, timm_swin.SwinTransformerV2Block):
                block.attn = SwinV2WindowAttention.from_timm(block.attn)

    def _check_input(self, x: Tensor) -> None:
        check_image_batch(x)
        size = tuple(x.shape[-2:])
        if not self.dynamic_img_size and size != tuple(self.patch_embed.img_size):
            raise ValueError(f"img_size={size} differs from the size this Swin-V2 was built for, "
                             f"img_size={tuple(self.patch_embed.img_size)}; create it with dynamic_img_size=True to "
                             "run any size (maps are padded to a multiple of the window)")

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return super().forward_features(x)

    def forward_intermediates(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        self._check_input(x)
        return super().forward_intermediates(x, *args, **kwargs)


_SWIN_PARAMETERS = frozenset(inspect.signature(timm_swin.SwinTransformerV2.__init__).parameters) - {"self"}


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map a timm (or official Microsoft) Swin-V2 checkpoint onto :class:`SwinTransformerV2`.

    The key mapping is timm's: identity for timm's checkpoints (``layers.{i}.blocks.{j}.attn.{qkv.weight, q_bias,
    v_bias, logit_scale, cpb_mlp.0.weight, cpb_mlp.0.bias, cpb_mlp.2.weight, proj.*}``, norms, MLP,
    ``layers.{i}.downsample``, ``head.fc``); for the official layout ``layers.{i}.downsample`` moves to stage
    ``i + 1`` and ``head`` to ``head.fc``; the buffers ``relative_position_index``, ``relative_coords_table``
    and ``attn_mask`` are dropped and the patch embedding is resampled to the model's patch size. The load that
    follows is strict: PyTorch's error lists missing and unexpected keys.
    """
    return timm_swin.checkpoint_filter_fn(dict(state_dict), model)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> SwinTransformerV2:
    size, window = variant.removeprefix("visattn_swinv2_").removesuffix("_256").split("_window")
    args = dict(SWIN_V2_ARGS[size], window_size=int(window))
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(SwinTransformerV2, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
                                **dict(args, **kwargs))


default_cfgs = generate_default_cfgs(counterpart_cfgs(TIMM_COUNTERPARTS, url=""))


@register_model
def visattn_swinv2_tiny_window8_256(pretrained: bool = False, **kwargs: Any) -> SwinTransformerV2:
    """Swin-V2-T, window 8, 256 px (timm ``swinv2_tiny_window8_256``) on visattn's window attention."""
    return _create("visattn_swinv2_tiny_window8_256", pretrained, **kwargs)


@register_model
def visattn_swinv2_tiny_window16_256(pretrained: bool = False, **kwargs: Any) -> SwinTransformerV2:
    """Swin-V2-T, window 16, 256 px (timm ``swinv2_tiny_window16_256``) on visattn's window attention."""
    return _create("visattn_swinv2_tiny_window16_256", pretrained, **kwargs)


@register_model
def visattn_swinv2_small_window8_256(pretrained: bool = False, **kwargs: Any) -> SwinTransformerV2:
    """Swin-V2-S, window 8, 256 px (timm ``swinv2_small_window8_256``) on visattn's window attention."""
    return _create("visattn_swinv2_small_window8_256", pretrained, **kwargs)


@register_model
def visattn_swinv2_small_window16_256(pretrained: bool = False, **kwargs: Any) -> SwinTransformerV2:
    """Swin-V2-S, window 16, 256 px (timm ``swinv2_small_window16_256``) on visattn's window attention."""
    return _create("visattn_swinv2_small_window16_256", pretrained, **kwargs)


@register_model
def visattn_swinv2_base_window8_256(pretrained: bool = False, **kwargs: Any) -> SwinTransformerV2:
    """Swin-V2-B, window 8, 256 px (timm ``swinv2_base_window8_256``) on visattn's window attention."""
    return _create("visattn_swinv2_base_window8_256", pretrained, **kwargs)


@register_model
def visattn_swinv2_base_window16_256(pretrained: bool = False, **kwargs: Any) -> SwinTransformerV2:
    """Swin-V2-B, window 16, 256 px (timm ``swinv2_base_window16_256``) on visattn's window attention."""
    return _create("visattn_swinv2_base_window16_256", pretrained, **kwargs)
