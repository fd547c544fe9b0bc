"""Any visattn mixer inside a Hugging Face vision transformer (ViT, DeiT, DINOv2 with or without registers, SigLIP
and CLIP vision towers), through transformers' ``AttentionInterface``: the model keeps its modules and weights, and
its attention layers call :func:`visattn_attention` instead of SDPA.

:func:`replace_hf_attention` gives every attention layer of a vision tower (a module whose forward looks its
attention function up in ``ALL_ATTENTION_FUNCTIONS`` and whose config has ``patch_size``) a mixer as submodule
``visattn_mixer`` and its token layout (the patch grid ``image_size / patch_size`` and the tokens in front of it,
from the config: the class token of ViT, CLIP and DINOv2, DeiT's class and distillation tokens, DINOv2's register
tokens, none for SigLIP), then switches the model to the ``"visattn"`` implementation with
``set_attn_implementation``. The layer's q, k, v projections, norms and output projection stay the model's; only
``softmax(q k^T * scaling) v`` becomes ``mixer(q, k, v, grid)``, so with ``mixer="softmax"`` the outputs are
unchanged. Attention layers of the same model without a mixer (CLIP's text tower) run SDPA as before.

transformers is imported on first use, not with visattn.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
from typing import Any

from torch import Tensor, nn

from .._checks import as_shape
from ..registry import create_mixer_for_layer

IMPLEMENTATION = "visattn"
"""The name :func:`visattn_attention` is registered under in ``AttentionInterface`` (and ``AttentionMaskInterface``,
with SDPA's mask function)."""

PREFIX_TOKENS = {
    "vit": lambda config: 1,
    "deit": lambda config: 2,
    "dinov2": lambda config: 1,
    "dinov2_with_registers": lambda config: 1 + int(config.num_register_tokens),
    "siglip_vision_model": lambda config: 0,
    "clip_vision_model": lambda config: 1,
}
"""Tokens in front of the patch grid, by the vision config's ``model_type``. Other models: the tokens beyond the
config's grid, at the config's image size."""


def is_hf_model(model: nn.Module) -> bool:
    """``model`` is a transformers ``PreTrainedModel`` (transformers is then already imported)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


@functools.cache
def _dispatches_attention(cls: type) -> bool:
    forward = inspect.unwrap(cls.forward)
    code = getattr(forward, "__code__", None)
    return code is not None and "ALL_ATTENTION_FUNCTIONS" in code.co_names


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def config_layout(config: Any) -> tuple[tuple[int, int], int | None]:
    """The patch grid at the config's image size and the prefix tokens (None when the model type is unknown)."""
    (ih, iw), (ph, pw) = _pair(config.image_size), _pair(config.patch_size)
    prefix = PREFIX_TOKENS.get(getattr(config, "model_type", ""), None)
    return (ih // ph, iw // pw), (None if prefix is None else prefix(config))


def _layout(module: nn.Module, n: int) -> tuple[int, ...]:
    grid, prefix = module.visattn_layout
    if n == math.prod(grid) + (prefix or 0) or (prefix is None and n >= math.prod(grid)):
        return grid
    if prefix is None:
        raise ValueError(f"{type(module).__name__}: {n} tokens do not fit the config's grid {grid}, and the prefix "
                         "tokens of this model type are unknown (visattn.nn.replace_hf.PREFIX_TOKENS)")
    side = round(max(n - prefix, 0) ** 0.5)
    if side < 1 or side * side != n - prefix:
        raise ValueError(f"{type(module).__name__}: cannot infer a square grid from N={n} tokens with "
                         f"{prefix} prefix tokens (non-square images at another size than the config's)")
    return (side, side)


def visattn_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """transformers attention function: ``module.visattn_mixer(query, key, value, grid, attn_mask=attention_mask)``
    as ``(B, N, heads, head_dim)``; layers without a mixer run transformers' SDPA function. The mixer applies its
    own attention dropout (set from the config at replacement), so ``dropout`` is not used again."""
    mixer = getattr(module, "visattn_mixer", None)
    if mixer is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    head_dim = query.shape[-1]
    if scaling is not None and not math.isclose(scaling, head_dim**-0.5, rel_tol=1e-6):
        raise ValueError(f"{type(module).__name__} scales q k^T by {scaling}, the mixer by 1/sqrt({head_dim})")
    grid = _layout(module, query.shape[2])
    out = mixer(query, key, value, grid, attn_mask=attention_mask)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register :func:`visattn_attention` (and SDPA's mask function) under :data:`IMPLEMENTATION` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, visattn_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, AttentionMaskInterface._global_mapping["sdpa"])


def _heads(module: nn.Module, config: Any) -> int:
    for owner, name in ((module, "num_heads"), (module, "num_attention_heads"), (config, "num_attention_heads")):
        value = getattr(owner, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot find the head count of {type(module).__name__}")


def replace_hf_attention(model: nn.Module, mixer: str = "softmax", **mixer_kwargs: Any) -> nn.Module:
    """Give every vision attention layer of Hugging Face ``model`` a ``mixer`` and switch the model to
    :data:`IMPLEMENTATION`, in place; return the model. Mixer parameters (feature maps, gates) are new parameters
    ``...visattn_mixer.*`` with their own initialisation; every other weight is the model's. ``attn_drop`` in
    ``mixer_kwargs`` overrides the config's attention dropout."""
    if not is_hf_model(model):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
    if not isinstance(mixer, str):
        raise TypeError(f"mixer must be a registry name, got {type(mixer).__name__}")
    targets = [(name, m) for name, m in model.named_modules()
               if hasattr(m, "config") and hasattr(m.config, "patch_size") and _dispatches_attention(type(m))]
    if not targets:
        raise ValueError(f"model ({type(model).__name__}) has no vision attention layer that dispatches through "
                         "transformers' AttentionInterface")
    for name, module in targets:
        config = module.config
        heads = _heads(module, config)
        dim = int(config.hidden_size)
        kwargs = dict(mixer_kwargs)
        kwargs.setdefault("attn_drop", float(getattr(config, "attention_probs_dropout_prob",
                                                     getattr(config, "attention_dropout", 0.0))))
        built = create_mixer_for_layer(mixer, dim=dim, num_heads=heads, head_dim=dim // heads, **kwargs)
        if built.uses_input:
            raise NotImplementedError(f"mixer {mixer!r} needs the layer input x, which transformers' attention "
                                      f"interface does not pass to {name!r}; use it in a timm or visattn model")
        weight = next(module.parameters())
        module.visattn_mixer = built.to(device=weight.device, dtype=weight.dtype)
        grid, prefix = config_layout(config)
        module.visattn_layout = (as_shape(grid), prefix)
    register()
    model.set_attn_implementation(IMPLEMENTATION)
    return model
