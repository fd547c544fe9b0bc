"""Deconstructing Attention variants (arXiv 2510.11602): Taylor and element-wise QK mixers against their formulas
written per pair, linear memory, the gated MLP and the decoupled-QK attention, gradients and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from oracles import naive_elementwise, naive_taylor
from visattn.nn import Attention, DecoupledQKAttention, GatedMLP, TaylorMixer

FP64 = {"atol": 1e-12, "rtol": 1e-10}


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@settings(max_examples=6, deadline=None)
@given(n=st.integers(0, 10).map(lambda x: 2 * x + 1), d=st.integers(1, 5), is_causal=st.booleans(),
       chunk=st.integers(1, 25), seed=st.integers(0, 1000))
def test_taylor_equals_formula(n, d, is_causal, chunk, seed):
    q, k, v = rand(3, 2, 2, n, d, seed=seed).unbind(0)
    out, weights = naive_taylor(q, k, v, is_causal)
    mixer = visattn.create_mixer("taylor", is_causal=is_causal, chunk_size=chunk, feature_dim=None)
    torch.testing.assert_close(mixer(q, k, v, n), out, **FP64)
    torch.testing.assert_close(mixer.attention_weights(q, k, n), weights, **FP64)


@settings(max_examples=6, deadline=None)
@given(n=st.integers(0, 10).map(lambda x: 2 * x + 1), d=st.integers(1, 6), is_causal=st.booleans(),
       chunk=st.integers(1, 25), seed=st.integers(0, 1000))
def test_elementwise_qk_equals_formula(n, d, is_causal, chunk, seed):
    q, k, v = rand(3, 2, 3, n, d, seed=seed).unbind(0)
    out, weights = naive_elementwise(q, k, v, is_causal)
    mixer = visattn.create_mixer("elementwise_qk", is_causal=is_causal, chunk_size=chunk)
    torch.testing.assert_close(mixer(q, k, v, n), out, **FP64)
    torch.testing.assert_close(mixer.attention_weights(q, k, n), weights, **FP64)


def project(x, weight):
    """q' = P q per head and token, written out."""
    b, h, n, d = x.shape
    out = torch.zeros(b, h, n, weight.shape[1], dtype=x.dtype)
    for head in range(h):
        for t in range(n):
            out[:, head, t] = x[:, head, t] @ weight[head].T
    return out


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("feature_dim", [2, 16])
def test_taylor_projects_q_and_k_to_the_feature_dim_first(is_causal, feature_dim):
    """Based's form: the Taylor kernel of q' = P_q q and k' = P_k k, s = q' . k' / sqrt(f)."""
    torch.manual_seed(0)
    mixer = visattn.create_mixer("taylor", is_causal=is_causal, chunk_size=4, feature_dim=feature_dim, num_heads=2,
                                 head_dim=5).double()
    with torch.no_grad():
        mixer.k_proj.add_(rand(2, feature_dim, 5, seed=3) * 0.2)
    q, k, v = rand(3, 2, 2, 11, 5, seed=4).unbind(0)
    out, weights = naive_taylor(project(q, mixer.q_proj), project(k, mixer.k_proj), v, is_causal)
    torch.testing.assert_close(mixer(q, k, v, 11), out, **FP64)
    torch.testing.assert_close(mixer.attention_weights(q, k, 11), weights, **FP64)
    assert set(dict(mixer.named_parameters())) == {"q_proj", "k_proj"}
    mixer(q, k, v, 11).sum().backward()
    assert mixer.q_proj.grad.abs().sum() > 0 and mixer.k_proj.grad.abs().sum() > 0


def test_taylor_default_feature_dim_is_based_and_state_bytes_follow_it():
    mixer = visattn.create_mixer("taylor", num_heads=3, head_dim=64)
    assert mixer.feature_dim == 16 and mixer.q_proj.shape == (3, 16, 64)
    assert mixer.state_bytes(2) == 2 * 3 * (1 + 16 + 256) * 65 * 4
    full = TaylorMixer(feature_dim=None)
    assert full.q_proj is None and not list(full.parameters())
    assert full.state_bytes(1, 3, 64) == 3 * (1 + 64 + 4096) * 65 * 4


def test_taylor_projection_init_keeps_the_logit_scale_in_expectation():
    """At init q' . k' / sqrt(f) = q^T (c^2 P^T P) k / sqrt(f) with c^2 P^T P averaging sqrt(f / d) I: the logits keep
    the scale of q . k / sqrt(d) (averaged over heads, the projection's rows are a random orthonormal set)."""
    torch.manual_seed(0)
    mixer = TaylorMixer(feature_dim=16, num_heads=64, head_dim=64)
    gram = (mixer.q_proj.transpose(-2, -1) @ mixer.k_proj).mean(0)
    torch.testing.assert_close(gram, torch.eye(64) * (16 / 64) ** 0.5, atol=0.05, rtol=0)


def test_taylor_fixed_projection_is_a_buffer_and_runs_on_meta():
    fixed = TaylorMixer(feature_dim=4, num_heads=2, head_dim=6, learn_projection=False)
    assert not list(fixed.parameters()) and {"q_proj", "k_proj"} <= set(fixed.state_dict())
    with torch.device("meta"):
        meta = TaylorMixer(is_causal=True, chunk_size=3, feature_dim=4, num_heads=2, head_dim=6)
    q = torch.empty(1, 2, 7, 6, device="meta")
    assert meta(q, q, q, 7).shape == (1, 2, 7, 6)


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
        TaylorMixer(feature_dim=None)(q, k, v, 5, attn_mask=torch.ones(5, 5, dtype=torch.bool))
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
    with pytest.raises(ValueError, match="feature_dim must be a positive int, got 0"):
        TaylorMixer(feature_dim=0)
    with pytest.raises(ValueError, match=r"q and k must be shaped \(B, heads=8, N, head_dim=64\) for feature_dim=16"):
        TaylorMixer()(q, k, v, 5)
    with pytest.raises(ValueError, match=r"attn_drop must be in \[0, 1\), got 1.0"):
        Attention(16, num_heads=2, attn_drop=1.0, mixer="taylor")
