"""InfSA (infinite self-attention) and Linear-InfSA.

Paper: Roffo et al., "Self-Attention And Beyond the Infinite: Towards Linear Transformers with Infinite
Self-Attention" (arXiv 2603.00175).

InfSA replaces the softmax by a spectrally normalised non-negative affinity, per head,

    R = relu(q k^T / d)   (q and k each scaled by d^-1/2),     A = rho R / (||R||_F + 1e-6),     out = A V,

with the Frobenius norm over the whole N x N matrix and no row normalisation, so ``||A||_F < 1`` and stacked
layers sum a truncated Neumann (Katz) series ``rho A + rho^2 A^2 + ...``. Cost O(N^2 d).

Linear-InfSA approximates the principal eigenvector of ``R`` in O(N d): an energy-weighted query summary
``q_bar = sum_t w_t q_t`` with ``w_t = ||q_t|| / sum_s ||q_s||``, one attention vector
``a_j = relu(q_bar . k_j / d) / sum_l relu(q_bar . k_l / d)`` and a single output ``rho sum_j a_j v_j`` broadcast
to every token. Both sums carry ``+ 1e-6`` in the denominator (released code) so all-zero cases stay finite.

``rho = sigmoid(rho_logit)``, initialised to 0.95. The released module reads ``rho`` with ``.item()``, so its
``rho_logit`` never receives a gradient; here ``rho`` is trainable (``learn_rho=False`` gives a fixed ``rho``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import reference
from ..ops.infsa import infsa_weights, linear_infsa_vector
from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = ["InfSAMixer", "LinearInfSAMixer"]


def _rho_logit(rho: float) -> float:
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must be in (0, 1), got {rho!r}")
    return math.log(rho / (1.0 - rho))


class _RhoMixer(TokenMixer):
    def __init__(self, rho: float, learn_rho: bool, eps: float, attn_drop: float) -> None:
        super().__init__(attn_drop)
        if not isinstance(learn_rho, bool):
            raise TypeError(f"learn_rho must be a bool, got {learn_rho!r}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        logit = torch.tensor(_rho_logit(rho))
        if learn_rho:
            self.rho_logit = nn.Parameter(logit)
        else:
            self.register_buffer("rho_logit", logit)
        self.eps = eps

    @property
    def rho(self) -> Tensor:
        """``sigmoid(rho_logit)``, differentiable."""
        return torch.sigmoid(self.rho_logit)

    def extra_repr(self) -> str:
        return f"rho={self.rho.item():.4f}, learn_rho={isinstance(self.rho_logit, nn.Parameter)}"


class InfSAMixer(_RhoMixer):
    """InfSA (Roffo et al., arXiv 2603.00175): ``out = rho relu(q k^T / d) / ||.||_F V`` per head, O(N^2 d).

    ``attn_mask`` (bool, True = attend) zeroes the masked affinities before the norm; ``attn_drop`` drops entries
    of ``A`` in training.
    """

    supports_attn_mask = True

    def __init__(self, rho: float = 0.95, learn_rho: bool = True, eps: float = 1e-6, attn_drop: float = 0.0) -> None:
        super().__init__(rho, learn_rho, eps, attn_drop)

    def _weights(self, q: Tensor, k: Tensor, attn_mask: Tensor | None) -> Tensor:
        if attn_mask is not None:
            reference.check_self_attn_mask(attn_mask, q)
            if attn_mask.dtype != torch.bool:
                raise TypeError(f"attn_mask must be bool (True = attend) for InfSA, which has no logits to add a "
                                f"float mask to; got {attn_mask.dtype}")
        return infsa_weights(q, k, self.rho.to(q.dtype), attn_mask, self.eps)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        self.prepare(q, k, v, shape)
        weights = self._weights(q, k, attn_mask)
        return F.dropout(weights, p=self.dropout_p) @ v

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        self.prepare(q, k, k, shape)
        return self._weights(q, k, None)


class LinearInfSAMixer(_RhoMixer):
    """Linear-InfSA (Roffo et al., arXiv 2603.00175): one vector ``rho sum_j a_j v_j`` broadcast to all tokens.

    O(N d) time and memory. ``attn_drop`` drops entries of ``a`` in training (released code).
    """

    def __init__(self, rho: float = 0.95, learn_rho: bool = True, eps: float = 1e-6, attn_drop: float = 0.0) -> None:
        super().__init__(rho, learn_rho, eps, attn_drop)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        self.prepare(q, k, v, shape)
        self._no_attn_mask(attn_mask)
        a = F.dropout(linear_infsa_vector(q, k, self.eps), p=self.dropout_p)
        pooled = self.rho.to(q.dtype) * (a.unsqueeze(-2) @ v)
        return pooled.expand(-1, -1, q.shape[2], -1)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        """``rho a`` repeated on every row ``(B, heads, N, N)``, O(N^2)."""
        self.prepare(q, k, k, shape)
        a = self.rho.to(q.dtype) * linear_infsa_vector(q, k, self.eps)
        return a.unsqueeze(-2).expand(-1, -1, q.shape[2], -1)


def infsa_oracle(mixer: InfSAMixer, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...]) -> Tensor:
    """Naive InfSA with the sums written out (the registry's oracle for ``"infsa"``):
    ``out_i = rho sum_j R_ij v_j / (sqrt(sum_ij R_ij^2) + eps)``, ``R_ij = max(0, sum_c q_ic k_jc / d)``."""
    r = torch.einsum("bhic,bhjc->bhij", q, k).div(q.shape[-1]).clamp(min=0)
    norm = r.square().sum(dim=(-2, -1), keepdim=True).sqrt()
    return torch.einsum("bhij,bhjc->bhic", r, v) * mixer.rho.to(q.dtype) / (norm + mixer.eps)


@register_mixer("infsa", paper="infsa", complexity="O(N^2)", family="reformulated", faces=("definition", "module"),
                oracle=infsa_oracle)
def infsa(rho: float = 0.95, learn_rho: bool = True, eps: float = 1e-6, attn_drop: float = 0.0) -> InfSAMixer:
    """InfSA: rho relu(q k^T/d) / ||.||_F per head, no row normalisation (Katz series over layers)."""
    return InfSAMixer(rho, learn_rho, eps, attn_drop)


@register_mixer("linear_infsa", paper="infsa", complexity="O(N d)", family="reformulated",
                faces=("definition", "module"))
def linear_infsa(rho: float = 0.95, learn_rho: bool = True, eps: float = 1e-6,
                 attn_drop: float = 0.0) -> LinearInfSAMixer:
    """Linear-InfSA: one energy-pooled query, one attention vector, its output broadcast to every token."""
    return LinearInfSAMixer(rho, learn_rho, eps, attn_drop)
