"""Evaluate a mask on a grid: dense bool matrix, attended-pair count and density, FlexAttention block mask."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .._checks import num_tokens
from .base import ROW_BUDGET, Mask

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask


def _check_mask(mask: object) -> Mask:
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be a visattn.masks.Mask, got {type(mask).__name__}")
    return mask


def materialize(
    mask: Mask,
    shape: int | tuple[int, ...],
    num_prefix_tokens: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """The dense bool ``[N, N]`` mask (True = the query may see the key), ``N = num_prefix_tokens + prod(shape)``."""
    _check_mask(mask)
    shape, prefix = mask.bind(shape, num_prefix_tokens)
    n = prefix + num_tokens(shape)
    return mask.rows(shape, 0, n, prefix, device)


def pair_count(mask: Mask, shape: int | tuple[int, ...], num_prefix_tokens: int = 0) -> int:
    """Number of (query, key) pairs ``mask`` allows on ``shape``; never materialises N x N at once."""
    return _check_mask(mask).pair_count(shape, num_prefix_tokens)


def density(mask: Mask, shape: int | tuple[int, ...], num_prefix_tokens: int = 0) -> float:
    """Attended pairs / N^2, computed from per-axis counts or row chunks (never N x N at once)."""
    shape, prefix = _check_mask(mask).bind(shape, num_prefix_tokens)
    n = prefix + num_tokens(shape)
    return mask.pair_count(shape, prefix) / (n * n)


def to_block_mask(
    mask: Mask,
    shape: int | tuple[int, ...],
    num_prefix_tokens: int = 0,
    device: torch.device | str | None = None,
    block_size: int = 128,
) -> BlockMask:
    """A FlexAttention ``BlockMask`` for ``mask`` on ``shape``.

    The block structure is computed from row chunks of the dense mask (``block_size`` rows at a time, so memory
    stays O(block_size * N)) rather than by ``create_block_mask``'s vmap over all N^2 pairs, which on a CPU
    takes seconds at 16k tokens. Blocks that are entirely allowed are marked full and skip the mask_mod.
    FlexAttention is imported here, on first use, so that ``import visattn`` stays fast.
    """
    from torch.nn.attention.flex_attention import BlockMask

    _check_mask(mask)
    shape, prefix = mask.bind(shape, num_prefix_tokens)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    n = prefix + num_tokens(shape)
    blocks = -(-n // block_size)
    padded = blocks * block_size
    step = max(1, ROW_BUDGET // max(padded, 1) // block_size) * block_size
    any_parts, all_parts = [], []
    for start in range(0, padded, step):
        stop = min(start + step, padded)
        rows = torch.zeros(stop - start, padded, dtype=torch.bool)
        real = min(stop, n)
        if start < real:
            rows[: real - start, :n] = mask.rows(shape, start, real, prefix)
        tiles = rows.view(-1, block_size, blocks, block_size)
        any_parts.append(tiles.any(dim=(1, 3)))
        all_parts.append(tiles.all(dim=(1, 3)))
    any_block, all_block = torch.cat(any_parts), torch.cat(all_parts)
    if padded != n:
        all_block[-1, :] = False
        all_block[:, -1] = False
    partial = any_block & ~all_block
    kv_num, kv_idx = _block_lists(partial)
    full_num, full_idx = _block_lists(all_block)
    return BlockMask.from_kv_blocks(
        kv_num.to(device),
        kv_idx.to(device),
        full_num.to(device),
        full_idx.to(device),
        BLOCK_SIZE=block_size,
        mask_mod=mask.mask_mod(shape, prefix),
        seq_lengths=(n, n),
    )


def _block_lists(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """Per query block: how many kv blocks are set and their indices first (BlockMask's layout, B = H = 1)."""
    num = blocks.sum(-1).to(torch.int32)
    order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num[None, None], order[None, None]
