"""Lens adapter for timm ViT-family attention: ``timm.layers.Attention`` (ViT, DeiT, ...), ``AttentionRope`` and
EVA's ``EvaAttention``.

While a layer is routed, its instance ``forward`` is replaced by one that computes q, k, v exactly as timm does
(``qkv`` or ``q/k/v_proj``, ``q_norm``, ``k_norm``, rotary embedding, grouped-query repeat) and hands them to
``lens_attention``; ``fused_attn`` is switched off for the duration. Both are put back afterwards. timm blocks call
``attn(x, attn_mask=..., is_causal=...)`` (the rotary ones ``attn(x, rope=..., ...)``); ``is_causal`` takes
precedence over ``attn_mask`` as in timm. The token grid and the number of prefix tokens come from the enclosing
model's ``patch_embed`` (the image size of the current forward) and ``num_prefix_tokens``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention, AttentionRope
from timm.layers.pos_embed_sincos import apply_rot_embed_cat
from timm.models.eva import EvaAttention
from torch import Tensor, nn

from ..call import AttentionCall
from .base import (
    ForwardState,
    Layer,
    Route,
    additive_bias,
    check_no_dropout,
    dispatch,
    parent_name,
    patch_forward,
    route_of,
)

FAMILY = "timm"
SUPPORTED = (Attention, AttentionRope, EvaAttention)


class TimmLayer(Layer):
    """A timm attention module as a lens layer."""

    family = FAMILY

    def patch(self) -> Callable[[], None]:
        module = self.module
        fused = module.fused_attn
        module.fused_attn = False
        forward = attention_forward if isinstance(module, Attention) else rope_forward
        undo_forward = patch_forward(module, lambda *args, **kwargs: forward(module, *args, **kwargs))

        def undo() -> None:
            undo_forward()
            module.fused_attn = fused

        return undo


def claim(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> TimmLayer | None:
    """The lens layer for ``module`` if it is a supported timm attention class with timm's own forward."""
    if not any(type(module).forward is cls.forward and isinstance(module, cls) for cls in SUPPORTED):
        return None
    block_name = parent_name(name)
    block = modules[block_name] if block_name is not None else module
    tower = _tower(name, modules)
    prefix = int(getattr(modules[tower], "num_prefix_tokens", 0) or 0) if tower is not None else None
    return TimmLayer(name, module, block, module.num_heads, tower=tower, prefix=prefix)


def _tower(name: str, modules: dict[str, nn.Module]) -> str | None:
    """The nearest enclosing module with a ``patch_embed`` (the ViT the layer belongs to)."""
    current = parent_name(name)
    while current is not None:
        if hasattr(modules[current], "patch_embed"):
            return current
        current = parent_name(current)
    return None


def project_qkv(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v ``(B, heads, N, head_dim)`` (k, v with ``num_kv_heads`` heads for ``AttentionRope``), as timm
    computes them before the norms."""
    b, n, _ = x.shape
    heads = module.num_heads
    qkv = getattr(module, "qkv", None)
    if qkv is None:
        kv_heads = getattr(module, "num_kv_heads", heads)
        q = module.q_proj(x).reshape(b, n, heads, -1).transpose(1, 2)
        k = module.k_proj(x).reshape(b, n, kv_heads, -1).transpose(1, 2)
        v = module.v_proj(x).reshape(b, n, kv_heads, -1).transpose(1, 2)
        return q, k, v
    if isinstance(module, EvaAttention) and module.q_bias is not None:
        bias = torch.cat((module.q_bias, module.k_bias, module.v_bias))
        out = qkv(x) + bias if module.qkv_bias_separate else F.linear(x, weight=qkv.weight, bias=bias)
    else:
        out = qkv(x)
    q, k, v = out.reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def attention_forward(module: Attention, x: Tensor, attn_mask: Tensor | None = None,
                      is_causal: bool = False) -> Tensor:
    """``timm.layers.Attention.forward`` with the attention itself computed by the lens."""
    return lens_forward(module, x, None, attn_mask, is_causal)


def rope_forward(module: AttentionRope | EvaAttention, x: Tensor, rope: Tensor | None = None,
                 attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """``AttentionRope.forward`` / ``EvaAttention.forward`` with the attention itself computed by the lens."""
    return lens_forward(module, x, rope, attn_mask, is_causal)


def lens_forward(module: nn.Module, x: Tensor, rope: Tensor | None, attn_mask: Tensor | None,
                 is_causal: bool) -> Tensor:
    """q, k, v as timm computes them (norms, rotary embedding, grouped-query repeat), attention by the lens."""
    gate = module.gate(x).sigmoid() if module.gate is not None else None
    q, k, v = project_qkv(module, x)
    q, k = module.q_norm(q), module.k_norm(k)
    if rope is not None:
        p, half = module.num_prefix_tokens, getattr(module, "rotate_half", False)
        q = torch.cat([q[:, :, :p], apply_rot_embed_cat(q[:, :, p:], rope, half=half)], dim=2).type_as(v)
        k = torch.cat([k[:, :, :p], apply_rot_embed_cat(k[:, :, p:], rope, half=half)], dim=2).type_as(v)
    groups = getattr(module, "num_kv_groups", 1)
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return _finish(module, x, q, k, v, attn_mask, is_causal, gate)


def _finish(module: nn.Module, x: Tensor, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None,
            is_causal: bool, gate: Tensor | None) -> Tensor:
    route = route_of(module)
    check_no_dropout(module.attn_drop.p if module.training else 0.0, route.info.name)
    b, n, _ = x.shape
    bias = additive_bias(None if is_causal else attn_mask, is_causal, n, n, q.dtype, q.device)
    grid, prefix = _layout(route, n)
    call = AttentionCall(route.info.index, route.info.name, q, k, v, module.scale, bias,
                         hidden=route.hidden, grid=grid, num_prefix_tokens=prefix)
    out, _ = dispatch(call, route)
    out = module.norm(out.transpose(1, 2).reshape(b, n, -1))
    if gate is not None:
        out = out * gate
    return module.proj_drop(module.proj(out))


def _layout(route: Route, n: int) -> tuple[tuple[int, ...] | None, int]:
    """The grid and prefix count of the layer's ViT when ``n`` tokens match them, else ``(None, prefix)``."""
    layer = route.layer
    prefix = layer.prefix or 0
    grid = route.state.grids.get(layer.tower) if layer.tower is not None else None
    if grid is not None and n == prefix + math.prod(grid):
        return grid, prefix
    return None, prefix if n >= prefix else 0


@contextlib.contextmanager
def model_hooks(model: nn.Module, layers: list[Layer], state: ForwardState) -> Iterator[None]:
    """Record the patch grid of each routed layer's ViT from the image entering its ``patch_embed``."""
    modules = dict(model.named_modules())
    towers = sorted({layer.tower for layer in layers if layer.tower is not None})
    handles = [modules[name].patch_embed.register_forward_pre_hook(_grid_hook(name, state)) for name in towers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _grid_hook(tower: str, state: ForwardState) -> Callable[..., None]:
    def hook(patch_embed: nn.Module, args: tuple) -> None:
        image = args[0] if args and isinstance(args[0], Tensor) else None
        if image is None or image.dim() != 4:
            return
        dynamic = getattr(patch_embed, "dynamic_feat_size", None)
        grid = dynamic(tuple(image.shape[-2:])) if dynamic is not None else getattr(patch_embed, "grid_size", None)
        if grid:
            state.grids[tower] = tuple(int(g) for g in grid)

    return hook
