"""``masked_attention``: softmax attention restricted by a :class:`~visattn.masks.Mask`, on one of several backends.

Backends, all giving the same result (tested):

- ``"reference"``: the naive dense attention of :mod:`visattn.ops.reference` on the materialised mask;
- ``"dense"``: ``scaled_dot_product_attention`` with the materialised bool mask (O(N^2) memory);
- ``"flex"``: FlexAttention with a block mask (compiled where that works, see :mod:`visattn.ops.flex`);
- ``"fast"``: the structured fast path registered for the mask's type (:func:`register_fast_path`);
- ``"auto"``: the fast path when one is registered and accepts the call, plain or causal SDPA for full and
  causal masks, ``dense`` up to ``DENSE_MAX_TOKENS`` tokens, ``flex`` beyond.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from .._checks import as_shape, check_qkv, check_tokens
from ..masks import CausalMask, FullMask, Mask, materialize, to_block_mask
from . import reference
from .engines.flex import run_flex_attention

BACKENDS = ("auto", "dense", "flex", "fast", "reference")
DENSE_MAX_TOKENS = 16384

FastPath = Callable[[Tensor, Tensor, Tensor, Mask, tuple[int, ...], int, float | None, float], Tensor | None]
_FAST_PATHS: dict[type[Mask], FastPath] = {}


def register_fast_path(mask_type: type[Mask]) -> Callable[[FastPath], FastPath]:
    """Register ``fn(q, k, v, mask, shape, num_prefix_tokens, scale, dropout_p) -> Tensor | None`` as the fast path
    for ``mask_type`` and its subclasses; returning None declines the call (``auto`` then uses a generic backend),
    which a fast path without attention dropout does when ``dropout_p > 0``."""

    def register(fn: FastPath) -> FastPath:
        _FAST_PATHS[mask_type] = fn
        return fn

    return register


def fast_path_for(mask: Mask) -> FastPath | None:
    """The fast path registered for the most specific class of ``mask`` that has one, if any."""
    for cls in type(mask).__mro__:
        if cls in _FAST_PATHS:
            return _FAST_PATHS[cls]
    return None


@functools.lru_cache(maxsize=8)
def dense_mask(mask: Mask, shape: tuple[int, ...], num_prefix_tokens: int, device: torch.device) -> Tensor:
    """Cached :func:`~visattn.masks.materialize` (masks are immutable, so the result never goes stale)."""
    return materialize(mask, shape, num_prefix_tokens, device=device)


@functools.lru_cache(maxsize=8)
def block_mask(mask: Mask, shape: tuple[int, ...], num_prefix_tokens: int, device: torch.device) -> BlockMask:
    """Cached :func:`~visattn.masks.to_block_mask`."""
    return to_block_mask(mask, shape, num_prefix_tokens, device=device)


def sdpa_bool_mask(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float | None = None,
                   dropout_p: float = 0.0, bias: Tensor | None = None) -> Tensor:
    """SDPA where query i sees key j iff ``allowed[..., i, j]``, plus an optional additive ``bias``.

    Rows that see no key (or whose bias is -inf everywhere they may look) give 0 instead of NaN.
    """
    if bias is None:
        empty = ~allowed.any(dim=-1, keepdim=True)
        attn_mask = allowed | empty
    else:
        attn_mask = bias.masked_fill(~allowed, float("-inf"))
        empty = torch.isneginf(attn_mask).all(dim=-1, keepdim=True)
        attn_mask = attn_mask.masked_fill(empty, 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, dropout_p=dropout_p)
    return out.masked_fill(empty, 0.0) if bool(empty.any()) else out


def masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Mask,
    shape: int | tuple[int, ...],
    num_prefix_tokens: int = 0,
    backend: str = "auto",
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Softmax self-attention where query i sees key j only if ``mask`` allows it.

    ``out_i = sum_{j in M(i)} softmax_j(q_i . k_j * scale) v_j``, 0 for a query that sees no key.

    Args:
        q, k, v: ``(B, heads, N, head_dim)`` with ``N = num_prefix_tokens + prod(shape)``.
        mask: a :class:`visattn.masks.Mask`.
        shape: the spatial layout of the non-prefix tokens, row-major: ``(L,)``, ``(H, W)`` or ``(T, H, W)``.
        num_prefix_tokens: global tokens in front (they see, and are seen by, every token).
        backend: one of ``"auto"``, ``"dense"``, ``"flex"``, ``"fast"``, ``"reference"``.
        scale: logit scale, ``head_dim ** -0.5`` by default.
        dropout_p: attention dropout probability (``auto``, ``dense``, and fast paths that support it).
    """
    check_qkv(q, k, v)
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be a visattn.masks.Mask, got {type(mask).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    shape, prefix = mask.bind(as_shape(shape), num_prefix_tokens)
    check_tokens(q.shape[2], shape, prefix, "q")
    check_tokens(k.shape[2], shape, prefix, "k")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if dropout_p and backend not in ("auto", "dense", "fast"):
        raise ValueError(f"dropout_p > 0 needs backend 'auto', 'dense' or 'fast', got backend={backend!r}")

    if backend in ("auto", "fast"):
        fast = fast_path_for(mask)
        out = fast(q, k, v, mask, shape, prefix, scale, dropout_p) if fast is not None else None
        if out is not None:
            return out
        if backend == "fast":
            raise ValueError(f"no fast path accepts mask={mask!r} on shape={shape}; use backend='auto'")
    if backend == "auto":
        n = q.shape[2]
        if isinstance(mask, FullMask):
            return F.scaled_dot_product_attention(q, k, v, scale=scale, dropout_p=dropout_p)
        if isinstance(mask, CausalMask) and prefix == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, dropout_p=dropout_p)
        backend = "dense" if n <= DENSE_MAX_TOKENS or dropout_p else "flex"
    if backend == "reference":
        return reference.attention(q, k, v, mask=dense_mask(mask, shape, prefix, q.device), scale=scale)
    if backend == "dense":
        return sdpa_bool_mask(q, k, v, dense_mask(mask, shape, prefix, q.device), scale, dropout_p)
    return run_flex_attention(q, k, v, block_mask(mask, shape, prefix, q.device), scale=scale)
