"""ops.elementwise_qk: per-token scores against the formula and the dense oracle, the literal reading, the stable
causal scan, linear memory, causality, gradients and the scan state."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import naive_elementwise
from probes import LargestTensor, check_causal
from visattn.ops.elementwise_qk import elementwise_qk_attention, elementwise_qk_state_bytes, elementwise_qk_weights

FP64 = {"atol": 1e-12, "rtol": 1e-10}


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 21), d=st.integers(1, 6), is_causal=st.booleans(), chunk=st.integers(1, 25),
       seed=st.integers(0, 1000))
def test_elementwise_qk_equals_formula_and_the_dense_oracle(n, d, is_causal, chunk, seed):
    q, k, v = rand(3, 2, 3, n, d, seed=seed).unbind(0)
    out, weights = naive_elementwise(q, k, v, is_causal)
    torch.testing.assert_close(elementwise_qk_attention(q, k, v, is_causal, chunk_size=chunk), out, **FP64)
    torch.testing.assert_close(elementwise_qk_weights(q, k, is_causal), weights, **FP64)


def test_elementwise_qk_literal_row_reading_is_uniform():
    q, k, v = rand(3, 2, 2, 9, 4, seed=2).unbind(0)
    torch.testing.assert_close(elementwise_qk_attention(q, k, v, score_axis="query"),
                               v.mean(-2, keepdim=True).expand_as(v), **FP64)
    weights = elementwise_qk_weights(q, k, is_causal=True, score_axis="query")
    expected = torch.ones(9, 9, dtype=torch.float64).tril()
    torch.testing.assert_close(weights, (expected / expected.sum(-1, keepdim=True)).expand_as(weights), **FP64)
    torch.testing.assert_close(elementwise_qk_attention(q, k, v, True, "query"), weights @ v, **FP64)


def test_elementwise_causal_scan_is_stable_for_large_score_ranges():
    q, k, v = rand(3, 1, 2, 160, 8, seed=3, dtype=torch.float32).unbind(0)
    q = q * 40.0
    got = elementwise_qk_attention(q, k, v, is_causal=True, chunk_size=32)
    assert torch.isfinite(got).all()
    expected, _ = naive_elementwise(q.double(), k.double(), v.double(), True)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("is_causal", [False, True])
def test_linear_memory_no_n_by_n_tensor(is_causal):
    q, k, v = rand(3, 1, 1, 1024, 4, seed=4).unbind(0)
    q.requires_grad_()
    with LargestTensor() as probe:
        elementwise_qk_attention(q, k, v, is_causal=is_causal, chunk_size=64).sum().backward()
    assert probe.largest < 1024 * 1024 // 16


def test_causal_never_sees_a_later_token():
    q, k, v = rand(3, 1, 2, 23, 4, seed=5).unbind(0)
    check_causal(lambda a, b, c: elementwise_qk_attention(a, b, c, is_causal=True, chunk_size=5), q, k, v, 12)


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck(is_causal):
    args = tuple(t.requires_grad_() for t in rand(3, 1, 1, 5, 2, seed=6).unbind(0))
    assert torch.autograd.gradcheck(
        lambda a, b, c: elementwise_qk_attention(a, b, c, is_causal=is_causal, chunk_size=2), args)


def test_state_bytes_formula_and_bad_axis():
    assert elementwise_qk_state_bytes(2, 3, 8) == 2 * 3 * (8 + 2) * 4
    q = rand(1, 1, 3, 2)
    with pytest.raises(ValueError, match="score_axis must be one of"):
        elementwise_qk_attention(q, q, q, score_axis="rows")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        elementwise_qk_attention(q, q, q, chunk_size=0)
