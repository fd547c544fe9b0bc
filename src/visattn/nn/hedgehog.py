"""Hedgehog: linear attention with learnable exponential feature maps trained to mimic softmax attention.

Paper: Zhang et al., "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax Mimicry"
(arXiv 2402.04347). Per head, one feature map for queries and one for keys,

    phi(x) = [exp(W x + b), exp(-(W x + b))]   in R^{2d},    W = I, b = 0 at initialisation,

so at initialisation ``phi(q) . phi(k) = sum_i (e^{q_i + k_i} + e^{-(q_i + k_i)}) = 2 sum_i cosh(q_i + k_i)``.
Attention is linear attention with these maps, ``y_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T sum_j
phi(k_j)`` (causal: ``j <= i``), trained by distillation (:func:`softmax_mimicry_loss`,
:func:`visattn.nn.hedgehog_distill.distill_attention`) so that its weights ``a^_ij`` match the softmax weights
``a_ij = softmax(q k^T / sqrt d)`` of a trained model:

    L = -mean_i sum_j a_ij log a^_ij.

This is the paper's form. Public code differs and its variants disagree with each other (LoLCATs takes a softmax
over the feature dimension; flash-linear-attention uses ``softmax(cat(2x, -2x))``); those are not offered.

The attention itself (given log-features), its numerics and its dense oracle live in
:mod:`visattn.ops.hedgehog`; this module keeps the learnable feature maps, the mixer and the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.hedgehog import hedgehog_attention, hedgehog_dense_weights, hedgehog_state_bytes
from ..ops.linear_attention import check_chunk_size
from ..ops.recurrent_state import layout
from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = ["HedgehogFeatureMap", "HedgehogMixer", "softmax_mimicry_loss"]


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class HedgehogFeatureMap(nn.Module):
    """``phi(x) = [exp(W_h x + b_h), exp(-(W_h x + b_h))]`` per head ``h``, ``W_h`` identity and ``b_h`` 0 at init.

    Takes ``x`` shaped ``(B, heads, N, head_dim)`` and returns ``(B, heads, N, 2 head_dim)``. Parameters:
    ``weight`` ``(heads, head_dim, head_dim)`` (out x in) and ``bias`` ``(heads, head_dim)``.
    """

    def __init__(self, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = _positive_int(num_heads, "num_heads")
        self.head_dim = _positive_int(head_dim, "head_dim")
        self.weight = nn.Parameter(torch.eye(head_dim).repeat(num_heads, 1, 1))
        self.bias = nn.Parameter(torch.zeros(num_heads, head_dim))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"

    def projection(self, x: Tensor) -> Tensor:
        """``W_h x + b_h`` per head, in the dtype of ``x``."""
        if x.dim() != 4 or x.shape[1] != self.num_heads or x.shape[-1] != self.head_dim:
            raise ValueError(f"x must be shaped (B, heads={self.num_heads}, N, head_dim={self.head_dim}), got "
                             f"{tuple(x.shape)}")
        b, h, n, d = x.shape
        weight = self.weight.to(x.dtype).transpose(-2, -1).expand(b, h, d, d).reshape(b * h, d, d)
        bias = self.bias.to(x.dtype).unsqueeze(-2).expand(b, h, 1, d).reshape(b * h, 1, d)
        return torch.baddbmm(bias, x.reshape(b * h, n, d), weight).reshape(b, h, n, d)

    def log_features(self, x: Tensor) -> Tensor:
        """``log phi(x) = [u, -u]`` with ``u = W x + b``."""
        u = self.projection(x)
        return torch.cat([u, -u], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.log_features(x).exp()


def softmax_mimicry_loss(teacher_weights: Tensor, student_weights: Tensor, eps: float = 1e-12) -> Tensor:
    """Hedgehog's distillation loss ``L = -mean_i sum_j a_ij log a^_ij`` (soft-label cross entropy).

    ``teacher_weights`` ``a`` and ``student_weights`` ``a^`` are attention weights ``(..., N, M)`` whose rows sum
    to 1; the mean runs over every query row (batch, heads and queries). ``eps`` guards ``log 0``.
    """
    if not isinstance(teacher_weights, Tensor) or not isinstance(student_weights, Tensor):
        raise TypeError("teacher_weights and student_weights must be torch.Tensor")
    if teacher_weights.shape != student_weights.shape:
        raise ValueError(f"teacher_weights and student_weights must have one shape, got "
                         f"{tuple(teacher_weights.shape)} and {tuple(student_weights.shape)}")
    return -(teacher_weights * (student_weights + eps).log()).sum(dim=-1).mean()


class HedgehogMixer(TokenMixer):
    """Hedgehog linear attention (Zhang et al., arXiv 2402.04347): ``phi_q(q)^T (phi_k(K)^T V)`` normalised.

    Args:
        num_heads, head_dim: layout of q and k; one :class:`HedgehogFeatureMap` for q (``q_map``) and one for k
            (``k_map``), each with a ``head_dim x head_dim`` matrix per head.
        is_causal: each token sees itself and the tokens before it (O(N) memory chunked scan).
        chunk_size: tokens per chunk of the causal scan (16: the per-pair scores inside a chunk cost
            ``chunk_size`` exponentials per token and feature; see :mod:`visattn.ops.hedgehog`).
        attn_drop: accepted for timm compatibility; there are no attention weights to drop (warns once in training
            when > 0).

    ``forward(..., is_causal=True)`` runs the causal scan for one call (what :class:`~visattn.nn.Attention` passes
    for ``is_causal=True``).
    """

    supports_is_causal = True
    uses_attn_drop = False

    def __init__(self, num_heads: int = 8, head_dim: int = 64, is_causal: bool = False, chunk_size: int = 16,
                 attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
        self.q_map = HedgehogFeatureMap(num_heads, head_dim)
        self.k_map = HedgehogFeatureMap(num_heads, head_dim)
        self.is_causal = is_causal
        self.chunk_size = check_chunk_size(chunk_size)

    def extra_repr(self) -> str:
        return f"is_causal={self.is_causal}"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        self.prepare(q, k, v, shape)
        self._no_attn_mask(attn_mask)
        return hedgehog_attention(q, k, v, is_causal=self.is_causal or is_causal, chunk_size=self.chunk_size,
                                  q_features=self.q_map.log_features, k_features=self.k_map.log_features)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...], is_causal: bool = False) -> Tensor:
        """The dense weights ``a^_ij = phi(q_i) . phi(k_j) / sum_j phi(q_i) . phi(k_j)`` (causal: ``j <= i``),
        O(N^2) (one product, :func:`~visattn.ops.hedgehog.hedgehog_dense_weights`); ``is_causal`` as in
        ``forward``."""
        self.prepare(q, k, k, shape)
        return hedgehog_dense_weights(self.q_map.log_features(q), self.k_map.log_features(k),
                                      is_causal=self.is_causal or is_causal)

    def state_bytes(self, batch_size: int = 1, num_heads: int | None = None, head_dim: int | None = None,
                    value_dim: int | None = None, dtype: torch.dtype = torch.float32) -> int:
        """Causal recurrent state: ``2 head_dim (Dv + 2)`` elements per head (:func:`hedgehog_state_bytes`)."""
        num_heads, head_dim, value_dim = layout(num_heads, head_dim, value_dim, default_heads=self.q_map.num_heads,
                                                default_head_dim=self.q_map.head_dim)
        return hedgehog_state_bytes(batch_size, num_heads, 2 * head_dim, value_dim, dtype)


@register_mixer("hedgehog", paper="hedgehog", complexity="O(N d^2)", family="reformulated",
                faces=("definition", "fast", "module"))
def hedgehog(num_heads: int = 8, head_dim: int = 64, is_causal: bool = False, chunk_size: int = 16,
             attn_drop: float = 0.0) -> HedgehogMixer:
    """Hedgehog: linear attention with learnable [exp(Wx+b), exp(-(Wx+b))] maps distilled to mimic softmax."""
    return HedgehogMixer(num_heads, head_dim, is_causal, chunk_size, attn_drop)
