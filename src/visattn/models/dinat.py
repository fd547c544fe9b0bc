"""DiNAT_s (``visattn_dinat_s_*``) and the isotropic NAT / DiNAT (``visattn_{nat,dinat}_isotropic_{small,base}``).

Paper: Hassani, Shi, "Dilated Neighborhood Attention Transformer" (arXiv 2209.15001), its alternative model
DiNAT_s: Swin Transformer's non-overlapping 4x4 patch embedding (LayerNorm after it) and patch merging (2x2
neighbors concatenated, LayerNorm over ``4C``, linear ``4C -> 2C`` without bias) around DiNAT's blocks

    ``x = x + NA_d(LN(x))``,   ``x = x + MLP(LN(x))``   (MLP ratio 4, no layer scale),

with dilations alternating 1 and 8, 4, 2, 1 over the four levels (13, 6, 3, 1 at 384). Configurations from
SHI-Labs' ``classification/dinats.py``. The network is :class:`visattn.models.nat.NAT` with this stem and
downsampler, so it shares NAT's interface (features, intermediates, checkpointing). The official checkpoints name
the levels ``layers``; :func:`checkpoint_filter_fn` renames ``layers.`` to ``levels.`` and then applies
:func:`visattn.models.nat.checkpoint_filter_fn` (strict: missing and unexpected keys listed). Hugging Face has no
DiNAT_s.

The isotropic models (:class:`NATIsotropic`, same paper) are a ViT-like column of NAT blocks on a 16x16 patch
embedding; their checkpoints' names are ours. (ViT-rpb, the release's dense-attention baseline, is not built.)

Image sizes: any. The input is zero-padded at the bottom / right to a multiple of 4, and odd maps to even before
each patch merging (as in the official code); attention pads maps smaller than ``kernel_size * dilation``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ._head import ChannelsLastHead, check_global_pool
from ._init import trunc_normal_init
from ._intermediates import channels_last_intermediates
from .nat import _BUILD_KWARGS, DINAT_ARXIV, NAT, NATBlock, _cfg, _create
from .nat import checkpoint_filter_fn as nat_checkpoint_filter_fn

__all__ = ["DINAT_S_ARGS", "ISOTROPIC_ARGS", "NATIsotropic", "PatchEmbed", "PatchMerging", "checkpoint_filter_fn"]


class PatchEmbed(nn.Module):
    """4x4 stride-4 convolution (input zero-padded to a multiple of 4), then LayerNorm: ``-> (B, H/4, W/4, C)``."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        pad_h, pad_w = -x.shape[-2] % self.patch_size, -x.shape[-1] % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin's patch merging, channels-last: odd sides zero-padded, ``[x(0,0), x(1,0), x(0,1), x(1,1)]`` of every
    2x2 cell concatenated, LayerNorm over ``4C``, linear to ``2C`` without bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] % 2 or x.shape[2] % 2:
            x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


_DILATIONS_224 = ((1, 8), (1, 4), (1, 2) * 9, (1, 1))
_LARGE = dict(depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=4.0, drop_path_rate=0.35,
              kernel_size=7)
DINAT_S_ARGS: dict[str, dict[str, Any]] = {
    "dinat_s_tiny": dict(depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=4.0,
                         drop_path_rate=0.2, kernel_size=7, dilations=((1, 8), (1, 4), (1, 2) * 3, (1, 1))),
    "dinat_s_small": dict(depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=4.0,
                          drop_path_rate=0.3, kernel_size=7, dilations=_DILATIONS_224),
    "dinat_s_base": dict(depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=4.0,
                         drop_path_rate=0.5, kernel_size=7, dilations=_DILATIONS_224),
    "dinat_s_large": dict(_LARGE, dilations=_DILATIONS_224),
    "dinat_s_large_384": dict(_LARGE, dilations=((1, 13), (1, 6), (1, 3) * 9, (1, 1))),
}
"""Each model's arguments, as in SHI-Labs' ``classification/dinats.py``."""


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """An official DiNAT_s checkpoint (levels named ``layers``) -> ``model``'s state dict (strict)."""
    for wrapper in ("model", "state_dict", "model_ema"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]
            break
    renamed = {("levels." + k[len("layers."):] if k.startswith("layers.") else k): v for k, v in state_dict.items()}
    return nat_checkpoint_filter_fn(renamed, model)


def load_checkpoint(model: NAT, state_dict: Mapping[str, Any]) -> None:
    """Load an official DiNAT_s checkpoint into ``model`` (strict, see :func:`checkpoint_filter_fn`)."""
    model.load_state_dict(checkpoint_filter_fn(state_dict, model))


def _create_s(variant: str, pretrained: bool = False, **kwargs: Any) -> NAT:
    args = dict(DINAT_S_ARGS[variant.removeprefix("visattn_")], stem_layer=PatchEmbed, downsample_layer=PatchMerging)
    return _create(variant, pretrained, args=args, filter_fn=checkpoint_filter_fn, **kwargs)


_URL = "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/"
default_cfgs = generate_default_cfgs({
    **{f"visattn_dinat_s_{s}.in1k": _cfg(DINAT_ARXIV, f"{_URL}dinat_s_{s}_in1k_224.pth", None,
                                         first_conv="patch_embed.proj") for s in ("tiny", "small", "base")},
    "visattn_dinat_s_large.in22k_ft_in1k": _cfg(DINAT_ARXIV, f"{_URL}dinat_s_large_in1k_224.pth", None,
                                                first_conv="patch_embed.proj"),
    "visattn_dinat_s_large_384.in22k_ft_in1k": _cfg(DINAT_ARXIV, f"{_URL}dinat_s_large_in1k_384.pth", None,
                                                    first_conv="patch_embed.proj", input_size=384,
                                                    pool_size=(12, 12), crop_pct=1.0),
})


