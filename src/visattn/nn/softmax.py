"""Plain softmax attention as a token mixer (ViT, Dosovitskiy et al., arXiv 2010.11929)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import reference, sdpa_bool_mask
from .token_mixer import TokenMixer


class SoftmaxMixer(TokenMixer):
    """``softmax(q k^T / sqrt(d) + mask) v`` through ``scaled_dot_product_attention``.

    ``is_causal=True`` (in ``forward`` and ``attention_weights``) lets query i see keys ``j <= i`` only: SDPA's own
    causal flag when there is no ``attn_mask`` (no ``N x N`` mask is built), else the mask and the causal triangle
    together."""

    supports_attn_mask = True
    supports_is_causal = True

    def __init__(self, scale: float | None = None, attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        self.scale = scale

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        self.prepare(q, k, v, shape)
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
        if attn_mask is None:
            return F.scaled_dot_product_attention(q, k, v, scale=self.scale, dropout_p=self.dropout_p,
                                                  is_causal=is_causal)
        reference.check_self_attn_mask(attn_mask, q)
        allowed = attn_mask if attn_mask.dtype == torch.bool else torch.ones((), dtype=torch.bool, device=q.device)
        if is_causal:
            n = q.shape[2]
            allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        bias = None if attn_mask.dtype == torch.bool else attn_mask
        return sdpa_bool_mask(q, k, v, allowed, self.scale, self.dropout_p, bias=bias)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...],
                          is_causal: bool = False) -> Tensor:
        self.prepare(q, k, k, shape)
        mask = None
        if is_causal:
            n = q.shape[2]
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        return reference.attention(q, k, k, mask, scale=self.scale, return_weights=True)[1]
