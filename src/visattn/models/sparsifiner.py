"""Sparsifiner-DeiT-S: a DeiT whose every attention keeps the ``ceil(0.25 N)`` keys a low-rank predictor picks.

Paper: Wei et al., "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers"
(arXiv 2303.13755). Each block is DeiT's pre-norm block ``x = x + proj(attn(LN(x)))``, ``x = x + MLP(LN(x))``, with
the attention of visattn's :class:`~visattn.nn.sparsifiner.SparsifinerMixer`: per head, a connectivity predictor

    q' = W_q q,  k' = W_k k                     (head_dim -> head_dim / 2)
    coef = top8(softmax(q' (k'^T P_n) heads^-1/2)),   approx = coef (|P_back|^T with entries < 0.02 zeroed)
    M_i = the ceil(0.25 N) keys with the largest approx_i,j     (the class token's row: all keys)
    attn = softmax(masked_fill(q k^T d^-1/2, ~M, -inf)),  out = attn v

(``P_n``, ``P_back``: ``N x N/6`` learned; the mask is detached), so the attention density of a non-class row is
``ceil(0.25 N) / N`` (the paper's 25 % connectivity; 50 / 197 at 224). The network around it is timm's DeiT
(``VisionTransformer``, patch 16, 384 channels, depth 12, 6 heads, class token; timm's forward_intermediates,
grad checkpointing, ``reset_classifier``). The released code (lim142857/Sparsifiner, ``src/main.py``) configures
Sparsifiner on DeiT-S only (and on LV-ViT, which neither visattn nor timm has), so DeiT-S is the one size here.

Weights: ``pretrained=True`` loads timm's DeiT-S (``deit_small_patch16_224.fb_in1k``), the dense teacher the
student starts from, as the paper does; the predictor keeps its initialisation (trained afterwards by
:func:`visattn.train.sparsify.sparsify`). A checkpoint of the released code (DeiT keys plus
``blocks.{i}.attn.mask_predictor.{proj_c_q, proj_c_k, proj_n, proj_back_n}``; the paper published no weights)
loads through :func:`checkpoint_filter_fn` with ``pretrained_cfg_overlay=dict(file=path)``.

The predictor's ``P_n`` has one row per token, so a model is built for one image size (``img_size``, default
224): ``N = (img_size / patch_size)^2 + 1``; ``dynamic_img_size`` is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..nn.sparsifiner import SparsifinerMixer
from ._pretrained import timm_pretrained_cfg
from .vit import _keep_mixer_parameters, _split_kwargs, vit_with_mixer

__all__ = ["SPARSIFINER_ARGS", "TIMM_TEACHERS", "checkpoint_filter_fn", "num_tokens", "sparsifiner_mixers"]

SPARSIFINER_ARGS: dict[str, dict[str, Any]] = {
    "visattn_sparsifiner_deit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
}
"""Sizes, as the released ``Sparsifiner(patch_size=16, embed_dim=384, depth=12, num_heads=6, qkv_bias=True)``."""

TIMM_TEACHERS: dict[str, str] = {"visattn_sparsifiner_deit_small_patch16_224": "deit_small_patch16_224"}
"""visattn model name -> the timm DeiT it is distilled from (and whose weights ``pretrained=True`` loads)."""

PREDICTOR_DEFAULTS: dict[str, Any] = dict(keep_rate=0.25, reduce_n_factor=6, reduce_c_factor=2, basis_topk=8,
                                          basis_threshold=0.02)
"""The released default configuration (``sparsifiner_default_config.yaml``): 25 % of the keys per query, token
reduction 6, channel reduction 2, 8 basis coefficients, basis threshold 0.02."""

_OFFICIAL = {"proj_c_q": "proj_q", "proj_c_k": "proj_k", "proj_n": "proj_n", "proj_back_n": "proj_back_n"}


def num_tokens(img_size: int | tuple[int, int], patch_size: int | tuple[int, int], prefix_tokens: int = 1) -> int:
    """``N``: the patch grid of ``img_size`` plus ``prefix_tokens`` (class and register tokens)."""
    h, w = to_2tuple(img_size)
    ph, pw = to_2tuple(patch_size)
    if h % ph or w % pw:
        raise ValueError(f"img_size {img_size!r} must be a multiple of patch_size {patch_size!r} for Sparsifiner, "
                         "whose predictor has one row per token")
    return (h // ph) * (w // pw) + prefix_tokens


def sparsifiner_mixers(model: nn.Module) -> list[SparsifinerMixer]:
    """The Sparsifiner mixers of ``model``, in module order (one per block)."""
    return [m for m in model.modules() if isinstance(m, SparsifinerMixer)]


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Map a checkpoint onto a Sparsifiner model: the released code's layout or a dense DeiT.

    ``{"model": ...}`` is unwrapped; ``blocks.{i}.attn.mask_predictor.{proj_c_q, proj_c_k, proj_n, proj_back_n}``
    -> ``blocks.{i}.attn.mixer.{proj_q, proj_k, proj_n, proj_back_n}``; then timm's ViT filter (position
    embeddings resized to the model's grid, ...). Predictor parameters the checkpoint lacks (a dense DeiT, the
    teacher) keep the model's own values; every other key must match (the load that follows is strict).
    """
    for key in ("model", "model_ema", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    pattern = re.compile(r"\.attn\.mask_predictor\.(proj_c_q|proj_c_k|proj_n|proj_back_n)\b")
    renamed = {pattern.sub(lambda m: f".attn.mixer.{_OFFICIAL[m.group(1)]}", k): v for k, v in state_dict.items()}
    return _keep_mixer_parameters(renamed, model)


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> VisionTransformer:
    model_kwargs, mixer_kwargs = _split_kwargs(kwargs)
    for name in ("attn_layer", "dynamic_img_size"):
        if model_kwargs.get(name):
            raise ValueError(f"{variant} builds its own attention for a fixed token count; {name}="
                             f"{model_kwargs[name]!r} cannot be combined with it")
    if "num_tokens" in mixer_kwargs:
        raise ValueError(f"num_tokens is set from img_size and patch_size for {variant}, got "
                         f"num_tokens={mixer_kwargs['num_tokens']!r}")
    args = dict(SPARSIFINER_ARGS[variant], **model_kwargs)
    prefix = int(args.get("class_token", True)) + int(args.get("reg_tokens", 0) or 0)
    tokens = num_tokens(args.get("img_size", 224), args["patch_size"], prefix)
    out_indices = args.pop("out_indices", 3)
    return build_model_with_cfg(
        vit_with_mixer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), mixer="sparsifiner",
        mixer_kwargs=dict(PREDICTOR_DEFAULTS, num_tokens=tokens, **mixer_kwargs), **args)


default_cfgs = generate_default_cfgs({
    f"{name}.{get_pretrained_cfg(timm_name).tag}": timm_pretrained_cfg(
        timm_name, url="", fixed_input_size=True, paper_ids="arXiv:2303.13755",
        origin_url="https://github.com/lim142857/Sparsifiner",
        notes=(f"the dense teacher's weights (timm's {timm_name}.{get_pretrained_cfg(timm_name).tag}); the "
               "connectivity predictor is trained by visattn.train.sparsify.sparsify",))
    for name, timm_name in TIMM_TEACHERS.items()
})


@register_model
def visattn_sparsifiner_deit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Sparsifiner-DeiT-S: DeiT-S (22.05 M) with a connectivity predictor per block (+0.20 M), 25 % of the keys
    per query. Keywords: timm's ViT arguments, and the predictor's (``keep_rate``, ``reduce_n_factor``,
    ``reduce_c_factor``, ``basis_topk``, ``basis_threshold``, ``backend``)."""
    return _create("visattn_sparsifiner_deit_small_patch16_224", pretrained, kwargs)
