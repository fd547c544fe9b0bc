"""Axial attention computed line by line: the attended axis moved last, one SDPA call over all lines.

Paper: Ho et al., "Axial Attention in Multidimensional Transformers" (arXiv 1912.12180); used along time and
space by MORPH ("MORPH: Shape-agnostic PDE Foundation Models", arXiv 2509.21670). A token at
grid coordinate ``x`` attends to the tokens that differ from it only along ``axis``:

``out_x = sum_{t=0}^{L-1} softmax_t(q_x . k_{x[axis <- t]} * scale) v_{x[axis <- t]}``

so the grid splits into ``prod(shape) / L`` independent lines of ``L = shape[axis]`` tokens. No mask is built:
the lines are a batch dimension of ``scaled_dot_product_attention``. Prefix tokens (seen by every token, and
seeing every token) join every line as ``P`` extra keys; prefix queries attend densely.

The dispatch runs the lines as tiles of the fused tile kernel instead where it can (:mod:`visattn.ops.engines.
fused_tiles`; on 2 cores 1.15-1.6x faster than SDPA over the lines forward, and faster forward + backward on one tile
per line: 1.27-1.55x), which reads the lines in place rather than moving the axis last.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._checks import Shape, num_tokens
from .sdpa import sdpa


def to_lines(x: Tensor, shape: Shape, axis: int) -> Tensor:
    """``(B, heads, prod(shape), dim)`` grid tokens as ``(B * heads, lines, L, dim)`` lines along ``axis``."""
    b, h, _, dim = x.shape
    grid = x.reshape(b * h, *shape, dim).movedim(1 + axis, -2)
    return grid.reshape(b * h, -1, shape[axis], dim)


def from_lines(lines: Tensor, batch: int, heads: int, shape: Shape, axis: int) -> Tensor:
    """Inverse of :func:`to_lines`: ``(B * heads, lines, L, dim)`` back to ``(B, heads, prod(shape), dim)``."""
    others = tuple(size for a, size in enumerate(shape) if a != axis)
    grid = lines.reshape(batch * heads, *others, shape[axis], lines.shape[-1]).movedim(-2, 1 + axis)
    return grid.reshape(batch, heads, num_tokens(shape), lines.shape[-1])


def lines_attention(q: Tensor, k: Tensor, v: Tensor, axis: int, shape: Shape, prefix: int, scale: float | None,
                    dropout_p: float) -> Tensor:
    """Attention along ``axis`` (non-negative) on checked arguments: one SDPA call over all lines."""
    b, h = q.shape[:2]
    q_lines, k_lines, v_lines = (to_lines(x[:, :, prefix:], shape, axis) for x in (q, k, v))
    if prefix:
        lines = q_lines.shape[1]
        k_lines, v_lines = (
            torch.cat([x[:, :, :prefix].reshape(b * h, 1, prefix, x.shape[-1]).expand(-1, lines, -1, -1), y], 2)
            for x, y in ((k, k_lines), (v, v_lines))
        )
    out = from_lines(sdpa(q_lines, k_lines, v_lines, scale=scale, dropout_p=dropout_p),
                     b, h, shape, axis)
    if not prefix:
        return out
    prefix_out = sdpa(q[:, :, :prefix], k, v, scale=scale, dropout_p=dropout_p)
    return torch.cat([prefix_out, out], dim=2)
