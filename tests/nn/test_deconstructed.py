"""Deconstructing Attention variants (arXiv 2510.11602): Taylor and element-wise QK mixers against their formulas
written per pair, linear memory, the gated MLP and the decoupled-QK attention, gradients and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import visattn
from visattn.nn import Attention, DecoupledQKAttention, ElementwiseQKMixer, GatedMLP, TaylorMixer
from visattn.nn.deconstructed import elementwise_qk_attention, taylor_attention, taylor_feature_map

FP64 = {"atol": 1e-12, "rtol": 1e-10}


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def naive_taylor(q, k, v, is_causal):
    """a_ij = (1 + s + s^2/2) / sum_l (...) over visible l, s = q_i . k_j / sqrt(d), pair by pair."""
    b, h, n, d = q.shape
    weights = torch.zeros(b, h, n, n, dtype=q.dtype)
    for i in range(n):
        for j in range(i + 1 if is_causal else n):
            s = (q[..., i, :] * k[..., j, :]).sum(-1) / math.sqrt(d)
            weights[..., i, j] = 1 + s + s * s / 2
    weights = weights / weights.sum(-1, keepdim=True)
    return weights @ v, weights


def naive_elementwise(q, k, v, is_causal):
    """A_ij = exp(s_j) / sum_{visible l} exp(s_l), s_t = SiLU(q_t) . k_t / sqrt(d)."""
    d, n = q.shape[-1], q.shape[-2]
    s = (q * torch.sigmoid(q) * k).sum(-1) / math.sqrt(d)
    weights = torch.zeros(*s.shape, n, dtype=q.dtype)
    for i in range(n):
        visible = s[..., : i + 1] if is_causal else s
        weights[..., i, : visible.shape[-1]] = torch.softmax(visible, dim=-1)
    return weights @ v, weights


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_taylor_feature_map_gives_the_second_order_expansion():
    q, k = rand(2, 3, 7, 5, seed=1).unbind(0)
    s = (q * k).sum(-1) / math.sqrt(5)
    torch.testing.assert_close((taylor_feature_map(q) * taylor_feature_map(k)).sum(-1), 1 + s + s * s / 2, **FP64)
    assert taylor_feature_map(q).shape[-1] == 1 + 5 + 25


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 10).map(lambda x: 2 * x + 1), d=st.integers(1, 5), is_causal=st.booleans(),
       chunk=st.integers(1, 25), seed=st.integers(0, 1000))
def test_taylor_equals_formula(n, d, is_causal, chunk, seed):
    q, k, v = rand(3, 2, 2, n, d, seed=seed).unbind(0)
    out, weights = naive_taylor(q, k, v, is_causal)
    mixer = visattn.create_mixer("taylor", is_causal=is_causal, chunk_size=chunk)
    torch.testing.assert_close(mixer(q, k, v, n), out, **FP64)
    torch.testing.assert_close(mixer.attention_weights(q, k, n), weights, **FP64)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 10).map(lambda x: 2 * x + 1), d=st.integers(1, 6), is_causal=st.booleans(),
       chunk=st.integers(1, 25), seed=st.integers(0, 1000))
def test_elementwise_qk_equals_formula(n, d, is_causal, chunk, seed):
    q, k, v = rand(3, 2, 3, n, d, seed=seed).unbind(0)
    out, weights = naive_elementwise(q, k, v, is_causal)
    mixer = visattn.create_mixer("elementwise_qk", is_causal=is_causal, chunk_size=chunk)
    torch.testing.assert_close(mixer(q, k, v, n), out, **FP64)
    torch.testing.assert_close(mixer.attention_weights(q, k, n), weights, **FP64)


def test_elementwise_qk_literal_row_reading_is_uniform():
    q, k, v = rand(3, 2, 2, 9, 4, seed=2).unbind(0)
    mixer = ElementwiseQKMixer(score_axis="query")
    torch.testing.assert_close(mixer(q, k, v, 9), v.mean(-2, keepdim=True).expand_as(v), **FP64)
    causal = ElementwiseQKMixer(is_causal=True, score_axis="query")
    weights = causal.attention_weights(q, k, 9)
    expected = torch.ones(9, 9, dtype=torch.float64).tril()
    torch.testing.assert_close(weights, (expected / expected.sum(-1, keepdim=True)).expand_as(weights), **FP64)
    torch.testing.assert_close(causal(q, k, v, 9), weights @ v, **FP64)


def test_elementwise_causal_scan_is_stable_for_large_score_ranges():
    q, k, v = rand(3, 1, 2, 160, 8, seed=3, dtype=torch.float32).unbind(0)
    q = q * 40.0
    got = elementwise_qk_attention(q, k, v, is_causal=True, chunk_size=32)
    assert torch.isfinite(got).all()
    expected, _ = naive_elementwise(q.double(), k.double(), v.double(), True)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fn", [taylor_attention, elementwise_qk_attention])
@pytest.mark.parametrize("is_causal", [False, True])
def test_linear_memory_no_n_by_n_tensor(fn, is_causal):
    q, k, v = rand(3, 1, 1, 1024, 4, seed=4).unbind(0)
    q.requires_grad_()
    with LargestTensor() as probe:
        fn(q, k, v, is_causal=is_causal, chunk_size=64).sum().backward()
    assert probe.largest < 1024 * 1024 // 16


@pytest.mark.parametrize("fn", [taylor_attention, elementwise_qk_attention])
def test_causal_never_sees_a_later_token(fn):
    q, k, v = rand(3, 1, 2, 23, 4, seed=5).unbind(0)
    base = fn(q, k, v, is_causal=True, chunk_size=5)
    k2, v2 = k.clone(), v.clone()
    k2[..., 12:, :] += 2.0
    v2[..., 12:, :] -= 1.0
    moved = fn(q, k2, v2, is_causal=True, chunk_size=5)
    torch.testing.assert_close(moved[..., :12, :], base[..., :12, :], atol=0, rtol=0)


@pytest.mark.parametrize("fn", [taylor_attention, elementwise_qk_attention])
@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck(fn, is_causal):
    args = tuple(t.requires_grad_() for t in rand(3, 1, 1, 5, 2, seed=6).unbind(0))
    assert torch.autograd.gradcheck(lambda a, b, c: fn(a, b, c, is_causal=is_causal, chunk_size=2), args)


def test_mixers_in_attention_module():
    torch.manual_seed(0)
    for name in ("taylor", "elementwise_qk"):
        layer = Attention(32, num_heads=4, mixer=name, is_causal=True, num_prefix_tokens=1)
        x = torch.randn(2, 1 + 9, 32, requires_grad=True)
        layer(x).sum().backward()
        assert torch.isfinite(x.grad).all()
        assert visattn.get_mixer_spec(name).paper.arxiv == "2510.11602"


def test_gated_mlp_is_the_formula_and_mixes_no_tokens():
    torch.manual_seed(1)
    mlp = GatedMLP(12, hidden_features=20).double()
    x = rand(2, 7, 12, seed=7)
    w_gate, w_up, w_down = mlp.fc1_g.weight, mlp.fc1_x.weight, mlp.fc2.weight
    expected = (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T
    torch.testing.assert_close(mlp(x, shape=(7,)), expected, **FP64)
    x2 = x.clone()
    x2[:, 3] += 1.0
    changed = (mlp(x2) - mlp(x)).abs().amax(-1)
    assert (changed[:, 3] > 0).all() and (changed[:, [0, 1, 2, 4, 5, 6]] == 0).all()


def naive_decoupled(module: DecoupledQKAttention, x, e):
    heads, d = module.num_heads, module.dim // module.num_heads
    b, n, _ = x.shape
    q = module.q(e).reshape(b, n, heads, d).transpose(1, 2)
    k = module.k(e).reshape(b, n, heads, d).transpose(1, 2)
    v = module.v(x).reshape(b, n, heads, d).transpose(1, 2)
    logits = q @ k.transpose(-2, -1) / math.sqrt(d)
    if module.is_causal:
        logits = logits.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return module.proj((torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("is_causal", [False, True])
def test_decoupled_qk_sources(is_causal):
    torch.manual_seed(2)
    x, e = rand(2, 2, 9, 16, seed=8).unbind(0)
    static = DecoupledQKAttention(16, 4, source="static", is_causal=is_causal).double()
    torch.testing.assert_close(static(x, qk_source=e), naive_decoupled(static, x, e), **FP64)
    fixed = DecoupledQKAttention(16, 4, source="fixed", max_len=32, is_causal=is_causal).double()
    table = fixed.qk_table[:9].expand(2, -1, -1)
    torch.testing.assert_close(fixed(x), naive_decoupled(fixed, x, table), **FP64)
    rnd = DecoupledQKAttention(16, 4, source="random", num_embeddings=50, is_causal=is_causal).double()
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(rnd(x, token_ids=ids), naive_decoupled(rnd, x, rnd.qk_table[ids]), **FP64)
    assert not rnd.qk_table.requires_grad and "qk_table" in rnd.state_dict()
    again = DecoupledQKAttention(16, 4, source="random", num_embeddings=50)
    torch.testing.assert_close(again.qk_table, rnd.qk_table.float())


def test_fixed_sequence_weights_do_not_depend_on_the_input():
    torch.manual_seed(3)
    fixed = DecoupledQKAttention(8, 2, source="fixed", max_len=16).double()
    x1, x2 = rand(2, 1, 5, 8, seed=10).unbind(0)
    with torch.no_grad():
        fixed.proj.weight.copy_(torch.eye(8, dtype=torch.float64))
        fixed.proj.bias.zero_()
        fixed.v.weight.copy_(torch.eye(8, dtype=torch.float64))
    torch.testing.assert_close(fixed(x1 + 2 * x2), fixed(x1) + 2 * fixed(x2), **FP64)


def test_bad_input():
    with pytest.raises(ValueError, match="score_axis must be one of"):
        visattn.create_mixer("elementwise_qk", score_axis="rows")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        TaylorMixer(chunk_size=0)
    q, k, v = rand(3, 1, 2, 5, 4).unbind(0)
    with pytest.raises(ValueError, match="attn_mask is not supported by TaylorMixer"):
        TaylorMixer()(q, k, v, 5, attn_mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="source must be one of"):
        DecoupledQKAttention(8, 2, source="learned")
    with pytest.raises(ValueError, match="source='random' needs num_embeddings"):
        DecoupledQKAttention(8, 2, source="random")
    x = rand(1, 5, 8)
    with pytest.raises(ValueError, match="source='static' needs qk_source"):
        DecoupledQKAttention(8, 2).double()(x)
    with pytest.raises(ValueError, match="source='fixed' holds max_len=4"):
        DecoupledQKAttention(8, 2, source="fixed", max_len=4).double()(x)
    with pytest.raises(ValueError, match="token_ids must lie in"):
        DecoupledQKAttention(8, 2, source="random", num_embeddings=3).double()(x, token_ids=torch.full((1, 5), 3))
    with pytest.raises(ValueError, match="dim must be a positive int"):
        GatedMLP(0)
    with pytest.raises(ValueError, match="attn_drop must be 0 for taylor"):
        Attention(16, num_heads=2, attn_drop=0.1, mixer="taylor")
