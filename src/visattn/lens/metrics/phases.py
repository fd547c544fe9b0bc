"""Phases of a network by recursive max-cut bisection of a layer dissimilarity matrix (Raptor).

Jacobs et al., "Block-Recurrent Dynamics in Vision Transformers", arXiv 2512.19941: with ``W[l, m]`` the
dissimilarity of layers ``l`` and ``m`` (:func:`~visattn.lens.metrics.similarity.layer_dissimilarity`), split the
layers into the two sides of a maximum cut, ``cut(S) = sum_{l in S, m not in S} W[l, m]``, and split each side
again, stopping when the best cut of a group is ``<= eps * total`` with ``total = sum_{l < m} W[l, m]`` (the
paper's code uses eps = 0.09 ... 0.2) or when the group has fewer than ``2 * min_size`` layers. The groups left are
the phases: layers that compute alike.

A maximum cut favours balanced sides: blocks that are all equally far apart (three blocks of two layers, say) can
be cut through a block when that ties with cutting between blocks; blocks whose dissimilarity grows with their
distance in depth, as in trained ViTs, are separated at the top level first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import tensor

EXACT_LIMIT = 20
_CHUNK = 1 << 15


def _check_weights(weights: Tensor) -> Tensor:
    weights = tensor(weights, "weights", min_dim=2)
    if weights.dim() != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"weights must be a square (n, n) matrix, got shape {tuple(weights.shape)}")
    w = weights.detach().cpu().to(torch.float64, copy=True)
    if not torch.isfinite(w).all():
        raise ValueError("weights must be finite")
    scale = float(w.abs().max()) if w.numel() else 0.0
    if not torch.allclose(w, w.T, rtol=0.0, atol=1e-6 * max(scale, 1.0)):
        raise ValueError("weights must be symmetric (W[l, m] == W[m, l])")
    return (w + w.T) / 2


def cut_value(weights: Tensor, side: Tensor) -> float:
    """``sum_{i < j, side_i != side_j} W[i, j]`` for a bool ``side`` of length ``n``."""
    w = _check_weights(weights)
    if side.dtype != torch.bool or side.shape != (w.shape[0],):
        raise ValueError(f"side must be a bool tensor of shape ({w.shape[0]},), got {side.dtype} "
                         f"{tuple(side.shape)}")
    crossing = side.unsqueeze(0) != side.unsqueeze(1)
    return float(w[crossing].sum() / 2)


def _exact(w: Tensor) -> tuple[float, Tensor]:
    """Every cut with vertex 0 on side False: ``cut(s) = s.d - s^T W s`` with ``d`` the row sums."""
    n = w.shape[0]
    degree = w.sum(dim=1)
    shifts = torch.arange(n - 1, dtype=torch.long)
    best_value, best_code = -torch.inf, 0
    for start in range(0, 1 << (n - 1), _CHUNK):
        codes = torch.arange(start, min(start + _CHUNK, 1 << (n - 1)), dtype=torch.long)
        bits = ((codes.unsqueeze(1) >> shifts) & 1).to(torch.float64)
        s = torch.cat([torch.zeros(len(codes), 1, dtype=torch.float64), bits], dim=1)
        values = s @ degree - ((s @ w) * s).sum(dim=1)
        index = int(values.argmax())
        if float(values[index]) > best_value + 1e-12:
            best_value, best_code = float(values[index]), int(codes[index])
    side = torch.tensor([False] + [bool((best_code >> i) & 1) for i in range(n - 1)])
    return best_value, side


def _local(w: Tensor, restarts: int, seed: int) -> tuple[float, Tensor]:
    """Steepest-ascent single flips from a spectral start and ``restarts`` random starts; the best local optimum."""
    n = w.shape[0]
    generator = torch.Generator().manual_seed(seed)
    starts = [torch.linalg.eigh(w).eigenvectors[:, 0] > 0]
    starts += [torch.rand(n, generator=generator) < 0.5 for _ in range(restarts)]
    best_value, best_side = -torch.inf, starts[0]
    tolerance = 1e-12 * float(w.abs().sum())
    for side in starts:
        side = side.clone()
        while True:
            sign = torch.where(side, 1.0, -1.0).to(torch.float64)
            gain = sign * (w @ sign) - w.diagonal()
            i = int(gain.argmax())
            if float(gain[i]) <= tolerance:
                break
            side[i] = ~side[i]
        if side[0]:
            side = ~side
        value = float(w[side.unsqueeze(0) != side.unsqueeze(1)].sum() / 2)
        if value > best_value + 1e-12:
            best_value, best_side = value, side
    return best_value, best_side


def max_cut(weights: Tensor, exact_limit: int = EXACT_LIMIT, restarts: int = 8, seed: int = 0) -> tuple[float, Tensor]:
    """A maximum cut of a symmetric weight matrix ``(n, n)``: ``(value, side)`` with ``side`` a bool ``(n,)``
    (vertex 0 on side False).

    Exact (all ``2^(n-1)`` cuts, in chunks) for ``n <= exact_limit``; otherwise the best of steepest-ascent
    single-vertex flips from a spectral start and ``restarts`` seeded random starts (a local optimum).
    """
    w = _check_weights(weights)
    n = w.shape[0]
    if n < 2:
        return 0.0, torch.zeros(n, dtype=torch.bool)
    if n <= exact_limit:
        return _exact(w)
    return _local(w, restarts, seed)


def max_cut_phases(
    weights: Tensor,
    eps: float = 0.1,
    min_size: int = 2,
    exact_limit: int = EXACT_LIMIT,
    restarts: int = 8,
    seed: int = 0,
) -> list[list[int]]:
    """Recursive max-cut bisection of ``weights`` (a layer dissimilarity matrix) into phases.

    A group of layers is split into the two sides of its maximum cut while the cut value exceeds
    ``eps * total`` (``total = sum_{l < m} W[l, m]`` of the whole matrix) and the group has at least
    ``2 * min_size`` layers (as in the paper's code, one side of a split may still be smaller than ``min_size``).

    Returns:
        the phases, each a sorted list of layer indices, ordered by their first layer.
    """
    w = _check_weights(weights)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or eps < 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size must be an int >= 1, got {min_size!r}")
    threshold = eps * float(torch.triu(w, diagonal=1).sum())
    pending, phases = [list(range(w.shape[0]))], []
    while pending:
        group = pending.pop()
        if len(group) < 2 * min_size:
            phases.append(group)
            continue
        index = torch.tensor(group)
        value, side = max_cut(w[index][:, index], exact_limit, restarts, seed)
        if value <= threshold:
            phases.append(group)
            continue
        pending += [[g for g, s in zip(group, side.tolist(), strict=True) if s == flag] for flag in (False, True)]
    return sorted((sorted(p) for p in phases), key=lambda p: p[0])

