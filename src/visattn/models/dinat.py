"""DiNAT_s: DiNAT's blocks on Swin's skeleton, ``visattn_dinat_s_{tiny,small,base,large}`` (``_large_384``).

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

Image sizes: any. The input is zero-padded at the bottom / right to a multiple of 4, and odd maps to even before
each patch merging (as in the official code); attention pads maps smaller than ``kernel_size * dilation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from torch import Tensor, nn

from .nat import NAT, _cfg, _create
from .nat import checkpoint_filter_fn as nat_checkpoint_filter_fn

__all__ = ["DINAT_S_ARGS", "PatchEmbed", "PatchMerging", "checkpoint_filter_fn"]


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
    **{f"visattn_dinat_s_{s}.in1k": _cfg(f"{_URL}dinat_s_{s}_in1k_224.pth", None, first_conv="patch_embed.proj")
       for s in ("tiny", "small", "base")},
    "visattn_dinat_s_large.in22k_ft_in1k": _cfg(f"{_URL}dinat_s_large_in1k_224.pth", None,
                                                first_conv="patch_embed.proj"),
    "visattn_dinat_s_large_384.in22k_ft_in1k": _cfg(f"{_URL}dinat_s_large_in1k_384.pth", None,
                                                    first_conv="patch_embed.proj", input_size=(3, 384, 384),
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
