"""ops.affine_scaled: alpha softmax + uniform offset against the formula entry by entry (unmasked, causal, boolean
mask), rows summing to alpha_ma, gradients, mask errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.ops.affine_scaled import affine_scaled_attention, affine_scaled_weights

FP64 = {"atol": 1e-12, "rtol": 1e-10}


def inputs(b, h, n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, b, h, n, d, generator=gen, dtype=torch.float64).unbind(0)
    alpha = torch.rand(b, h, n, 1, generator=gen, dtype=torch.float64)
    alpha_ma = torch.rand(h, generator=gen, dtype=torch.float64) + 0.5
    mask = torch.rand(n, n, generator=gen) > 0.4
    mask[:, 0] = True
    return q, k, v, alpha, alpha_ma, mask


def naive_weights(q, k, alpha, alpha_ma, allowed):
    """w_ij = alpha_i softmax over visible j of q_i . k_j / sqrt d + (alpha_ma - alpha_i) / n_i on visible j."""
    b, h, n, d = q.shape
    w = torch.zeros(b, h, n, n, dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                seen = [j for j in range(n) if allowed[i, j]]
                logits = torch.stack([q[bi, hi, i] @ k[bi, hi, j] / math.sqrt(d) for j in seen])
                probs = torch.softmax(logits, 0)
                a = alpha[bi, hi, i, 0]
                for j, p in zip(seen, probs, strict=True):
                    w[bi, hi, i, j] = a * p + (alpha_ma[hi] - a) / len(seen)
    return w


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 2), n=st.integers(1, 8), d=st.integers(1, 4),
       case=st.sampled_from(["full", "causal", "mask", "causal+mask"]), seed=st.integers(0, 1000))
def test_equals_the_formula_and_rows_sum_to_alpha_ma(b, h, n, d, case, seed):
    q, k, v, alpha, alpha_ma, mask = inputs(b, h, n, d, seed)
    is_causal = case.startswith("causal")
    attn_mask = mask if case.endswith("mask") else None
    allowed = torch.ones(n, n, dtype=torch.bool)
    if is_causal:
        allowed = allowed.tril()
    if attn_mask is not None:
        allowed = allowed & attn_mask
    expected = naive_weights(q, k, alpha, alpha_ma, allowed)
    weights = affine_scaled_weights(q, k, alpha, alpha_ma, is_causal, attn_mask)
    torch.testing.assert_close(weights, expected, **FP64)
    torch.testing.assert_close(affine_scaled_attention(q, k, v, alpha, alpha_ma, is_causal, attn_mask), expected @ v,
                               **FP64)
    torch.testing.assert_close(weights.sum(-1), alpha_ma.view(1, -1, 1).expand(b, h, n), **FP64)


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck(is_causal):
    q, k, v, alpha, alpha_ma, _ = inputs(1, 2, 4, 3, seed=2)
    args = tuple(t.requires_grad_() for t in (q, k, v, alpha))
    assert torch.autograd.gradcheck(lambda q, k, v, a: affine_scaled_attention(q, k, v, a, alpha_ma, is_causal), args)


def test_float_mask_is_refused():
    q, k, v, alpha, alpha_ma, _ = inputs(1, 1, 3, 2, seed=0)
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        affine_scaled_attention(q, k, v, alpha, alpha_ma, attn_mask=torch.zeros(3, 3, dtype=torch.float64))
