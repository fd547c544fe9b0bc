"""ops.complexformer: the matmul form of ComplexFormer's scores against the materialised (N, N, d/2) formula,
gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.ops.complexformer import complex_features, complex_scores

FP64 = {"atol": 1e-10, "rtol": 1e-10}

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_scores(q, k, delta, bias, base=10000.0, eps=1e-9):
    """score_mn = sum_i r_q,m,i r_k,n,i cos(delta_i (theta_q,m,i - theta_k,n,i) + b_i + (m - n) g_i), materialising
    the (B, H, N, N, d/2) tensor of angles."""
    n, d = q.shape[-2], q.shape[-1]
    half = d // 2
    r_q = torch.sqrt(q[..., :half] ** 2 + q[..., half:] ** 2 + eps)
    r_k = torch.sqrt(k[..., :half] ** 2 + k[..., half:] ** 2 + eps)
    t_q, t_k = torch.atan2(q[..., half:], q[..., :half]), torch.atan2(k[..., half:], k[..., :half])
    g = torch.tensor([base ** (-2.0 * i / d) for i in range(half)], dtype=q.dtype)
    rel = (torch.arange(n, dtype=q.dtype)[:, None] - torch.arange(n, dtype=q.dtype)[None, :])[..., None] * g
    angle = delta[None, :, None, None, :] * (t_q[:, :, :, None, :] - t_k[:, :, None, :, :]) \
        + bias[None, :, None, None, :] + rel
    return (r_q[:, :, :, None, :] * r_k[:, :, None, :, :] * torch.cos(angle)).sum(-1)


def inputs(b, h, n, half, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, b, h, n, 2 * half, generator=gen, dtype=torch.float64).unbind(0)
    delta, bias = torch.randn(2, h, half, generator=gen, dtype=torch.float64).unbind(0)
    return q, k, delta, bias


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 15), half=st.integers(1, 5),
       base=st.sampled_from([100.0, 10000.0]), seed=st.integers(0, 1000))
def test_scores_equal_the_materialised_formula(b, h, n, half, base, seed):
    q, k, delta, bias = inputs(b, h, n, half, seed)
    torch.testing.assert_close(complex_scores(q, k, delta, bias, base), naive_scores(q, k, delta, bias, base), **FP64)
    q_feat, k_feat = complex_features(q, k, delta, bias, base)
    assert q_feat.shape == q.shape and k_feat.shape == k.shape


def test_gradcheck():
    q, k, delta, bias = (t.requires_grad_() for t in inputs(1, 2, 4, 2, seed=1))
    assert torch.autograd.gradcheck(complex_scores, (q, k, delta, bias))
