"""ops.infsa: InfSA's weights and Linear-InfSA's attention vector against the paper's formulas entry by entry,
masks, Frobenius bound, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.ops.infsa import infsa_weights, linear_infsa_vector

FP64 = {"atol": 1e-10, "rtol": 1e-10}

pytestmark = pytest.mark.usefixtures("one_thread")


def qk(b, h, n, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(2))


def naive_weights(q, k, rho, mask=None):
    """A = rho R / (||R||_F + 1e-6), R_ij = max(q_i.k_j / d, 0) (masked entries 0), per (b, h)."""
    b, h, n, d = q.shape
    weights = torch.zeros(b, h, n, n, dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            r = torch.zeros(n, n, dtype=q.dtype)
            for i in range(n):
                for j in range(n):
                    if mask is None or mask[i, j]:
                        r[i, j] = max(float(q[bi, hi, i] @ k[bi, hi, j]) / d, 0.0)
            weights[bi, hi] = rho * r / (math.sqrt(float((r ** 2).sum())) + 1e-6)
    return weights


def naive_vector(q, k, eps=1e-6):
    """q_bar = sum_t w_t q_t, w_t = ||q_t|| / sum ||q|| (d^-1/2-scaled norms, + eps as released); a_j = relu(q_bar.k_j
    / d) / (sum_l relu(q_bar.k_l / d) + eps)."""
    b, h, n, d = q.shape
    out = torch.zeros(b, h, n, dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            norms = [float(q[bi, hi, t].norm()) / math.sqrt(d) for t in range(n)]
            w = [x / (sum(norms) + eps) for x in norms]
            q_bar = sum(w[t] * q[bi, hi, t] for t in range(n))
            a = [max(float(q_bar @ k[bi, hi, j]) / d, 0.0) for j in range(n)]
            out[bi, hi] = torch.tensor(a, dtype=q.dtype) / (sum(a) + eps)
    return out


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 2), n=st.integers(1, 7), d=st.integers(1, 5),
       rho=st.floats(0.05, 0.99), masked=st.booleans(), seed=st.integers(0, 1000))
def test_infsa_weights_equal_the_paper_equation(b, h, n, d, rho, masked, seed):
    q, k = qk(b, h, n, d, seed)
    mask = torch.rand(n, n, generator=torch.Generator().manual_seed(seed)) > 0.3 if masked else None
    weights = infsa_weights(q, k, rho, mask)
    torch.testing.assert_close(weights, naive_weights(q, k, rho, mask), **FP64)
    assert torch.linalg.matrix_norm(weights).max() < rho


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 2), n=st.integers(1, 9), d=st.integers(1, 5), seed=st.integers(0, 1000))
def test_linear_infsa_vector_equals_the_paper_equation(b, h, n, d, seed):
    q, k = qk(b, h, n, d, seed)
    torch.testing.assert_close(linear_infsa_vector(q, k), naive_vector(q, k), **FP64)


def test_gradcheck():
    q, k = (t.requires_grad_() for t in qk(1, 2, 4, 3, seed=3))
    assert torch.autograd.gradcheck(lambda q, k: infsa_weights(q, k, 0.9), (q, k))
    assert torch.autograd.gradcheck(linear_infsa_vector, (q, k))
