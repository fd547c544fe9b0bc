"""ops.inline_attention: the O(N d^2) form against Han et al.'s Eq. 5 entry by entry and the dense oracle, rows
summing to 1, blocks, gradients, state size."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.ops.inline_attention import INLINE_KERNELS, inline_attention, inline_state_bytes, inline_weights
from visattn.ops.linear_attention import ROW_BLOCK, key_sums

FP64 = {"atol": 1e-10, "rtol": 1e-10}

pytestmark = pytest.mark.usefixtures("one_thread")


def qkv(b, h, n, d, dv=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, e, generator=gen, dtype=torch.float64) for e in (d, d, dv or d))


def naive_weights(q, k, kernel):
    """InL_ij = s phi(q_i).phi(k_j) / N - (1/N) sum_l s phi(q_i).phi(k_l) / N + 1/N, s = d^-1/2, entry by entry."""
    phi = INLINE_KERNELS[kernel]
    b, h, n, d = q.shape
    w = torch.empty(b, h, n, n, dtype=q.dtype)
    for i in range(n):
        for j in range(n):
            total = sum((phi(q[:, :, i]) * phi(k[:, :, m])).sum(-1) for m in range(n))
            w[:, :, i, j] = ((phi(q[:, :, i]) * phi(k[:, :, j])).sum(-1) - total / n) * d ** -0.5 / n + 1.0 / n
    return w


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 2), n=st.integers(1, 9), d=st.integers(1, 5), dv=st.integers(1, 4),
       kernel=st.sampled_from(sorted(INLINE_KERNELS)), seed=st.integers(0, 1000))
def test_equals_the_paper_equation_and_the_dense_oracle(b, h, n, d, dv, kernel, seed):
    q, k, v = qkv(b, h, n, d, dv, seed)
    weights = naive_weights(q, k, kernel)
    phi = INLINE_KERNELS[kernel]
    torch.testing.assert_close(inline_weights(phi(q), phi(k)), weights, **FP64)
    torch.testing.assert_close(inline_attention(q, k, v, kernel), weights @ v, **FP64)
    torch.testing.assert_close(weights.sum(-1), torch.ones(b, h, n, dtype=q.dtype), **FP64)


def test_more_tokens_than_one_row_block():
    q, k, v = qkv(1, 1, ROW_BLOCK + 3, 2)
    phi = INLINE_KERNELS["relu"]
    torch.testing.assert_close(inline_attention(q, k, v, "relu"), inline_weights(phi(q), phi(k)) @ v, **FP64)


def test_gradcheck():
    args = tuple(t.requires_grad_() for t in qkv(1, 2, 5, 3, seed=2))
    assert torch.autograd.gradcheck(lambda q, k, v: inline_attention(q, k, v, "exp"), args)


def test_state_bytes_is_the_key_state_plus_the_mean_value():
    q, k, v = (t.float() for t in qkv(2, 3, 7, 4, dv=5))
    kv, z = key_sums(k, v, INLINE_KERNELS["identity"])
    mean_v = v.mean(dim=-2)
    assert inline_state_bytes(2, 3, 4, 5) == kv.nbytes + z.nbytes + mean_v.nbytes == 2 * 3 * (4 * 6 + 5) * 4
