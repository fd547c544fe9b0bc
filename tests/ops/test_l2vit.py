"""ops.l2vit: enhanced linear attention against the equation token by token and the dense oracle, both sides of
the clamp, blocks, gradients, state size."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import naive_l2vit, seeded_qkv
from visattn.ops.l2vit import enhanced_linear_attention, enhanced_linear_weights, l2vit_state_bytes
from visattn.ops.linear_attention import ROW_BLOCK, key_sums

FP64 = {"atol": 1e-10, "rtol": 1e-10}

pytestmark = pytest.mark.usefixtures("one_thread")


def qkv(b, h, n, d, seed=0, scale=1.0):
    return seeded_qkv(b, h, n, d, seed=seed, scale=scale)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(1, 21), d=st.integers(1, 6),
       scale=st.sampled_from([1.0, 4.0, 12.0]), clamp=st.sampled_from([1.0, 100.0]), seed=st.integers(0, 1000))
def test_equals_the_paper_equation_and_the_dense_oracle(b, h, n, d, scale, clamp, seed):
    q, k, v = qkv(b, h, n, d, seed, scale)
    tau = torch.rand(h, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.1
    expected = naive_l2vit(q, k, v, tau, clamp)
    torch.testing.assert_close(enhanced_linear_attention(q, k, v, tau, clamp), expected, **FP64)
    torch.testing.assert_close(enhanced_linear_weights(q, k, tau, clamp) @ v, expected, **FP64)


def test_more_tokens_than_one_row_block():
    q, k, v = qkv(1, 1, ROW_BLOCK + 3, 2)
    tau = torch.full((1, 1, 1), 0.5, dtype=torch.float64)
    torch.testing.assert_close(enhanced_linear_attention(q, k, v, tau), enhanced_linear_weights(q, k, tau) @ v, **FP64)


def test_gradcheck():
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 5, 3, seed=1, scale=3.0))
    tau = torch.full((2, 1, 1), 0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: enhanced_linear_attention(*a, min_denominator=2.0), (q, k, v, tau))


def test_state_bytes_is_the_relu_key_state():
    q, k, v = (t.float() for t in qkv(2, 3, 7, 4))
    kv, z = key_sums(k, v, torch.relu)
    assert l2vit_state_bytes(2, 3, 4, 4) == kv.nbytes + z.nbytes == 2 * 3 * 4 * 5 * 4
