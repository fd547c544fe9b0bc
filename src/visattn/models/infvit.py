"""InfViT: the 4-layer Vision Transformer with Linear-InfSA attention, ``visattn_infvit_linear_patch16_224``.

Paper: Roffo et al., "Self-Attention And Beyond the Infinite: Towards Linear Transformers with Infinite
Self-Attention" (arXiv 2603.00175); official code giorgioroffo/infinite-self-attention. Every block is a pre-norm
ViT block whose attention is visattn's :class:`~visattn.nn.infsa.LinearInfSAMixer` inside ``proj(.(qkv(LN(x))))``:

    q_bar = sum_t w_t q_t,  w_t = ||q_t|| / sum_s ||q_s||,   a_j = relu(q_bar . k_j / d) / sum_l relu(q_bar . k_l / d)
    out_i = rho sum_j a_j v_j   for every token i,            rho = sigmoid(rho_logit) (trainable, 0.95 at init)

O(N d) per head: one attention vector per head, its output broadcast to all tokens.

**Configuration: not published.** Neither the paper's text available here nor the release (a library that converts
existing models, ``infsa.convert``; no model definition, no config, no weights) states InfViT's width, heads, patch
or MLP ratio; the README gives only "4-layer ViT, 53.5 M parameters" (Linear InfViT), "57.7 M" (Pure InfViT 4L
and the softmax ViT 4L) and "330.6 M" (Pure InfViT 24L). The defaults here are inferred from those counts: a
ViT-L-width network (1024 channels, 16 heads of 64, patch 16, MLP ratio 4, class token, 1000 classes) has
52,402,152 parameters at depth 4 and 304,326,632 at depth 24, and the published counts exceed these by whole
1024 x 1024 linear layers (1,049,600 parameters each): 53.5 M = 52.40 M + 1 of them, 57.7 M = 52.40 M + 5,
330.6 M = 304.33 M + 25. So Linear InfViT is taken to be that 4-layer
ViT plus one more 1024 x 1024 layer outside the blocks, modelled as the original ViT's pre-logits representation
layer ``tanh(W z + b)`` before the classifier (``representation_size=1024``; ``representation_size=0`` removes it)
-- an inference, not a published fact. (The Pure variant's extra 1024 x 1024 layer per block is not identifiable,
so Pure InfViT is not registered; ``visattn_vit_*`` with ``mixer="infsa"`` gives an InfSA ViT of a timm size.)

Checkpoints: no InfViT weights were released. A model converted by the release's ``infsa.convert`` from a timm ViT
holds ``blocks.{i}.attn.{q_proj, k_proj, v_proj, out_proj}.{weight, bias}`` and ``blocks.{i}.attn.rho_logit``;
:func:`checkpoint_filter_fn` maps that layout (``pretrained=True, pretrained_cfg_overlay=dict(file=path)``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import vision_transformer as timm_vit
from torch import Tensor, nn

from .._checks import check_image_batch
from ..nn.replace import replace_attention
from ._pretrained import paper_cfg

__all__ = ["INFVIT_ARGS", "InfViT", "checkpoint_filter_fn"]

INFVIT_ARGS: dict[str, dict[str, Any]] = {
    "visattn_infvit_linear_patch16_224": dict(patch_size=16, embed_dim=1024, depth=4, num_heads=16, mlp_ratio=4.0,
                                              representation_size=1024),
}
"""Inferred sizes (module docstring): the configuration is not published."""


class InfViT(timm_vit.VisionTransformer):
    """timm's ``VisionTransformer`` with every attention running ``mixer`` (``"linear_infsa"``) and an optional
    pre-logits layer ``tanh(fc(.))`` of ``representation_size`` channels before the classifier.

    Args:
        mixer: a visattn mixer name; ``mixer_kwargs`` (``rho``, ``learn_rho``, ...) build it.
        representation_size: channels of the pre-logits layer, None or 0 for none.
        **kwargs: timm's ``VisionTransformer`` arguments.
    """

    def __init__(self, mixer: str = "linear_infsa", mixer_kwargs: dict[str, Any] | None = None,
                 representation_size: int | None = None, **kwargs: Any) -> None:
        if representation_size is not None and (isinstance(representation_size, bool) or not isinstance(
                representation_size, int) or representation_size < 0):
            raise ValueError(f"representation_size must be an int >= 0 or None, got {representation_size!r}")
        super().__init__(**kwargs)
        replace_attention(self, mixer, **(mixer_kwargs or {}))
        self.mixer = mixer
        if not representation_size:
            self.representation = nn.Identity()
        else:
            fc = nn.Linear(self.embed_dim, representation_size)
            timm_vit.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)
            self.representation = nn.Sequential(OrderedDict(fc=fc, act=nn.Tanh()))
            self.num_features = self.head_hidden_size = representation_size
            self.head = nn.Linear(representation_size, self.num_classes) if self.num_classes > 0 else nn.Identity()
            if isinstance(self.head, nn.Linear):
                timm_vit.trunc_normal_(self.head.weight, std=0.02)
                nn.init.zeros_(self.head.bias)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        if num_classes > 0:
            device = self.head.weight.device
            self.head = nn.Linear(self.head_hidden_size, num_classes, device=device).train(self.training)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.fc_norm(self.pool(x)))
        x = self.representation(x)
        return x if pre_logits else self.head(x)

    def forward_features(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        check_image_batch(x, self.patch_embed.proj.in_channels)
        return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Map a checkpoint in the release's layout onto :class:`InfViT`.

    ``{"model": ...}`` / ``{"state_dict": ...}`` unwrapped; per block ``attn.{q,k,v}_proj.{weight,bias}`` ->
    ``attn.qkv.{weight,bias}`` (concatenated in q, k, v order), ``attn.out_proj.*`` -> ``attn.proj.*``,
    ``attn.rho_logit`` -> ``attn.mixer.rho_logit``; ``representation.*`` kept; then timm's ViT filter. The load
    that follows is strict.
    """
    for key in ("model", "model_ema", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    out: dict[str, Tensor] = {}
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        match = re.match(r"^(.*\.attn)\.([qkv])_proj\.(weight|bias)$", key)
        if match:
            parts.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
            continue
        key = re.sub(r"\.attn\.out_proj\.", ".attn.proj.", key)
        key = re.sub(r"\.attn\.rho_logit$", ".attn.mixer.rho_logit", key)
        out[key] = value
    for (prefix, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise ValueError(f"state_dict has {sorted(qkv)} of the q/k/v projections' {kind} under {prefix}, "
                             "expected all three")
        out[f"{prefix}.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    representation = {k: v for k, v in out.items() if k.startswith("representation.")}
    filtered = timm_vit.checkpoint_filter_fn({k: v for k, v in out.items() if k not in representation}, model)
    return {**filtered, **representation}


default_cfgs = generate_default_cfgs({
    name: paper_cfg("2603.00175", first_conv="patch_embed.proj", classifier="head", license="mit",
                    origin_url="https://github.com/giorgioroffo/infinite-self-attention",
                    notes=("configuration inferred from the published parameter counts; no weights released",))
    for name in INFVIT_ARGS
})


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> InfViT:
    mixer_kwargs = {k: kwargs.pop(k) for k in ("rho", "learn_rho", "eps") if k in kwargs}
    if "attn_layer" in kwargs:
        raise ValueError(f"{variant} runs Linear-InfSA; attn_layer={kwargs['attn_layer']!r} cannot be combined")
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(InfViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
                                mixer="linear_infsa", mixer_kwargs=mixer_kwargs,
                                **dict(INFVIT_ARGS[variant], **kwargs))


@register_model
def visattn_infvit_linear_patch16_224(pretrained: bool = False, **kwargs: Any) -> InfViT:
    """Linear InfViT 4L (53.5 M parameters and 84.7 % ImageNet-1k top-1 in the README): 4 blocks of Linear-InfSA
    at the inferred width 1024 (module docstring). Keywords: timm's ViT arguments, ``representation_size``, and
    the mixer's ``rho``, ``learn_rho``, ``eps``."""
    return _create("visattn_infvit_linear_patch16_224", pretrained, kwargs)
