"""Linear attention as a token mixer (Katharopoulos et al., arXiv 2006.16236).

The functions (the paper's equations, the chunked causal scan, the dense oracle) live in
:mod:`visattn.ops.linear_attention`; this module keeps the ``nn.Module`` and its registry entry.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.linear_attention import FEATURE_MAPS, check_chunk_size, kernel_weights, linear_attention, linear_state_bytes
from ..ops.recurrent_state import layout
from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = ["LinearAttentionMixer"]


class LinearAttentionMixer(TokenMixer):
    """Linear attention ``phi(q)^T (phi(K)^T V) / (phi(q)^T sum phi(k) + eps)`` (Katharopoulos et al., 2006.16236).

    Args:
        feature_map: ``"elu+1"`` (the paper's) or ``"relu"``.
        is_causal: each token sees only itself and the tokens before it (prefix tokens first, then the grid in
            row-major order).
        chunk_size: tokens per chunk of the causal scan (a speed/memory knob, no effect on the result).
        eps: added to the denominator.
        attn_drop: accepted for timm compatibility; there are no attention weights to drop (warns once in training
            when > 0).

    ``forward(..., is_causal=True)`` runs the causal scan for one call (what :class:`~visattn.nn.Attention` passes
    for ``is_causal=True``).
    """

    supports_is_causal = True
    uses_attn_drop = False

    def __init__(self, feature_map: str = "elu+1", is_causal: bool = False, chunk_size: int = 64,
                 eps: float = 1e-6, attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {', '.join(map(repr, FEATURE_MAPS))}, got {feature_map!r}")
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        self.feature_map = feature_map
        self.is_causal = is_causal
        self.chunk_size = check_chunk_size(chunk_size)
        self.eps = eps

    def extra_repr(self) -> str:
        return f"feature_map={self.feature_map!r}, is_causal={self.is_causal}"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        self.prepare(q, k, v, shape)
        self._no_attn_mask(attn_mask)
        return linear_attention(q, k, v, FEATURE_MAPS[self.feature_map], is_causal=self.is_causal or is_causal,
                                chunk_size=self.chunk_size, eps=self.eps)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...], is_causal: bool = False) -> Tensor:
        """The equivalent dense weights, O(N^2) (see :func:`kernel_weights`); ``is_causal`` as in ``forward``."""
        self.prepare(q, k, k, shape)
        phi = FEATURE_MAPS[self.feature_map]
        return kernel_weights(phi(q), phi(k), is_causal=self.is_causal or is_causal, eps=self.eps)

    def state_bytes(self, batch_size: int = 1, num_heads: int | None = None, head_dim: int | None = None,
                    value_dim: int | None = None, dtype: torch.dtype = torch.float32) -> int:
        """Recurrent state ``sum_j phi(k_j) v_j^T`` and ``sum_j phi(k_j)``: ``B heads d (Dv + 1)`` elements."""
        num_heads, head_dim, value_dim = layout(num_heads, head_dim, value_dim)
        return linear_state_bytes(batch_size, num_heads, head_dim, value_dim, dtype)


@register_mixer("linear", paper="linear_transformer", complexity="O(N d^2)", family="reformulated",
                faces=("definition", "fast", "module"))
def linear(feature_map: str = "elu+1", is_causal: bool = False, chunk_size: int = 64, eps: float = 1e-6,
           attn_drop: float = 0.0) -> LinearAttentionMixer:
    """Linear attention phi(q)^T (phi(K)^T V), phi = elu+1 or relu; causal by chunked prefix sums."""
    return LinearAttentionMixer(feature_map, is_causal, chunk_size, eps, attn_drop)