@register_model
def visattn_dinat_s_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT_s-Tiny (28M parameters in the paper)."""
    return _create_s("visattn_dinat_s_tiny", pretrained, **kwargs)


@register_model
def visattn_dinat_s_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT_s-Small (50M)."""
    return _create_s("visattn_dinat_s_small", pretrained, **kwargs)


@register_model
def visattn_dinat_s_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT_s-Base (88M)."""
    return _create_s("visattn_dinat_s_base", pretrained, **kwargs)


@register_model
def visattn_dinat_s_large(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT_s-Large (197M), ImageNet-22k pre-trained, fine-tuned on ImageNet-1k at 224."""
    return _create_s("visattn_dinat_s_large", pretrained, **kwargs)


@register_model
def visattn_dinat_s_large_384(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT_s-Large at 384 (dilations 13, 6, 3, 1)."""
    return _create_s("visattn_dinat_s_large_384", pretrained, **kwargs)


class NATIsotropic(ChannelsLastHead):
    """Isotropic NAT / DiNAT (DiNAT paper, ``classification/isotropic.py``): a 16x16 patch embedding, ``depth``
    blocks at one resolution (dilation 1 in even blocks, ``dilation`` in odd ones), LayerNorm, average pooling and
    a linear classifier. Parameter names are the official ones (``patch_embed``, ``layers.i``, ``norm``, ``head``).
    Any image size (padded to a multiple of 16; attention pads maps below ``kernel_size * dilation``)."""

    def __init__(self, embed_dim: int = 384, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 kernel_size: int = 7, dilation: int = 1, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "avg", qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1) -> None:
        super().__init__()
        check_global_pool(global_pool)
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.layers = nn.Sequential(*(NATBlock(embed_dim, num_heads, kernel_size, 1 if i % 2 == 0 else dilation,
                                               mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, rates[i], None)
                                      for i in range(depth)))
        self.grad_checkpointing = False
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"layers.{i}") for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(partial(trunc_normal_init, reset_layer_norm=True))

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"rpb"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^patch_embed", blocks=[(r"^layers\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _run(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Each requested block's output map (``(B, C, H, W)``, the last normed if ``norm``)."""
        return channels_last_intermediates(
            x, lambda t: self.pos_drop(self.patch_embed(t)), [partial(self._run, block) for block in self.layers],
            self.norm, indices, norm, stop_early, output_fmt, intermediates_only)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        self.prune_norm_and_head(prune_norm, prune_head)
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pos_drop(self.patch_embed(x))
        for block in self.layers:
            x = self._run(block, x)
        return self.norm(x)



ISOTROPIC_ARGS: dict[str, dict[str, Any]] = {
    "nat_isotropic_small": dict(embed_dim=384, depth=12, num_heads=12, dilation=1, drop_path_rate=0.1),
    "dinat_isotropic_small": dict(embed_dim=384, depth=12, num_heads=12, dilation=2, drop_path_rate=0.1),
    "nat_isotropic_base": dict(embed_dim=768, depth=12, num_heads=24, dilation=1, drop_path_rate=0.4),
    "dinat_isotropic_base": dict(embed_dim=768, depth=12, num_heads=24, dilation=2, drop_path_rate=0.4),
}
"""Isotropic models as in SHI-Labs' ``classification/isotropic.py`` (kernel 7, MLP ratio 4, patch 16)."""

_ISO_PARAMETERS = frozenset(inspect.signature(NATIsotropic.__init__).parameters) - {"self"}


def _create_isotropic(variant: str, pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    unknown = sorted(set(kwargs) - _ISO_PARAMETERS - _BUILD_KWARGS)
    if unknown:
        raise TypeError(f"{variant} got unexpected keyword arguments {unknown}; it takes {sorted(_ISO_PARAMETERS)}")
    args = dict(ISOTROPIC_ARGS[variant.removeprefix("visattn_")], **kwargs)
    out_indices = args.pop("out_indices", (args["depth"] - 1,))
    return build_model_with_cfg(NATIsotropic, variant, pretrained, pretrained_filter_fn=nat_checkpoint_filter_fn,
                                feature_cfg=dict(feature_cls="getter", out_indices=out_indices), **args)


_ISO_URL = "https://shi-labs.com/projects/dinat/checkpoints/isotropic/"
default_cfgs.update(generate_default_cfgs({
    f"visattn_{name}.in1k": _cfg(DINAT_ARXIV, f"{_ISO_URL}{name}_in1k_224.pth", None, first_conv="patch_embed.proj",
                                 pool_size=(14, 14)) for name in ISOTROPIC_ARGS
}))


@register_model
def visattn_nat_isotropic_small(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    """NAT-iso-Small (22M parameters in the DiNAT paper)."""
    return _create_isotropic("visattn_nat_isotropic_small", pretrained, **kwargs)


@register_model
def visattn_dinat_isotropic_small(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    """DiNAT-iso-Small (22M; dilation 2 in odd blocks)."""
    return _create_isotropic("visattn_dinat_isotropic_small", pretrained, **kwargs)


@register_model
def visattn_nat_isotropic_base(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    """NAT-iso-Base (86M)."""
    return _create_isotropic("visattn_nat_isotropic_base", pretrained, **kwargs)


@register_model
def visattn_dinat_isotropic_base(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    """DiNAT-iso-Base (86M)."""
    return _create_isotropic("visattn_dinat_isotropic_base", pretrained, **kwargs)
