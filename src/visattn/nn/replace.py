"""``replace_attention``: swap the attention of a timm vision transformer for visattn's, weights kept."""

from __future__ import annotations

from typing import Any

from timm.layers import Attention as TimmAttention
from torch import nn

from .attention import Attention


def _grid_and_prefix(model: nn.Module) -> tuple[tuple[int, ...] | None, int]:
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    patch_embed = getattr(model, "patch_embed", None)
    grid = getattr(patch_embed, "grid_size", None)
    dynamic = bool(getattr(model, "dynamic_img_size", False))
    return (tuple(int(g) for g in grid) if grid is not None and not dynamic else None), prefix


def from_timm_attention(module: TimmAttention, mixer: str = "softmax", *, shape: tuple[int, ...] | None = None,
                        num_prefix_tokens: int = 0, **mixer_kwargs: Any) -> Attention:
    """A visattn :class:`Attention` with ``module``'s configuration and weights and the given mixer.

    The mixer's own parameters (feature maps, gates, temperatures), which timm's module does not have, keep their
    initialisation.
    """
    if not isinstance(module, TimmAttention):
        raise TypeError(f"module must be a timm Attention, got {type(module).__name__}")
    q_norm = module.q_norm
    norm_layer = type(q_norm) if not isinstance(q_norm, nn.Identity) else (
        type(module.norm) if not isinstance(module.norm, nn.Identity) else None
    )
    new = Attention(
        module.qkv.in_features,
        num_heads=module.num_heads,
        qkv_bias=module.qkv.bias is not None,
        qk_norm=not isinstance(q_norm, nn.Identity),
        attn_drop=module.attn_drop.p,
        proj_drop=module.proj_drop.p,
        mixer=mixer,
        attn_head_dim=module.head_dim,
        dim_out=module.proj.out_features,
        scale_norm=not isinstance(module.norm, nn.Identity),
        proj_bias=module.proj.bias is not None,
        gated=getattr(module, "gate", None) is not None,
        norm_layer=norm_layer,
        num_prefix_tokens=num_prefix_tokens,
        shape=shape,
        **mixer_kwargs,
    )
    result = new.load_state_dict(module.state_dict(), strict=False)
    missing = [key for key in result.missing_keys if not key.startswith("mixer.")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"cannot carry the weights of {type(module).__name__} over: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    weight = module.qkv.weight
    return new.to(device=weight.device, dtype=weight.dtype).train(module.training)


def replace_attention(model: nn.Module, mixer: str = "softmax", **mixer_kwargs: Any) -> nn.Module:
    """Replace every timm ``Attention`` in ``model`` (a timm VisionTransformer or relative) by visattn's
    :class:`Attention` with ``mixer``, keeping the weights, the grid size and the prefix tokens.

    The model is changed in place and returned. With ``mixer="softmax"`` the outputs are unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    shape, prefix = _grid_and_prefix(model)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, TimmAttention)]
    if not targets:
        raise ValueError(f"model ({type(model).__name__}) has no timm Attention module to replace")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = from_timm_attention(module, mixer, shape=shape, num_prefix_tokens=prefix, **mixer_kwargs)
        setattr(parent, child, new)
    return model
