"""Sparsifiner: learned instance-dependent sparse attention.

Paper: Wei et al., "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers"
(arXiv 2303.13755); facts on defaults read from the released code (lim142857/Sparsifiner).

A light connectivity predictor proposes, per head and per query, which keys to attend to:

    q' = W_q q,  k' = W_k k                       (head_dim -> head_dim / 2, shared by the heads)
    coef = softmax(q' (k'^T P_n) * heads^-1/2)    (P_n: N x N/6 learned; one row per non-prefix query)
    coef <- top-8 entries of each row kept, the rest 0
    basis = |P_back|^T with entries < 0.02 set to 0   (P_back: N x N/6 learned, basis is N/6 x N)
    approx = coef basis,   M_i = the ceil(0.25 N) keys with the largest approx_i,j   (prefix rows: all keys)
    attn = softmax(masked_fill(q k^T d^-1/2, ~M, -inf)),   out = attn v

The mask carries no gradient (it is detached, as in the paper); ``approx`` is trained by the attention
reconstruction loss ``sum (approx - A_teacher)^2`` on the non-prefix rows (weight 0.01 in the paper's first
stage, MSE with ``reduction="sum"`` in the code), where ``approx`` is the soft reconstruction ``coef basis``
without the top-8 and without the 0.02 threshold, as the released code computes it during that stage.

Where the code generalises the paper: the paper has one class token; here every prefix token
(``N - prod(shape)`` of them) gets a dense row, so ``num_prefix_tokens=0`` gives a predicted mask on every row.

Execution: ``backend="sparse"`` (default) gathers, per query, its ``ceil(0.25 N)`` predicted keys and values and
attends only to them, ``O(N k d)`` work and ``O(chunk k d)`` memory, never a dense ``N x N`` softmax; the
predictor's ``approx`` is a low-rank product computed ``chunk`` query rows at a time.
``backend="dense"`` builds the boolean mask and runs masked SDPA (the reference the sparse path is tested against).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import reference, sdpa_bool_mask
from ..ops.structured import index_attention
from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = ["SparsifinerMixer", "keys_per_query"]

BACKENDS = ("sparse", "dense")
GATHER_BUDGET = 1 << 22


def keys_per_query(num_tokens: int, keep_rate: float) -> int:
    """``ceil(keep_rate * N)`` keys per predicted row, at least 1 and at most N."""
    return min(num_tokens, max(1, math.ceil(keep_rate * num_tokens)))


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class SparsifinerMixer(TokenMixer):
    """Sparsifiner attention (Wei et al., arXiv 2303.13755): softmax over the keys a low-rank predictor picks.

    Args:
        num_heads: heads; sets the predictor's scale ``heads^-1/2`` (as in the released code).
        head_dim: channels per head; the predictor projects to ``head_dim // reduce_c_factor``.
        num_tokens: N, the token count (prefix tokens included); ``P_n`` and ``P_back`` are ``N x N/reduce_n``.
        keep_rate: fraction of keys each predicted row attends to (``ceil(keep_rate N)``), 0.25 in the paper.
        reduce_n_factor: token reduction of the predictor, 6 in the released default configuration.
        reduce_c_factor: channel reduction of the predictor, 2.
        basis_topk: basis coefficients kept per row, 8.
        basis_threshold: basis entries with ``|.| < basis_threshold`` are zeroed, 0.02.
        scale: logit scale of the attention (default ``head_dim^-1/2``).
        backend: ``"sparse"`` (gather the kept keys) or ``"dense"`` (boolean mask + SDPA).
        attn_drop: dropout on the attention weights in training.
    """

    def __init__(self, num_heads: int = 8, head_dim: int = 64, num_tokens: int = 197, keep_rate: float = 0.25,
                 reduce_n_factor: int = 6, reduce_c_factor: int = 2, basis_topk: int = 8,
                 basis_threshold: float = 0.02, scale: float | None = None, backend: str = "sparse",
                 attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        for name, value in (("num_heads", num_heads), ("head_dim", head_dim), ("num_tokens", num_tokens),
                            ("reduce_n_factor", reduce_n_factor), ("reduce_c_factor", reduce_c_factor),
                            ("basis_topk", basis_topk)):
            _positive_int(value, name)
        if not 0.0 < keep_rate <= 1.0:
            raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate!r}")
        if not basis_threshold >= 0.0:
            raise ValueError(f"basis_threshold must be >= 0, got {basis_threshold!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        reduced_c, reduced_n = head_dim // reduce_c_factor, num_tokens // reduce_n_factor
        if reduced_c < 1 or reduced_n < 1:
            raise ValueError(f"head_dim={head_dim} // reduce_c_factor={reduce_c_factor} and num_tokens={num_tokens}"
                             f" // reduce_n_factor={reduce_n_factor} must both be >= 1")
        self.num_heads, self.head_dim, self.num_tokens = num_heads, head_dim, num_tokens
        self.keep_rate, self.basis_topk, self.basis_threshold = keep_rate, min(basis_topk, reduced_n), basis_threshold
        self.scale, self.backend = scale, backend
        self.proj_q = nn.Linear(head_dim, reduced_c)
        self.proj_k = nn.Linear(head_dim, reduced_c)
        from timm.layers import trunc_normal_

        self.proj_n = nn.Parameter(trunc_normal_(torch.empty(num_tokens, reduced_n), std=0.02))
        self.proj_back_n = nn.Parameter(trunc_normal_(torch.empty(num_tokens, reduced_n), std=0.02))

    @property
    def keys_per_query(self) -> int:
        return keys_per_query(self.num_tokens, self.keep_rate)

    def _check(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...]) -> int:
        _, prefix = self.prepare(q, k, v, shape)
        if q.shape[1] != self.num_heads or q.shape[2] != self.num_tokens or q.shape[3] != self.head_dim:
            raise ValueError(f"q must be shaped (B, num_heads={self.num_heads}, num_tokens={self.num_tokens}, "
                             f"head_dim={self.head_dim}) for this Sparsifiner, got {tuple(q.shape)}")
        return prefix

    def _low_rank_keys(self, k: Tensor) -> Tensor:
        """``k'^T P_n``: ``(B, heads, c, N / reduce_n)``."""
        return self.proj_k(k).transpose(-2, -1) @ self.proj_n.to(k.dtype)

    def _coef(self, q_rows: Tensor, k_down: Tensor) -> Tensor:
        return torch.softmax((self.proj_q(q_rows) @ k_down) * self.num_heads ** -0.5, dim=-1)

    def _hard_basis(self, dtype: torch.dtype) -> Tensor:
        basis = self.proj_back_n.detach().abs().transpose(0, 1).to(dtype)
        return basis.masked_fill(basis < self.basis_threshold, 0.0)

    def approx_attention(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...], hard: bool = True) -> Tensor:
        """The predictor's ``approx = coef basis`` for the non-prefix rows, ``(B, heads, N - P, N)``.

        ``hard=True``: top-``basis_topk`` coefficients and the thresholded ``|P_back|`` (what the mask is made
        from); ``hard=False``: the soft ``softmax(...) P_back^T`` trained by :meth:`reconstruction_loss`.
        """
        prefix = self._check(q, k, k, shape)
        coef = self._coef(q[:, :, prefix:], self._low_rank_keys(k))
        if not hard:
            return coef @ self.proj_back_n.transpose(0, 1).to(q.dtype)
        return self._top_coef(coef) @ self._hard_basis(q.dtype)

    def _top_coef(self, coef: Tensor) -> Tensor:
        top, idx = coef.topk(self.basis_topk, dim=-1)
        return torch.zeros_like(coef).scatter(-1, idx, top)

    def key_indices(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        """Indices of the kept keys of each non-prefix query, ``(B, heads, N - P, ceil(keep_rate N))``, no grad.

        ``approx`` is summed from the ``basis_topk`` selected basis rows (``O(N basis_topk)`` per query, not a
        dense ``coef @ basis``), ``chunk`` rows at a time, so memory stays ``O(chunk N)``.
        """
        prefix = self._check(q, k, k, shape)
        kept = self.keys_per_query
        with torch.no_grad():
            k_down = self._low_rank_keys(k)
            basis = self._hard_basis(q.dtype)
            rows = q[:, :, prefix:]
            chunk = max(1, GATHER_BUDGET // max(1, q.shape[0] * q.shape[1] * self.num_tokens * self.basis_topk))
            parts = []
            for s in range(0, rows.shape[2], chunk):
                top, idx = self._coef(rows[:, :, s:s + chunk], k_down).topk(self.basis_topk, dim=-1)
                approx = (top.unsqueeze(-1) * basis[idx]).sum(-2)
                parts.append(approx.topk(kept, dim=-1)[1])
        return torch.cat(parts, dim=2)

    def attention_mask(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        """The detached boolean mask ``(B, heads, N, N)``: prefix rows all True, other rows ``ceil(0.25 N)`` True."""
        prefix = self._check(q, k, k, shape)
        b, h, n, _ = q.shape
        idx = self.key_indices(q, k, shape)
        rows = torch.zeros(b, h, n - prefix, n, dtype=torch.bool, device=q.device).scatter(-1, idx, True)
        dense = torch.ones(b, h, prefix, n, dtype=torch.bool, device=q.device)
        return torch.cat([dense, rows], dim=2)

    def reconstruction_loss(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...],
                            target: Tensor | None = None) -> Tensor:
        """Attention reconstruction loss ``sum (coef P_back^T - A)^2`` over the non-prefix rows.

        ``target``: teacher attention ``(B, heads, N, N)``; default this layer's own dense
        ``softmax(q k^T d^-1/2)``, detached. The paper weights this loss by 0.01 in its first training stage.
        """
        prefix = self._check(q, k, k, shape)
        if target is None:
            target = reference.attention(q, k, k, scale=self.scale, return_weights=True)[1].detach()
        expected = (*q.shape[:3], q.shape[2])
        if not isinstance(target, Tensor) or tuple(target.shape) != expected:
            raise ValueError(f"target must be a (B, heads, N, N)={expected} tensor, got "
                             f"{tuple(target.shape) if isinstance(target, Tensor) else target!r}")
        approx = self.approx_attention(q, k, shape, hard=False)
        return F.mse_loss(approx, target[:, :, prefix:].to(approx.dtype), reduction="sum")

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        prefix = self._check(q, k, v, shape)
        self._no_attn_mask(attn_mask)
        if self.backend == "dense":
            return sdpa_bool_mask(q, k, v, self.attention_mask(q, k, shape), self.scale, self.dropout_p)
        rows = self._gathered_attention(q[:, :, prefix:], k, v, self.key_indices(q, k, shape))
        if not prefix:
            return rows
        head = F.scaled_dot_product_attention(q[:, :, :prefix], k, v, scale=self.scale, dropout_p=self.dropout_p)
        return torch.cat([head, rows], dim=2)

    def _gathered_attention(self, q: Tensor, k: Tensor, v: Tensor, idx: Tensor) -> Tensor:
        """``out_i = softmax_{j in idx_i}(q_i . k_j scale) v_j``: in the fused kernel's row loop without autograd
        or dropout (:func:`~visattn.ops.index_attention`), else with the kept keys gathered, chunk by
        chunk."""
        b, h, rows, kept = idx.shape
        scale = q.shape[-1] ** -0.5 if self.scale is None else self.scale
        if not self.dropout_p:
            out = index_attention(q, k, v, idx, scale)
            if out is not None:
                return out
        chunk = max(1, GATHER_BUDGET // max(1, b * h * kept * max(q.shape[-1], v.shape[-1])))
        outs = []
        for s in range(0, rows, chunk):
            part = idx[:, :, s:s + chunk]
            flat = part.reshape(b, h, -1, 1)
            keys = k.gather(2, flat.expand(-1, -1, -1, k.shape[-1])).view(*part.shape, k.shape[-1])
            vals = v.gather(2, flat.expand(-1, -1, -1, v.shape[-1])).view(*part.shape, v.shape[-1])
            scores = (keys @ (q[:, :, s:s + chunk].unsqueeze(-1) * scale)).squeeze(-1)
            weights = F.dropout(torch.softmax(scores, dim=-1), p=self.dropout_p)
            outs.append((weights.unsqueeze(-2) @ vals).squeeze(-2))
        return torch.cat(outs, dim=2)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        """Dense ``(B, heads, N, N)`` weights with the predicted mask (zeros off the mask), O(N^2)."""
        mask = self.attention_mask(q, k, shape)
        return reference.attention(q, k, k, mask=mask, scale=self.scale, return_weights=True)[1]

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, head_dim={self.head_dim}, num_tokens={self.num_tokens}, "
                f"keys_per_query={self.keys_per_query}, backend={self.backend!r}")


@register_mixer("sparsifiner", paper="sparsifiner", complexity="O(N k d), k = N/4", family="reformulated",
                faces=("definition", "module"))
def sparsifiner(num_heads: int = 8, head_dim: int = 64, num_tokens: int = 197, keep_rate: float = 0.25,
                reduce_n_factor: int = 6, reduce_c_factor: int = 2, basis_topk: int = 8,
                basis_threshold: float = 0.02, scale: float | None = None, backend: str = "sparse",
                attn_drop: float = 0.0) -> SparsifinerMixer:
    """Sparsifiner: a low-rank predictor picks ceil(0.25 N) keys per query; softmax over those only."""
    return SparsifinerMixer(num_heads, head_dim, num_tokens, keep_rate, reduce_n_factor, reduce_c_factor,
                            basis_topk, basis_threshold, scale, backend, attn_drop)
