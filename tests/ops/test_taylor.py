"""ops.taylor: the 2nd-order Taylor map, the chunked forms against the formula per pair and the dense oracle,
linear memory, causality, gradients and the recurrent state (Based's feature dimension)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import naive_taylor
from probes import LargestTensor, check_causal
from visattn.ops.recurrent_state import kv_cache_bytes
from visattn.ops.taylor import taylor_attention, taylor_feature_map, taylor_state, taylor_state_bytes, taylor_weights

FP64 = {"atol": 1e-12, "rtol": 1e-10}


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_taylor_feature_map_gives_the_second_order_expansion():
    q, k = rand(2, 3, 7, 5, seed=1).unbind(0)
    s = (q * k).sum(-1) / math.sqrt(5)
    torch.testing.assert_close((taylor_feature_map(q) * taylor_feature_map(k)).sum(-1), 1 + s + s * s / 2, **FP64)
    assert taylor_feature_map(q).shape[-1] == 1 + 5 + 25


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 21), d=st.integers(1, 5), dv=st.integers(1, 4), is_causal=st.booleans(),
       chunk=st.integers(1, 25), seed=st.integers(0, 1000))
def test_taylor_equals_formula_and_the_dense_oracle(n, d, dv, is_causal, chunk, seed):
    q, k = rand(2, 2, 2, n, d, seed=seed).unbind(0)
    v = rand(2, 2, n, dv, seed=seed + 1)
    out, weights = naive_taylor(q, k, v, is_causal)
    torch.testing.assert_close(taylor_attention(q, k, v, is_causal, chunk), out, **FP64)
    torch.testing.assert_close(taylor_weights(q, k, is_causal), weights, **FP64)


@pytest.mark.parametrize("is_causal", [False, True])
def test_linear_memory_no_n_by_n_tensor(is_causal):
    q, k, v = rand(3, 1, 1, 1024, 4, seed=4).unbind(0)
    q.requires_grad_()
    with LargestTensor() as probe:
        taylor_attention(q, k, v, is_causal=is_causal, chunk_size=64).sum().backward()
    assert probe.largest < 1024 * 1024 // 16


def test_causal_never_sees_a_later_token():
    q, k, v = rand(3, 1, 2, 23, 4, seed=5).unbind(0)
    check_causal(lambda a, b, c: taylor_attention(a, b, c, is_causal=True, chunk_size=5), q, k, v, 12)


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck(is_causal):
    args = tuple(t.requires_grad_() for t in rand(3, 1, 1, 5, 2, seed=6).unbind(0))
    assert torch.autograd.gradcheck(lambda a, b, c: taylor_attention(a, b, c, is_causal=is_causal, chunk_size=2), args)


def test_state_bytes_is_the_state_taylor_state_builds():
    k = rand(2, 3, 10, 4, dtype=torch.float32)
    v = rand(2, 3, 10, 5, seed=1, dtype=torch.float32)
    state, norm = taylor_state(k, v, chunk_size=3)
    assert state.shape == (2, 3, 1 + 4 + 16, 5) and norm.shape == (2, 3, 1, 1 + 4 + 16)
    assert taylor_state_bytes(2, 3, 4, 5) == state.nbytes + norm.nbytes == 2 * 3 * 21 * 6 * 4


def test_based_feature_dim_keeps_the_state_below_a_kv_cache_the_full_head_dim_does_not():
    """Issue 13: on the full head dimension (d = 64) the state (1 + d + d^2)(d + 1) exceeds a 2048-token KV cache;
    projected to Based's f = 16 it is (1 + 16 + 256)(d + 1), about 15x smaller than that cache."""
    cache = kv_cache_bytes(1, 1, 64, 2048)
    assert taylor_state_bytes(1, 1, 64, 64) == (1 + 64 + 64 ** 2) * 65 * 4 > cache
    assert taylor_state_bytes(1, 1, 16, 64) == 273 * 65 * 4 < cache / 14
