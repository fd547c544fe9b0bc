"""Plain softmax attention as a token mixer (ViT, Dosovitskiy et al., arXiv 2010.11929)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import reference, sdpa_bool_mask
from .token_mixer import TokenMixer


class SoftmaxMixer(TokenMixer):
    """``softmax(q k^T / sqrt(d) + mask) v`` through ``scaled_dot_product_attention``."""

    supports_attn_mask = True

    def __init__(self, scale: float | None = None, attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        self.scale = scale

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        self.prepare(q, k, v, shape)
        if attn_mask is not None:
            reference.check_self_attn_mask(attn_mask, q)
            allowed = attn_mask if attn_mask.dtype == torch.bool else torch.ones((), dtype=torch.bool,
                                                                                         device=q.device)
            bias = None if attn_mask.dtype == torch.bool else attn_mask
            return sdpa_bool_mask(q, k, v, allowed, self.scale, self.dropout_p, bias=bias)
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale, dropout_p=self.dropout_p)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        self.prepare(q, k, k, shape)
        return reference.attention(q, k, k, scale=self.scale, return_weights=True)[1]

