"""Linear attention baseline: paper equation (naive loops), causal chunked scan, O(N) memory, gradients, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from oracles import naive_linear, seeded_qkv
from visattn.nn import Attention, LinearAttentionMixer

FP64 = {"atol": 1e-10, "rtol": 1e-10}
FP32 = {"atol": 1e-5, "rtol": 1e-4}


pytestmark = pytest.mark.usefixtures("one_thread")


qkv = seeded_qkv


@settings(max_examples=30, deadline=None)
@given(b=st.integers(2, 3), h=st.integers(1, 3), n=st.integers(0, 20).map(lambda x: 2 * x + 1), d=st.integers(1, 8),
       dv=st.integers(1, 6), feature_map=st.sampled_from(["elu+1", "relu"]), is_causal=st.booleans(),
       chunk_size=st.integers(1, 9), seed=st.integers(0, 1000))
def test_linear_attention_equals_the_paper_equation(b, h, n, d, dv, feature_map, is_causal, chunk_size, seed):
    q, k, v = qkv(b, h, n, d, seed=seed, dv=dv)
    mixer = LinearAttentionMixer(feature_map, is_causal=is_causal, chunk_size=chunk_size)
    expected = naive_linear(q, k, v, feature_map, is_causal)
    torch.testing.assert_close(mixer(q, k, v, (n,)), expected, **FP64)
    torch.testing.assert_close(mixer.attention_weights(q, k, (n,)) @ v, expected, **FP64)


@pytest.mark.parametrize("is_causal", [False, True])
def test_weights_are_a_row_stochastic_matrix_and_causal_weights_are_lower_triangular(is_causal):
    q, k, _ = qkv(2, 2, 15, 4)
    w = LinearAttentionMixer(is_causal=is_causal).attention_weights(q, k, (3, 5))
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 15, dtype=w.dtype), atol=1e-6, rtol=0)
    if is_causal:
        assert (w.triu(1) == 0).all()


def test_prefix_tokens_and_grids_of_any_rank():
    q, k, v = qkv(2, 2, 1 + 2 * 3 * 4, 4)
    mixer = visattn.create_mixer("linear")
    torch.testing.assert_close(mixer(q, k, v, (2, 3, 4)), naive_linear(q, k, v), **FP64)


def test_registry_entry_and_attention_module():
    spec = visattn.get_mixer_spec("linear")
    assert spec.family == "reformulated" and spec.paper.arxiv == "2006.16236"
    layer = Attention(32, 4, mixer="linear", num_prefix_tokens=1)
    x = torch.randn(2, 1 + 16, 32, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert out.shape == x.shape and torch.isfinite(x.grad).all()


def test_state_bytes_method():
    mixer = LinearAttentionMixer()
    assert mixer.state_bytes(2, 4, 16) == 2 * 4 * 16 * 17 * 4
    assert mixer.state_bytes(1, 4, 16, value_dim=8, dtype=torch.float64) == 4 * 16 * 9 * 8
    with pytest.raises(ValueError, match="state_bytes needs num_heads and head_dim"):
        mixer.state_bytes(1)


def test_bad_input_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"feature_map must be one of 'elu\+1', 'relu', got 'softmax'"):
        LinearAttentionMixer("softmax")
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        LinearAttentionMixer(chunk_size=0)
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        LinearAttentionMixer(is_causal="yes")
    with pytest.raises(ValueError, match=r"attn_drop must be in \[0, 1\), got 1.0"):
        LinearAttentionMixer(attn_drop=1.0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        LinearAttentionMixer(eps=-1.0)
    q, k, v = qkv(1, 1, 4, 2)
    with pytest.raises(ValueError, match="attn_mask is not supported by LinearAttentionMixer"):
        LinearAttentionMixer()(q, k, v, 4, attn_mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="fewer than prod"):
        LinearAttentionMixer()(q, k, v, (3, 3))
