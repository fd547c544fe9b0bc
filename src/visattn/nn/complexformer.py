"""ComplexFormer's complex multi-head attention, computed with matmuls (no ``(B, H, N, N, d/2)`` tensor).

Paper: "ComplexFormer: Disruptively Advancing Transformer Inference Ability via Head-Specific Complex Vector
Attention" (arXiv 2505.10222, withdrawn by its authors; code shaojintian/complexFormer). Each head splits its
query and key into halves read as the real and imaginary parts of ``d/2`` complex numbers, in polar form

    r = sqrt(re^2 + im^2 + eps),   theta = atan2(im, re),   eps = 1e-9,

and scores token ``m`` against token ``n`` with a head-specific phase scale ``delta`` and bias ``b``:

    score_mn = sum_i r_q,m,i r_k,n,i cos(delta_i (theta_q,m,i - theta_k,n,i) + b_i + (m - n) g_i),
    g_i = base^(-2i/d),   out = softmax(score) V   (no 1/sqrt(d) scale).

The released code builds the ``(B, H, chunk, N, d/2)`` cosine tensor. Since ``cos(a - c) = cos a cos c + sin a
sin c``, with ``phi_q = delta theta_q + b + m g`` and ``phi_k = delta theta_k + n g`` the score is the dot product
of ``[r_q cos phi_q, r_q sin phi_q]`` and ``[r_k cos phi_k, r_k sin phi_k]``: ordinary ``d``-dimensional attention,
run here through SDPA with scale 1. With ``delta = 1`` and ``b = 0`` it is RoPE attention (rotate-half pairing of
channel ``i`` with ``i + d/2``) without the ``1/sqrt(d)`` scale. Positions ``m, n`` are token indices in order
(prefix tokens first, then the grid row-major), as in the paper's 1-D setting. Initialisation as in the code:
``delta ~ N(0, (d/2)^-1/2)``, ``b = 0``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import reference, sdpa_bool_mask
from ..ops.complexformer import complex_features
from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = ["ComplexAttentionMixer"]


class ComplexAttentionMixer(TokenMixer):
    """ComplexFormer complex multi-head attention as a token mixer.

    Parameters: ``delta`` and ``bias``, ``(num_heads, head_dim / 2)`` each.

    Args:
        num_heads: heads H.
        head_dim: channels per head, even.
        base: frequency base of the relative-position term ``g_i = base^(-2i/d)``.
        eps: added under the square root of the modulus (1e-9 in the released code).
        is_causal: causal mask over the token order (the paper's language-model setting).
        attn_drop: dropout on the weights in training.
    """

    supports_attn_mask = True

    def __init__(self, num_heads: int = 8, head_dim: int = 64, base: float = 10000.0, eps: float = 1e-9,
                 is_causal: bool = False, attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        for name, value in (("num_heads", num_heads), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if head_dim % 2:
            raise ValueError(f"head_dim must be even (real and imaginary halves), got {head_dim}")
        if not isinstance(base, (int, float)) or isinstance(base, bool) or base <= 0:
            raise ValueError(f"base must be a positive number, got {base!r}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.base = float(base)
        self.eps = float(eps)
        self.is_causal = is_causal
        self.delta = nn.Parameter(torch.empty(num_heads, head_dim // 2))
        self.bias = nn.Parameter(torch.zeros(num_heads, head_dim // 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``delta ~ N(0, std=(head_dim / 2) ** -0.5)``, ``bias = 0``."""
        nn.init.normal_(self.delta, mean=0.0, std=(self.head_dim // 2) ** -0.5)
        nn.init.zeros_(self.bias)

    def _features(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        if q.shape[1] != self.num_heads or q.shape[-1] != self.head_dim:
            raise ValueError(f"q must be shaped (B, num_heads={self.num_heads}, N, head_dim={self.head_dim}), "
                             f"got {tuple(q.shape)}")
        return complex_features(q, k, self.delta, self.bias, self.base, self.eps)

    def _allowed(self, attn_mask: Tensor | None, q: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``(allowed, bias)`` for :func:`sdpa_bool_mask` from the causal flag and ``attn_mask``."""
        reference.check_self_attn_mask(attn_mask, q)
        is_bool = attn_mask is not None and attn_mask.dtype == torch.bool
        allowed = attn_mask if is_bool else None
        if self.is_causal:
            n = q.shape[2]
            causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
            allowed = causal if allowed is None else allowed & causal
        bias = attn_mask if attn_mask is not None and not is_bool else None
        if allowed is None and bias is not None:
            allowed = torch.ones((), dtype=torch.bool, device=q.device)
        return allowed, bias

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        self.prepare(q, k, v, shape)
        q_feat, k_feat = self._features(q, k)
        allowed, bias = self._allowed(attn_mask, q)
        if allowed is None:
            return nn.functional.scaled_dot_product_attention(q_feat, k_feat, v, scale=1.0, dropout_p=self.dropout_p)
        return sdpa_bool_mask(q_feat, k_feat, v, allowed, 1.0, self.dropout_p, bias=bias)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        """Dense ``softmax(score)`` weights ``(B, heads, N, N)``."""
        self.prepare(q, k, k, shape)
        q_feat, k_feat = self._features(q, k)
        allowed, _ = self._allowed(None, q)
        return reference.attention(q_feat, k_feat, k_feat, mask=allowed, scale=1.0, return_weights=True)[1]

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, base={self.base}, is_causal={self.is_causal}"


@register_mixer("complexformer", paper="complexformer", complexity="O(N^2)", family="reformulated",
                faces=("definition", "fast", "module"))
def complexformer(num_heads: int = 8, head_dim: int = 64, base: float = 10000.0, eps: float = 1e-9,
                  is_causal: bool = False, attn_drop: float = 0.0) -> ComplexAttentionMixer:
    """ComplexFormer: sum_i r_q r_k cos(delta dtheta + b + (m-n) g_i) scores as one d-dim matmul, then softmax."""
    return ComplexAttentionMixer(num_heads, head_dim, base, eps, is_causal, attn_drop)
