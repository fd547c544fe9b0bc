"""ops.complexformer: the matmul form of ComplexFormer's scores against the materialised (N, N, d/2) formula,
gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import naive_scores
from visattn.ops.complexformer import complex_features, complex_scores

FP64 = {"atol": 1e-10, "rtol": 1e-10}

pytestmark = pytest.mark.usefixtures("one_thread")


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
