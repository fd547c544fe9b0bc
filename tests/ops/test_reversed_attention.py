"""ops.reversed_attention: A_R = A_F^T scaled by each sender's head weight and message, against the formula pair by
pair; the A_F^T (p m V) form equals the dense weights; gradients; shape errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.ops.reversed_attention import reversed_attention, reversed_weights

FP64 = {"atol": 1e-12, "rtol": 1e-10}


def inputs(b, h, n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, b, h, n, d, generator=gen, dtype=torch.float64).unbind(0)
    p = torch.softmax(torch.randn(b, h, n, generator=gen, dtype=torch.float64), dim=1)
    m = torch.rand(b, n, generator=gen, dtype=torch.float64)
    return q, k, v, p, m


def naive_weights(q, k, p, m, scale):
    """A_R[b, h, i, j] = softmax_l(q_j . k_l scale)[i] * p[b, h, j] * m[b, j], pair by pair."""
    b, h, n, _ = q.shape
    weights = torch.zeros(b, h, n, n, dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            for j in range(n):
                a_f = torch.softmax(torch.stack([q[bi, hi, j] @ k[bi, hi, i] for i in range(n)]) * scale, dim=0)
                for i in range(n):
                    weights[bi, hi, i, j] = a_f[i] * p[bi, hi, j] * m[bi, j]
    return weights


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 7), d=st.integers(1, 4),
       scale=st.sampled_from([None, 0.3]), seed=st.integers(0, 1000))
def test_equals_the_formula_pair_by_pair(b, h, n, d, scale, seed):
    q, k, v, p, m = inputs(b, h, n, d, seed)
    expected = naive_weights(q, k, p, m, 1 / math.sqrt(d) if scale is None else scale)
    torch.testing.assert_close(reversed_weights(q, k, p, m, scale), expected, **FP64)
    torch.testing.assert_close(reversed_attention(q, k, v, p, m, scale), expected @ v, **FP64)


def test_gradcheck():
    args = tuple(t.requires_grad_() for t in inputs(1, 1, 4, 2, seed=5))
    assert torch.autograd.gradcheck(reversed_attention, args)


def test_routing_shapes_are_checked():
    q, k, v, p, m = inputs(1, 2, 4, 3, seed=0)
    with pytest.raises(ValueError, match=r"head_weights must be shaped \(B, heads, N\)=\(1, 2, 4\)"):
        reversed_attention(q, k, v, p[:, :1], m)
    with pytest.raises(ValueError, match=r"message must be shaped \(B, N\)=\(1, 4\)"):
        reversed_weights(q, k, p, m[:, :3])
