"""``TokenMixer``: the interface every attention mechanism implements, ``(q, k, v, shape) -> out``."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import Shape, as_shape, check_qkv


class TokenMixer(nn.Module):
    """Base class of token mixers.

    ``forward(q, k, v, shape, attn_mask=None)`` takes ``q, k, v`` shaped ``(B, heads, N, head_dim)`` where the
    last ``prod(shape)`` tokens lie on the grid ``shape`` (row-major) and any tokens before them are prefix
    tokens. ``attention_weights(q, k, shape)`` returns ``(B, heads, N, N)`` weights for the lens, where the
    mechanism has them. ``attn_drop`` is the attention dropout used in training.

    Mechanisms whose paper computes something from the layer input itself (a gate, a per-token scale) set
    ``uses_input = True``; :class:`~visattn.nn.Attention` then also passes ``x=`` the ``(B, N, C)`` layer input.

    Mechanisms that compute causal attention themselves (a causal prefix scan, SDPA's ``is_causal``) set
    ``supports_is_causal = True`` and take ``forward(..., is_causal=False)`` and ``attention_weights(...,
    is_causal=False)``: causal when either the flag or the mixer's own ``is_causal`` says so.
    :class:`~visattn.nn.Attention` then passes ``is_causal=True`` instead of an ``N x N`` causal mask (and the lens
    passes it on to ``attention_weights``).

    Mechanisms that never form attention weights (linear, Hedgehog, Taylor ...) set ``uses_attn_drop = False``:
    they accept any ``attn_drop`` (a timm model's ``attn_drop_rate`` carries over) and warn once, in training only,
    when it is above 0, since there is nothing to drop.
    """

    supports_attn_mask: bool = False
    supports_is_causal: bool = False
    uses_input: bool = False
    uses_attn_drop: bool = True

    def __init__(self, attn_drop: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop!r}")
        self.attn_drop = attn_drop

    @property
    def dropout_p(self) -> float:
        return self.attn_drop if self.training else 0.0

    def prepare(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...]) -> tuple[Shape, int]:
        """Check inputs; return the normalised grid shape and the number of prefix tokens ``N - prod(shape)``."""
        if self.attn_drop and self.training and not self.uses_attn_drop:
            self._warn_unused_attn_drop()
        check_qkv(q, k, v)
        shape = as_shape(shape)
        n, grid = q.shape[2], math.prod(shape)
        if k.shape[2] != n:
            raise ValueError(f"self-attention needs as many keys as queries, got q N={n}, k N={k.shape[2]}")
        if n < grid:
            raise ValueError(f"q has N={n} tokens, fewer than prod(shape)={grid} for shape={shape}")
        return shape, n - grid

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not expose attention weights")

    def _warn_unused_attn_drop(self) -> None:
        if getattr(self, "_attn_drop_warned", False):
            return
        self._attn_drop_warned = True
        message = (f"{type(self).__name__} forms no attention weights, so attn_drop={self.attn_drop} drops nothing; "
                   "training runs without attention dropout")
        warnings.warn(message, UserWarning, stacklevel=4)

    def _no_attn_mask(self, attn_mask: Tensor | None) -> None:
        if attn_mask is not None and not self.supports_attn_mask:
            raise ValueError(f"attn_mask is not supported by {type(self).__name__}; got a mask")


def mixer_inputs(mixer: TokenMixer, x: Tensor, attn_mask: Tensor | None,
                 is_causal: bool) -> tuple[Tensor | None, dict[str, Any]]:
    """What a layer passes ``mixer`` besides ``q, k, v, shape``: ``(attn_mask, extra keyword arguments)``.

    ``extra`` holds ``x=`` the ``(B, N, C)`` layer input for a mixer that ``uses_input``, and ``is_causal=True``
    for a causal call to a mixer that ``supports_is_causal``. For any other mixer a causal call folds the causal
    mask ``j <= i`` over the ``N`` tokens into ``attn_mask``: a bool mask (True = attend) is ANDed with it, an
    additive mask gets ``-inf`` above the diagonal, None becomes the causal mask itself.
    """
    extra: dict[str, Any] = {"x": x} if mixer.uses_input else {}
    if is_causal and mixer.supports_is_causal:
        extra["is_causal"] = True
    elif is_causal:
        n = x.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        attn_mask = causal if attn_mask is None else (
            attn_mask & causal if attn_mask.dtype == torch.bool else attn_mask.masked_fill(~causal, float("-inf")))
    return attn_mask, extra
