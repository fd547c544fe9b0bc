"""``replace_attention``: swap the attention of a timm vision transformer for visattn's, weights kept.

timm is imported on first use, not with visattn: importing timm imports torchvision and torch._dynamo (seconds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ..registry import get_mixer_spec
from .attention import Attention
from .replace_eva import replace_eva_attention
from .replace_hf import is_hf_model, replace_hf_attention

if TYPE_CHECKING:
    from timm.layers import Attention as TimmAttention


def _timm_attention() -> type[nn.Module]:
    from timm.layers import Attention as TimmAttention

    return TimmAttention


def _check_not_causal_by_default(mixer: str, mixer_kwargs: dict[str, Any]) -> None:
    """Refuse a mixer that is causal by default unless ``is_causal`` is given: in an image model a causal mask
    would let each patch see only the patches before it in raster order, silently."""
    if "is_causal" in mixer_kwargs or not isinstance(mixer, str):
        return
    if get_mixer_spec(mixer).causal_default:
        raise ValueError(
            f"mixer {mixer!r} is causal by default (is_causal=True): in an image model every patch would see only "
            "the patches before it in raster order; pass is_causal=False for bidirectional attention over the "
            "image, or is_causal=True to keep the causal mask on purpose"
        )


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
    initialisation. ``attn_drop`` in ``mixer_kwargs`` overrides the timm module's attention dropout (e.g.
    ``attn_drop=0.0``); a mixer that forms no attention weights accepts any value and warns once in training.
    """
    if not isinstance(module, _timm_attention()):
        raise TypeError(f"module must be a timm Attention, got {type(module).__name__}")
    q_norm = module.q_norm
    norm_layer = type(q_norm) if not isinstance(q_norm, nn.Identity) else (
        type(module.norm) if not isinstance(module.norm, nn.Identity) else None
    )
    attn_drop = mixer_kwargs.pop("attn_drop", module.attn_drop.p)
    new = Attention(
        module.qkv.in_features,
        num_heads=module.num_heads,
        qkv_bias=module.qkv.bias is not None,
        qk_norm=not isinstance(q_norm, nn.Identity),
        attn_drop=attn_drop,
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
    :class:`Attention` with ``mixer``, keeping the weights, the grid size and the prefix tokens; timm's
    ``EvaAttention`` (EVA-02, RoPE ViTs) by :class:`~visattn.nn.replace_eva.EvaMixerAttention`; in a Hugging Face
    vision model, every vision attention layer runs the mixer through transformers' ``AttentionInterface``
    (:func:`~visattn.nn.replace_hf.replace_hf_attention`).

    The model is changed in place and returned. With ``mixer="softmax"`` the outputs are unchanged. A mixer that
    is causal by default (``lssa``, ``lssar``: the paper's language-model setting) is refused with a
    ``ValueError`` unless ``is_causal`` is passed explicitly, since a causal mask over image patches is almost
    never wanted and would change the model silently. ``attn_drop`` in ``mixer_kwargs`` overrides the model's
    attention dropout in every replaced layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_not_causal_by_default(mixer, mixer_kwargs)
    if is_hf_model(model):
        return replace_hf_attention(model, mixer, **mixer_kwargs)
    shape, prefix = _grid_and_prefix(model)
    timm_attention = _timm_attention()
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, timm_attention)]
    replaced = replace_eva_attention(model, mixer, shape=shape, num_prefix_tokens=prefix, **mixer_kwargs)
    if not targets and not replaced:
        raise ValueError(f"model ({type(model).__name__}) has no timm Attention module to replace")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = from_timm_attention(module, mixer, shape=shape, num_prefix_tokens=prefix, **mixer_kwargs)
        setattr(parent, child, new)
    return model
