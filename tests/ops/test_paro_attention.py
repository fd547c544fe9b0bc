"""ops.paro_attention (arXiv 2506.16054): block-sparse execution equals the masked dense reference; bitmap errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.ops.paro_attention import paro_block_sparse_attention


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def naive_block_sparse(q, k, v, bitmap, block):
    n = q.shape[2]
    mask = torch.zeros(q.shape[1], n, n, dtype=torch.bool)
    for h in range(q.shape[1]):
        for i in range(n):
            for j in range(n):
                mask[h, i, j] = bool(bitmap[h, i // block, j // block])
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    empty = ~mask.any(-1, keepdim=True)
    return torch.softmax(scores.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0) @ v


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 29), block=st.integers(2, 8), density=st.floats(0.05, 1.0), seed=st.integers(0, 999))
def test_block_sparse_equals_masked_dense_reference(n: int, block: int, density: float, seed: int) -> None:
    q, k, v = (rand(2, 2, n, 4, seed=seed + i) for i in range(3))
    nb = -(-n // block)
    bitmap = torch.rand(2, nb, nb, generator=torch.Generator().manual_seed(seed)) < density
    expected = naive_block_sparse(q, k, v, bitmap, block)
    torch.testing.assert_close(paro_block_sparse_attention(q, k, v, bitmap, block), expected)
    quantless_explicit = paro_block_sparse_attention(q, k, v, bitmap, block, p_bits=8)
    assert (quantless_explicit - expected).abs().max() < 0.05  # INT8 P: close to, not equal to, the reference


def test_bitmap_of_the_wrong_shape_raises():
    q, k, v = (rand(1, 2, 16, 4, seed=i) for i in range(3))
    with pytest.raises(ValueError, match="bitmap"):
        paro_block_sparse_attention(q, k, v, torch.ones(2, 3, 3, dtype=torch.bool), 4)
