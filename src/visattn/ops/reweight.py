"""Softplus attention (LSSA) and its re-weighting (LSSAR) as functional ops.

Paper: Gao & Spratling, "Softplus Attention with Re-weighting Boosts Length Extrapolation in Large Language Models"
(arXiv 2501.13428). With ``q^``, ``k^`` the rows of Q and K divided by their L2 norms and ``n_i`` the number of
keys query ``i`` may see (``i``, 1-based, under the causal mask; ``N`` without it), Length-Scaled Softplus
Attention is

    A_ij = softplus(log(d) * log(n_i) * q^_i . k^_j) / sum_l softplus(log(d) * log(n_i) * q^_i . k^_l)

over the visible keys (0 elsewhere), and the re-weighting sharpens any such weights:

    A_ij <- relu(A_ij * n_i - O_i)^p / sum_l relu(A_il * n_i - O_i)^p,   O_i = 0 for i <= 3, else 1,

so every weight at or below the uniform weight ``1 / n_i`` becomes 0 (rows 1-3 are exempt: there ``O_i = 0``).
The paper uses ``p = 15`` for long contexts and ``p = 3`` at 1K tokens. ``log`` is the natural logarithm: the paper
writes ``log`` without a base, and the authors' code (iminfine/freeatten) was not available to us to check.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["lssa_attention", "lssa_weights", "reweight_attention"]

OFFSET_ROWS = 3
"""Rows (1-based, from the first token) whose offset ``O_i`` is 0 in the re-weighting, as in the paper."""


def check_power(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 1:
        raise ValueError(f"p must be a finite number >= 1 (the re-weighting power), got {p!r}")
    return float(p)


def check_offset_rows(offset_rows: int) -> int:
    if isinstance(offset_rows, bool) or not isinstance(offset_rows, int) or offset_rows < 0:
        raise ValueError(f"offset_rows must be an int >= 0, got {offset_rows!r}")
    return offset_rows


def _check_bool_mask(attn_mask: Tensor | None, n: int) -> None:
    if attn_mask is None:
        return
    if not isinstance(attn_mask, Tensor) or attn_mask.dtype != torch.bool:
        got = attn_mask.dtype if isinstance(attn_mask, Tensor) else type(attn_mask).__name__
        raise TypeError(f"attn_mask must be a bool tensor (True = attend) for softplus attention, got {got}")
    if attn_mask.dim() > 4 or attn_mask.shape[-2:] not in ((n, n), (1, n), (n, 1), (1, 1)):
        raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (..., N, N) with N={n}")


def _reweight(weights: Tensor, visible: Tensor, offset: Tensor, p: float) -> Tensor:
    """``relu(weights * visible - offset)^p``, L1-normalised per row; rows with nothing above the offset give 0.

    The power is taken after dividing each row by its maximum, which leaves the normalised result unchanged and
    keeps ``(n_i - 1)^p`` from overflowing at long lengths.
    """
    lifted = torch.relu(weights * visible - offset)
    peak = lifted.amax(dim=-1, keepdim=True).detach()
    powered = (lifted / torch.where(peak > 0, peak, torch.ones_like(peak))) ** p
    total = powered.sum(dim=-1, keepdim=True)
    return powered / torch.where(total > 0, total, torch.ones_like(total))


def reweight_attention(weights: Tensor, p: float = 3.0, is_causal: bool = True, num_visible: Tensor | None = None,
                       offset_rows: int = OFFSET_ROWS) -> Tensor:
    """LSSAR re-weighting of any attention weights ``(..., N, N)`` (rows = queries in token order).

    ``A_ij <- relu(A_ij n_i - O_i)^p / sum_l relu(A_il n_i - O_i)^p`` (Gao & Spratling, arXiv 2501.13428), with
    ``O_i = 0`` for the first ``offset_rows`` rows and 1 after them. ``n_i`` is the number of keys row ``i`` sees:
    ``i`` (1-based) when ``is_causal``, ``N`` otherwise, or ``num_visible`` (broadcastable to ``(..., N, 1)``) when
    given. Weights at or below ``1 / n_i`` become exactly 0 in every row past ``offset_rows``; a row in which no
    weight rises above the offset (a uniform row) comes back as zeros.

    Args:
        weights: row-normalised attention weights, ``(..., N, N)``.
        p: the sharpening power, ``>= 1`` (the paper: 15 for long contexts, 3 at 1K tokens).
        is_causal: count ``n_i = i`` visible keys (the paper's causal setting) instead of ``N``.
        num_visible: explicit ``n_i`` for other masks; overrides ``is_causal``.
        offset_rows: leading rows with ``O_i = 0`` (3 in the paper).
    """
    p = check_power(p)
    offset_rows = check_offset_rows(offset_rows)
    if not isinstance(weights, Tensor) or not weights.is_floating_point():
        raise TypeError(f"weights must be a floating point tensor, got {getattr(weights, 'dtype', type(weights))}")
    if weights.dim() < 2 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"weights must be shaped (..., N, N), got {tuple(weights.shape)}")
    n = weights.shape[-1]
    rows = torch.arange(1, n + 1, device=weights.device, dtype=weights.dtype).unsqueeze(-1)
    if num_visible is not None:
        visible = torch.as_tensor(num_visible, device=weights.device, dtype=weights.dtype)
    elif is_causal:
        visible = rows
    else:
        visible = torch.full_like(rows, float(n))
    offset = (rows > offset_rows).to(weights.dtype)
    return _reweight(weights, visible, offset, p)


def _visible_rows(start: int, stop: int, keys: int, is_causal: bool, attn_mask: Tensor | None,
                  device: torch.device) -> tuple[Tensor | None, Tensor]:
    """Allowed key mask for query rows ``[start, stop)`` over keys ``[0, keys)`` and the visible count per row."""
    allowed = None
    if is_causal:
        allowed = torch.arange(keys, device=device) <= torch.arange(start, stop, device=device).unsqueeze(-1)
    if attn_mask is not None:
        rows = attn_mask[..., start:stop, :keys] if attn_mask.shape[-2] > 1 else attn_mask[..., :keys]
        allowed = rows if allowed is None else allowed & rows
    if allowed is None:
        return None, torch.full((stop - start, 1), float(keys), device=device)
    return allowed, allowed.sum(dim=-1, keepdim=True)


def _lssa_rows(qn: Tensor, kn: Tensor, start: int, stop: int, is_causal: bool, attn_mask: Tensor | None,
               p: float | None, offset_rows: int) -> tuple[Tensor, int]:
    """LSSA (or LSSAR when ``p`` is given) weights of query rows ``[start, stop)`` over the keys they can see."""
    d, n = qn.shape[-1], kn.shape[-2]
    keys = stop if is_causal else n
    allowed, visible = _visible_rows(start, stop, keys, is_causal, attn_mask, qn.device)
    visible = visible.to(qn.dtype)
    scale = math.log(d) * torch.log(visible.clamp_min(1.0))
    weights = F.softplus(scale * (qn[..., start:stop, :] @ kn[..., :keys, :].transpose(-2, -1)))
    if allowed is not None:
        weights = weights.masked_fill(~allowed, 0.0)
    total = weights.sum(dim=-1, keepdim=True)
    weights = weights / torch.where(total > 0, total, torch.ones_like(total))
    if p is not None:
        rows = torch.arange(start + 1, stop + 1, device=qn.device, dtype=qn.dtype).unsqueeze(-1)
        weights = _reweight(weights, visible, (rows > offset_rows).to(qn.dtype), p)
    return weights, keys


def _check_qk(q: Tensor, k: Tensor) -> None:
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, Tensor) or t.dim() < 2 or not t.is_floating_point():
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"{name} must be a floating point tensor shaped (..., N, head_dim), got {got}")
    if q.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"q and k must share (N, head_dim) for self-attention, got q={tuple(q.shape)}, "
                         f"k={tuple(k.shape)}")
    if q.shape[-1] < 2:
        raise ValueError(f"softplus attention needs head_dim >= 2 (its scale is log(head_dim)), got {q.shape[-1]}")


def lssa_weights(q: Tensor, k: Tensor, is_causal: bool = True, attn_mask: Tensor | None = None,
                 p: float | None = None, offset_rows: int = OFFSET_ROWS) -> Tensor:
    """Dense LSSA weights ``(..., N, N)``; with ``p`` the re-weighted LSSAR weights (see the module docstring).

    ``attn_mask`` is a bool mask (True = attend) broadcastable to ``(..., N, N)``, combined with the causal mask;
    ``n_i`` counts the keys row ``i`` may see under both. O(N^2) memory.
    """
    _check_qk(q, k)
    _check_bool_mask(attn_mask, q.shape[-2])
    p = None if p is None else check_power(p)
    offset_rows = check_offset_rows(offset_rows)
    return _lssa_rows(F.normalize(q, dim=-1), F.normalize(k, dim=-1), 0, q.shape[-2], is_causal, attn_mask, p,
                      offset_rows)[0]


def lssa_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True, attn_mask: Tensor | None = None,
                   p: float | None = None, offset_rows: int = OFFSET_ROWS, dropout_p: float = 0.0,
                   chunk_size: int = 256) -> Tensor:
    """LSSA output ``A v`` (LSSAR when ``p`` is given), computed ``chunk_size`` query rows at a time.

    Each chunk builds only its ``chunk_size x N`` weights (and, causally, only over the keys up to its last row),
    so peak memory is O(chunk_size N) instead of O(N^2); the result equals ``lssa_weights(q, k, ...) @ v``.
    ``dropout_p`` drops weights after normalisation (training).
    """
    _check_qk(q, k)
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"k and v must agree on (..., N), got k={tuple(k.shape)}, v={tuple(v.shape)}")
    _check_bool_mask(attn_mask, q.shape[-2])
    p = None if p is None else check_power(p)
    offset_rows = check_offset_rows(offset_rows)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    n = q.shape[-2]
    out = []
    for start in range(0, n, chunk_size):
        weights, keys = _lssa_rows(qn, kn, start, min(start + chunk_size, n), is_causal, attn_mask, p, offset_rows)
        if dropout_p:
            weights = F.dropout(weights, p=dropout_p)
        out.append(weights @ v[..., :keys, :])
    return torch.cat(out, dim=-2)
