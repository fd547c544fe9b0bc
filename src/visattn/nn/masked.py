"""``MaskedMixer``: softmax attention restricted by a :class:`~visattn.masks.Mask` (any structured mechanism)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..masks import Mask
from ..ops import BACKENDS, masked_attention, reference, sdpa_bool_mask
from ..ops.engines.dense import dense_mask
from .token_mixer import TokenMixer


class MaskedMixer(TokenMixer):
    """Token mixer for a mask-defined mechanism, computed by :func:`visattn.ops.masked_attention`.

    Prefix tokens are the ``N - prod(shape)`` tokens in front of the grid. An extra ``attn_mask`` (bool, True =
    attend, or additive float, broadcastable to ``(B, heads, N, N)``) is combined with the structure on the
    dense path.
    """

    supports_attn_mask = True

    def __init__(self, mask: Mask, backend: str = "auto", scale: float | None = None, attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        if not isinstance(mask, Mask):
            raise TypeError(f"mask must be a visattn.masks.Mask, got {type(mask).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.mask = mask
        self.backend = backend
        self.scale = scale

    def extra_repr(self) -> str:
        return f"mask={self.mask!r}, backend={self.backend!r}"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        shape, prefix = self.prepare(q, k, v, shape)
        if attn_mask is None:
            return masked_attention(q, k, v, self.mask, shape, prefix, backend=self.backend, scale=self.scale,
                                    dropout_p=self.dropout_p)
        reference.check_self_attn_mask(attn_mask, q)
        allowed = dense_mask(self.mask, shape, prefix, q.device)
        if attn_mask.dtype == torch.bool:
            return sdpa_bool_mask(q, k, v, allowed & attn_mask, self.scale, self.dropout_p)
        return sdpa_bool_mask(q, k, v, allowed, self.scale, self.dropout_p, bias=attn_mask)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        shape, prefix = self.prepare(q, k, k, shape)
        allowed = dense_mask(self.mask, shape, prefix, q.device)
        return reference.attention(q, k, k, mask=allowed, scale=self.scale, return_weights=True)[1]
