"""ops.channel_attention (DaViT, arXiv 2204.03645): channel weights and output against the sums spelled out,
gradients, state size."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.ops.channel_attention import channel_attention, channel_state_bytes, channel_weights

FP64 = {"atol": 1e-12, "rtol": 1e-10}


def naive(q, k, v, scale):
    """A[i, j] = softmax_j(scale sum_m k[m, i] v[m, j]); out[n, i] = sum_j A[i, j] q[n, j], loop by loop."""
    b, h, n, d = q.shape
    weights = torch.zeros(b, h, d, d, dtype=q.dtype)
    out = torch.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            logits = torch.tensor([[sum(float(k[bi, hi, m, i] * v[bi, hi, m, j]) for m in range(n)) * scale
                                    for j in range(d)] for i in range(d)], dtype=q.dtype)
            weights[bi, hi] = torch.softmax(logits, dim=-1)
            for t in range(n):
                out[bi, hi, t] = weights[bi, hi] @ q[bi, hi, t]
    return out, weights


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 2), n=st.integers(1, 7), d=st.integers(1, 4),
       scale=st.sampled_from([None, 0.7]), seed=st.integers(0, 1000))
def test_equals_the_sums_spelled_out(b, h, n, d, scale, seed):
    q, k, v = torch.randn(3, b, h, n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out, weights = naive(q, k, v, d ** -0.5 if scale is None else scale)
    torch.testing.assert_close(channel_weights(k, v, scale), weights, **FP64)
    torch.testing.assert_close(channel_attention(q, k, v, scale), out, **FP64)


def test_gradcheck():
    args = tuple(t.requires_grad_() for t in torch.randn(3, 1, 2, 5, 3, dtype=torch.float64))
    assert torch.autograd.gradcheck(channel_attention, args)


def test_state_bytes_is_the_channel_summary():
    k, v = torch.randn(2, 2, 3, 9, 4)
    summary = k.transpose(-2, -1) @ v
    assert channel_state_bytes(2, 3, 4, 4) == summary.nbytes == 2 * 3 * 16 * 4
