"""Lens adapter for visattn modules: every token mixer (inside :class:`visattn.nn.Attention` or on its own).

The hook point is the mixer's ``forward(q, k, v, shape, attn_mask=None)``: it already receives ``(B, heads, N,
head_dim)`` tensors and the token grid. Plain softmax (:class:`~visattn.nn.SoftmaxMixer`) and mask-defined mixers
(:class:`~visattn.nn.MaskedMixer`, e.g. neighborhood, window, grid, halo) are recomputed explicitly by
``lens_attention`` with the additive bias ``0`` where the mask allows a pair and ``-inf`` where it forbids it
(the mask materialised by :func:`visattn.masks.materialize`), so they can be captured and edited. An
:class:`~visattn.nn.Attention` subclass whose own ``forward`` still calls its mixer says so with a class attribute
``forward_calls_mixer = True`` (InLine-Swin's window attention); a mixer called on windows cut by its block (L2ViT's
local windows, Swin blocks) gets its token layout from the block's partition. Every other mixer
runs its own forward; the lens records its ``attention_weights(q, k, shape)`` (where the mechanism has them), its
per-head output, q, k, v and the hidden state, and refuses edits.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ...nn import Attention, MaskedMixer, SoftmaxMixer, TokenMixer
from ...nn.reversed_attention import ReversedMixer
from ...ops import reference
from ...ops.engines.dense import dense_mask
from ..call import AttentionCall
from ..layout import TokenLayout, grid_layout
from .base import (
    WHAT,
    ForwardState,
    Layer,
    Route,
    additive_bias,
    check_no_dropout,
    dispatch,
    notify,
    parent_name,
    patch_forward,
    probed_block_layout,
    route_of,
)

FAMILY = "visattn"


def is_explicit(mixer: TokenMixer) -> bool:
    """A mixer the lens recomputes exactly: softmax or mask-defined, with the stock forward and weights."""
    cls = type(mixer)
    return any(isinstance(mixer, base) and cls.forward is base.forward and cls.attention_weights is
               base.attention_weights for base in (SoftmaxMixer, MaskedMixer))


def has_weights(mixer: TokenMixer) -> bool:
    return type(mixer).attention_weights is not TokenMixer.attention_weights


class VisattnLayer(Layer):
    """A visattn token mixer as a lens layer, named after the :class:`~visattn.nn.Attention` that holds it."""

    family = FAMILY

    def patch(self) -> Callable[[], None]:
        mixer = self.module
        if isinstance(mixer, ReversedMixer):
            return _patch_message_forward(mixer, self.name)
        forward = explicit_forward if is_explicit(mixer) else observed_forward
        return patch_forward(mixer, lambda *args, **kwargs: forward(mixer, self.name, *args, **kwargs))


def _patch_message_forward(mixer: ReversedMixer, name: str) -> Callable[[], None]:
    """DependencyViT's :class:`~visattn.nn.reversed_attention.ReversedAttention` calls its mixer's
    ``forward_with_message(q, k, v, shape, x, message)``: observe that call (the reversed weights ``A_R`` as
    ``probs``)."""
    def observed(q: Tensor, k: Tensor, v: Tensor, shape: Any, x: Tensor,
                 message: Tensor | None = None) -> tuple[Tensor, Tensor]:
        route = route_of(mixer)
        out, m = type(mixer).forward_with_message(mixer, q, k, v, shape, x, message)
        grid, prefix = mixer.prepare(q, k, v, shape)
        tensors = {"head_outputs": out, "probs": mixer.attention_weights(q, k, grid, x=x, message=message)}
        notify(_call(route, q, k, v, mixer.scale or 1.0 / math.sqrt(q.shape[-1]), None, grid, prefix), tensors, route)
        return out, m

    return patch_forward(mixer, observed, "forward_with_message")


def claim(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> VisattnLayer | None:
    """The lens layer for ``module`` if it is a visattn token mixer called through its forward, else None."""
    if not isinstance(module, TokenMixer):
        return None
    owner_name = parent_name(name)
    owner = modules.get(owner_name) if owner_name is not None else None
    if isinstance(owner, Attention):
        if type(owner).forward is not Attention.forward and not getattr(type(owner), "forward_calls_mixer", False) \
                and not isinstance(module, ReversedMixer):
            return None
        layer_name, block_name = owner_name, parent_name(owner_name)
        block = modules[block_name] if block_name is not None else owner
        num_heads = owner.num_heads
    else:
        layer_name, block = name, owner
        num_heads = getattr(module, "num_heads", None) or getattr(owner, "num_heads", None)
    explicit = is_explicit(module)
    provides = set(WHAT)
    if not explicit:
        provides.discard("logits")
        if not has_weights(module):
            provides.discard("probs")
    return VisattnLayer(layer_name, module, block, num_heads, type(module).__name__, frozenset(provides),
                        editable=explicit, path=name)


def _layout(route: Route, grid: tuple[int, ...], prefix: int, q: Tensor) -> TokenLayout | None:
    """Windows cut by the block (probed), else the whole 2-D grid when the call holds all of it, else None."""
    probed = probed_block_layout(route.layer, route.hidden)
    if probed is not None:
        return probed
    if len(grid) == 2 and q.shape[2] == prefix + math.prod(grid):
        return grid_layout(grid, prefix, q.device)
    return None


def _call(route: Route, q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None,
          grid: tuple[int, ...], prefix: int) -> AttentionCall:
    return AttentionCall(route.info.index, route.info.name, q, k, v, scale, bias, hidden=route.hidden, grid=grid,
                         num_prefix_tokens=prefix, layout=_layout(route, grid, prefix, q))


def explicit_forward(mixer: SoftmaxMixer | MaskedMixer, name: str, q: Tensor, k: Tensor, v: Tensor,
                     shape: int | tuple[int, ...], attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """The mixer's attention through ``lens_attention``: same result as its own forward, visible and editable
    (``is_causal``: the causal flag :class:`~visattn.nn.Attention` hands a softmax mixer)."""
    route = route_of(mixer)
    grid, prefix = mixer.prepare(q, k, v, shape)
    check_no_dropout(mixer.dropout_p, name)
    b, h, n, d = q.shape
    if attn_mask is not None:
        reference.check_attn_mask(attn_mask, b, h, n, n, "attn_mask")
    bias = additive_bias(attn_mask, is_causal, n, n, q.dtype, q.device)
    if isinstance(mixer, MaskedMixer):
        allowed = dense_mask(mixer.mask, grid, prefix, q.device)
        structure = torch.zeros(n, n, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
        bias = structure if bias is None else bias + structure
    scale = mixer.scale if mixer.scale is not None else 1.0 / math.sqrt(d)
    out, _ = dispatch(_call(route, q, k, v, scale, bias, grid, prefix), route)
    return out


def observed_forward(mixer: TokenMixer, name: str, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                     attn_mask: Tensor | None = None, **extra: Any) -> Tensor:
    """The mixer's own forward; recorders get its ``attention_weights`` and per-head output."""
    route = route_of(mixer)
    out = type(mixer).forward(mixer, q, k, v, shape, attn_mask=attn_mask, **extra)
    grid, prefix = mixer.prepare(q, k, v, shape)
    tensors = {"head_outputs": out}
    if "probs" in route.info.provides:
        if attn_mask is not None:
            raise ValueError(f"layer {name!r}: {type(mixer).__name__}.attention_weights cannot take attn_mask; "
                             f"capture its probs without an attention mask")
        accepted = inspect.signature(mixer.attention_weights).parameters
        tensors["probs"] = mixer.attention_weights(q, k, grid, **{n: a for n, a in extra.items() if n in accepted})
    scale = getattr(mixer, "scale", None) or 1.0 / math.sqrt(q.shape[-1])
    notify(_call(route, q, k, v, scale, None, grid, prefix), tensors, route)
    return out


@contextlib.contextmanager
def model_hooks(model: nn.Module, layers: list[Layer], state: ForwardState) -> Iterator[None]:
    """visattn mixers receive their grid in every call: no model-level hook is needed."""
    yield
