"""Vision Transformers whose attention runs any visattn mixer: ``visattn_vit_{tiny,small,base}_patch16_224``.

The network is timm's :class:`~timm.models.vision_transformer.VisionTransformer` ("An Image is Worth 16x16 Words:
Transformers for Image Recognition at Scale", arXiv:2010.11929) with every block's attention replaced by visattn's
:class:`~visattn.nn.Attention` running ``mixer``; the attention output of each block is
``proj(mixer(q, k, v, grid))`` with ``q, k, v = qkv(LN(x))``, and with ``mixer="softmax"`` it is timm's
``proj(softmax(q k^T / sqrt(d)) v)`` exactly. Every other keyword goes to the mixer::

    import timm, visattn.models
    model = timm.create_model("visattn_vit_small_patch16_224", mixer="neighborhood", kernel_size=7)

Any other timm ViT / DeiT / EVA takes a mixer the same way after creation: ``visattn.replace_attention(
timm.create_model("deit_small_patch16_224"), "window", window_size=7)`` (timm's ``Attention`` and EVA's
``EvaAttention`` are replaced, weights kept).

``pretrained=True`` loads timm's weights of the ViT of the same size (the tag of ``pretrained_cfg``); the
mixer's own parameters (gates, feature maps), which timm's checkpoint does not hold, keep their initialisation
and every other key must match (a strict load, missing and unexpected keys listed).
"""

from __future__ import annotations

import inspect
from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from ..nn.replace import replace_attention
from ._pretrained import timm_pretrained_cfg

__all__ = ["VIT_ARGS", "TIMM_COUNTERPARTS", "vit_with_mixer"]

VIT_ARGS: dict[str, dict[str, int]] = {
    "visattn_vit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "visattn_vit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "visattn_vit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}
"""The architecture of each size, as timm's ``vit_*_patch16_224``."""

TIMM_COUNTERPARTS: dict[str, str] = {name: name.removeprefix("visattn_") for name in VIT_ARGS}
"""visattn model name -> the timm model with the same architecture and weights."""

_VIT_PARAMETERS = frozenset(inspect.signature(VisionTransformer.__init__).parameters) - {"self"}
_BUILD_PARAMETERS = frozenset({"features_only", "out_indices", "feature_cfg", "pretrained_cfg",
                               "pretrained_cfg_overlay", "pretrained_strict", "cache_dir"})


default_cfgs = generate_default_cfgs({
    f"{name}.{get_pretrained_cfg(timm_name).tag}": timm_pretrained_cfg(
        timm_name, url="", notes=(f"the weights of timm's {timm_name}.{get_pretrained_cfg(timm_name).tag}",))
    for name, timm_name in TIMM_COUNTERPARTS.items()
})


def vit_with_mixer(*, mixer: str = "softmax", mixer_kwargs: dict[str, Any] | None = None,
                   **vit_kwargs: Any) -> VisionTransformer:
    """timm's ``VisionTransformer(**vit_kwargs)`` with each block's attention running ``mixer`` (built with
    ``mixer_kwargs``), weights initialised as timm initialises them."""
    model = VisionTransformer(**vit_kwargs)
    replace_attention(model, mixer, **(mixer_kwargs or {}))
    model.mixer = mixer
    return model


def _keep_mixer_parameters(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm's ViT checkpoint filter, then the model's own values for the mixer parameters timm does not have."""
    state_dict = checkpoint_filter_fn(state_dict, model)
    own = model.state_dict()
    for key, value in own.items():
        if ".attn.mixer." in key and key not in state_dict:
            state_dict[key] = value
    return state_dict


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    model_kwargs = {k: v for k, v in kwargs.items() if k in _VIT_PARAMETERS or k in _BUILD_PARAMETERS}
    return model_kwargs, {k: v for k, v in kwargs.items() if k not in model_kwargs}


def _create(variant: str, pretrained: bool, mixer: str, kwargs: dict[str, Any]) -> VisionTransformer:
    if not isinstance(mixer, str):
        raise TypeError(f"mixer must be a registry name (visattn.list_mixers()), got {type(mixer).__name__}")
    model_kwargs, mixer_kwargs = _split_kwargs(kwargs)
    if "attn_layer" in model_kwargs:
        raise ValueError(f"{variant} sets its attention from mixer=; attn_layer={model_kwargs['attn_layer']!r} "
                         "cannot be combined with it")
    out_indices = model_kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        vit_with_mixer, variant, pretrained,
        pretrained_filter_fn=_keep_mixer_parameters,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        mixer=mixer, mixer_kwargs=mixer_kwargs,
        **dict(VIT_ARGS[variant], **model_kwargs),
    )


@register_model
def visattn_vit_tiny_patch16_224(pretrained: bool = False, mixer: str = "softmax", **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16 (5.7 M parameters) with ``mixer``; other keywords go to timm's ViT or, if it does not take them,
    to the mixer."""
    return _create("visattn_vit_tiny_patch16_224", pretrained, mixer, kwargs)


@register_model
def visattn_vit_small_patch16_224(pretrained: bool = False, mixer: str = "softmax",
                                  **kwargs: Any) -> VisionTransformer:
    """ViT-S/16 (22.1 M parameters) with ``mixer``; other keywords go to timm's ViT or, if it does not take them,
    to the mixer."""
    return _create("visattn_vit_small_patch16_224", pretrained, mixer, kwargs)


@register_model
def visattn_vit_base_patch16_224(pretrained: bool = False, mixer: str = "softmax", **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 (86.6 M parameters) with ``mixer``; other keywords go to timm's ViT or, if it does not take them,
    to the mixer."""
    return _create("visattn_vit_base_patch16_224", pretrained, mixer, kwargs)
