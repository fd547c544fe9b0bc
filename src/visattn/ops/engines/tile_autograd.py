"""Autograd pieces of the tiled engine whose generic backwards are slow on the CPU.

- :func:`select_rows`: ``index_select`` along the token dim through the 3-D kernel (2-4x faster than along dim 2
  of ``(B, heads, N, d)``, forward and backward).
- :func:`gather_rows`: a gather whose backward is another gather (no ``index_add_``), valid when every row of the
  output except one copy of each input row gets a zero gradient (padding queries, whose outputs are discarded).
- :func:`scatter_rows`: the inverse, a gather whose backward copies into zeros.
- :func:`unfold_windows`: overlapping windows ``[i * step, i * step + size)`` of a buffer as a strided view; its
  backward adds ``ceil(size / step)`` dense slabs instead of ``Tensor.unfold``'s element-wise ``unfold_backward``.

Each backward is written in differentiable tensor operations, so a double backward (``create_graph=True``) runs
through them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx


def select_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x.index_select(2, index)`` for ``x`` of shape ``(B, heads, rows, dim)``."""
    b, h, rows, dim = x.shape
    return x.reshape(b * h, rows, dim).index_select(1, index).view(b, h, index.numel(), dim)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return select_rows(x, index)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return select_rows(grad, inverse), None, None


class _ScatterRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.rows = x.shape[2]
        return select_rows(x, index)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        b, h, _, dim = grad.shape
        out = grad.new_zeros(b * h, ctx.rows, dim)
        out.index_copy_(1, index, grad.reshape(b * h, index.numel(), dim))
        return out.view(b, h, ctx.rows, dim), None


class _UnfoldWindows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, buffer: Tensor, size: int, step: int) -> Tensor:
        ctx.shape, ctx.size, ctx.step = buffer.shape, size, step
        return buffer.unfold(1, size, step).movedim(-1, 2)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        batch, rows, *rest = ctx.shape
        size, step = ctx.size, ctx.step
        windows = grad.shape[1]
        slabs = -(-size // step)
        out = grad.new_empty(batch, (windows + slabs) * step, *rest)
        blocks = out.view(batch, windows + slabs, step, *rest)
        first = min(step, size)
        blocks[:, :windows, :first] = grad[:, :, :first]
        blocks[:, :windows, first:].zero_()
        blocks[:, windows:].zero_()
        for j in range(1, slabs):
            width = min(step, size - j * step)
            blocks[:, j : j + windows, :width] += grad[:, :, j * step : j * step + width]
        return out[:, :rows], None, None


def gather_rows(x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
    """``select_rows(x, index)``; backward ``select_rows(grad, inverse)``, so ``index[inverse[r]] == r`` must hold and
    every other output row must get a zero gradient."""
    return _GatherRows.apply(x, index, inverse)


def scatter_rows(x: Tensor, index: Tensor) -> Tensor:
    """``select_rows(x, index)`` with distinct ``index``; backward writes the gradient into zeros at ``index``."""
    return _ScatterRows.apply(x, index)


def unfold_windows(buffer: Tensor, size: int, step: int) -> Tensor:
    """``(batch, windows, size, *rest)`` view of ``buffer`` ``(batch, rows, *rest)``: window i is rows
    ``[i * step, i * step + size)``."""
    return _UnfoldWindows.apply(buffer, size, step)
