"""Affine-Scaled Attention: a per-token scale on the softmax weights plus a uniform offset.

Paper: "Affine-Scaled Attention: Towards Flexible and Stable Transformer Attention" (arXiv 2602.23057; no public
code). Per head and query token ``i``,

    out_i = sum_j [alpha_i softmax_j(q_i . k_j / sqrt d) + beta_i] v_j,
    alpha_i = phi(W_a x_i),   phi(z) = clip(0.1 z + 0.5, 0, 1),   beta_i = (alpha_ma - alpha_i) / N,

with ``W_a: dim -> heads`` (no bias), ``phi`` the paper's linear clipping (0 for z <= -5, 1 for z >= 5) and
``alpha_ma`` a running mean of ``alpha`` over training batches (momentum 0.9). Each row of the weights therefore
sums to ``alpha_ma``, not 1. The paper leaves open whether ``alpha_ma`` is per head or per layer: here it is per
head, a buffer updated as ``alpha_ma <- 0.9 alpha_ma + 0.1 mean(alpha)`` (mean over batch and tokens) in training
mode before it is used, and frozen in eval mode. Its initial value (not given in the paper) is 1, so that at the
start rows sum to 1 as in softmax attention.

With a mask (causal or a boolean ``attn_mask``), softmax runs over the visible keys and the uniform part is spread
over them too: ``beta_i = (alpha_ma - alpha_i) / n_i`` with ``n_i`` the keys row ``i`` sees, so rows still sum to
``alpha_ma``. Cost: one SDPA call plus O(N d) for the uniform part when unmasked or causal.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..ops.affine_scaled import affine_scaled_attention, affine_scaled_weights
from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = ["AffineScaledMixer", "linear_clip"]


def linear_clip(z: Tensor) -> Tensor:
    """The paper's linear clipping ``phi(z)``: 0 for ``z <= -5``, ``0.1 z + 0.5`` in between, 1 for ``z >= 5``."""
    return (0.1 * z + 0.5).clamp(0.0, 1.0)


class AffineScaledMixer(TokenMixer):
    """Affine-Scaled Attention as a token mixer; needs the layer input ``x`` (``uses_input = True``).

    Parameters: ``alpha_proj`` (``W_a``, ``dim -> num_heads``, no bias). Buffer: ``alpha_ma`` (``num_heads``),
    the running mean of ``alpha``, updated only in training mode.

    Args:
        dim: channels of the layer input ``x``.
        num_heads: heads (one ``alpha`` per token per head).
        momentum: ``alpha_ma <- momentum * alpha_ma + (1 - momentum) * mean(alpha)``; 0.9 in the paper.
        init_alpha_ma: initial running mean (the paper does not give one; 1 makes rows start summing to 1).
        is_causal: causal mask over the token order.
        scale: logit scale, default ``head_dim ** -0.5``.
        attn_drop: dropout on the softmax weights in training.
    """

    supports_attn_mask = True
    uses_input = True

    def __init__(self, dim: int, num_heads: int, momentum: float = 0.9, init_alpha_ma: float = 1.0,
                 is_causal: bool = False, scale: float | None = None, attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        for name, value in (("dim", dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        if isinstance(init_alpha_ma, bool) or not isinstance(init_alpha_ma, (int, float)) \
                or not math.isfinite(init_alpha_ma):
            raise ValueError(f"init_alpha_ma must be a finite number, got {init_alpha_ma!r}")
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.momentum = float(momentum)
        self.is_causal = is_causal
        self.scale = scale
        self.alpha_proj = nn.Linear(dim, num_heads, bias=False)
        self.register_buffer("alpha_ma", torch.full((num_heads,), float(init_alpha_ma)))

    def alpha(self, x: Tensor) -> Tensor:
        """Per-token, per-head scales ``phi(W_a x)``: ``(B, heads, N, 1)``."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be the (B, N, C={self.dim}) layer input, got {got}; affine-scaled attention "
                             "computes alpha from it (visattn.Attention passes it)")
        return linear_clip(self.alpha_proj(x)).transpose(1, 2).unsqueeze(-1)

    def _alpha_for(self, q: Tensor, x: Tensor | None) -> Tensor:
        if x is None:
            raise ValueError("x (the (B, N, C) layer input) is required: affine-scaled attention computes alpha from "
                             "it; use visattn.Attention(dim, heads, mixer='affine_scaled') or pass x=")
        alpha = self.alpha(x).to(q.dtype)
        if alpha.shape[:3] != q.shape[:3]:
            raise ValueError(f"x gives alpha for (B, heads, N)={tuple(alpha.shape[:3])}, "
                             f"but q has {tuple(q.shape[:3])}")
        return alpha

    def update_running_mean(self, alpha: Tensor) -> None:
        """``alpha_ma <- momentum alpha_ma + (1 - momentum) mean(alpha)`` per head (no gradient)."""
        with torch.no_grad():
            batch_mean = alpha.detach().mean(dim=(0, 2, 3)).to(self.alpha_ma.dtype)
            self.alpha_ma.mul_(self.momentum).add_((1.0 - self.momentum) * batch_mean)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None, x: Tensor | None = None) -> Tensor:
        self.prepare(q, k, v, shape)
        alpha = self._alpha_for(q, x)
        if self.training:
            self.update_running_mean(alpha)
        return affine_scaled_attention(q, k, v, alpha, self.alpha_ma, self.is_causal, attn_mask, self.scale,
                                       self.dropout_p)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...], x: Tensor | None = None) -> Tensor:
        """Dense weights ``alpha softmax + beta`` (O(N^2)); needs ``x``; does not update ``alpha_ma``."""
        self.prepare(q, k, k, shape)
        return affine_scaled_weights(q, k, self._alpha_for(q, x), self.alpha_ma, self.is_causal, None, self.scale)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, momentum={self.momentum}, is_causal={self.is_causal}"


@register_mixer("affine_scaled", paper="affine_scaled", complexity="O(N^2)", family="reformulated",
                faces=("definition", "module"))
def affine_scaled(dim: int = 64, num_heads: int = 8, momentum: float = 0.9, init_alpha_ma: float = 1.0,
                  is_causal: bool = False, scale: float | None = None, attn_drop: float = 0.0) -> AffineScaledMixer:
    """Affine-scaled: alpha(x) softmax(q k^T / sqrt d) + beta(x), rows summing to a running mean alpha_ma."""
    return AffineScaledMixer(dim, num_heads, momentum, init_alpha_ma, is_causal, scale, attn_drop)
