"""LSSA / LSSAR mixers (arXiv 2501.13428): the paper's formula written out per pair, registry, Attention, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from visattn.nn import Attention, SoftplusAttentionMixer

FP64 = {"atol": 1e-12, "rtol": 1e-10}


def naive_lssar(q, k, v, is_causal: bool, p: float | None):
    """Pair by pair: a_ij = softplus(ln d ln n_i cos(q_i, k_j)) over visible j, / row sum; LSSAR then
    relu(a n_i - O_i)^p / row sum with O_i = 0 on the first three rows. Returns (out, weights)."""
    b, h, n, d = q.shape
    weights = torch.zeros(b, h, n, n, dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                keys = range(i + 1) if is_causal else range(n)
                count = len(keys)
                row = torch.zeros(n, dtype=q.dtype)
                for j in keys:
                    cos = torch.dot(q[bi, hi, i], k[bi, hi, j]) / (q[bi, hi, i].norm() * k[bi, hi, j].norm())
                    row[j] = math.log1p(math.exp(math.log(d) * math.log(count) * float(cos)))
                row = row / row.sum()
                if p is not None:
                    row = torch.clamp(row * count - (0.0 if i < 3 else 1.0), min=0.0) ** p
                    row = row / row.sum()
                weights[bi, hi, i] = row
    return weights @ v, weights


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 8).map(lambda x: 2 * x + 1), d=st.integers(2, 6), is_causal=st.booleans(),
       p=st.sampled_from([None, 3.0, 15.0]), seed=st.integers(0, 1000))
def test_mixer_equals_paper_formula(n, d, is_causal, p, seed):
    q, k, v = rand(3, 2, 2, n, d, seed=seed).unbind(0)
    mixer = visattn.create_mixer("lssa" if p is None else "lssar", is_causal=is_causal, chunk_size=4,
                                 **({} if p is None else {"p": p}))
    out, weights = naive_lssar(q, k, v, is_causal, p)
    torch.testing.assert_close(mixer(q, k, v, (n,)), out, **FP64)
    torch.testing.assert_close(mixer.attention_weights(q, k, (n,)), weights, **FP64)


def test_defaults_follow_the_paper():
    lssa, lssar = visattn.create_mixer("lssa"), visattn.create_mixer("lssar")
    assert lssa.is_causal and lssa.p is None
    assert lssar.is_causal and lssar.p == 3.0 and lssar.offset_rows == 3
    spec = visattn.get_mixer_spec("lssar")
    assert spec.family == "reformulated" and spec.paper.arxiv == "2501.13428"


def test_prefix_tokens_and_grid_shape():
    q, k, v = rand(3, 2, 3, 1 + 5 * 3, 8, seed=4).unbind(0)
    mixer = SoftplusAttentionMixer(is_causal=False, p=15)
    out, _ = naive_lssar(q, k, v, False, 15)
    torch.testing.assert_close(mixer(q, k, v, (5, 3)), out, **FP64)


def test_float32_close_to_float64():
    q, k, v = rand(3, 2, 4, 33, 16, seed=5).unbind(0)
    mixer = SoftplusAttentionMixer(p=3)
    torch.testing.assert_close(mixer(q.float(), k.float(), v.float(), 33).double(), mixer(q, k, v, 33),
                               atol=1e-5, rtol=1e-5)


def test_attention_module_runs_causal_forward_and_backward():
    torch.manual_seed(0)
    causal = Attention(32, num_heads=4, mixer="lssar", p=15, num_prefix_tokens=1)
    x = torch.randn(2, 1 + 16, 32, requires_grad=True)
    out = causal(x, shape=(4, 4))
    out.sum().backward()
    assert out.shape == x.shape and torch.isfinite(x.grad).all()
    masked = Attention(32, num_heads=4, mixer="lssar", p=15, is_causal=False, num_prefix_tokens=1)
    masked.load_state_dict(causal.state_dict())
    torch.testing.assert_close(masked(x, shape=(4, 4), is_causal=True), out)
    assert not torch.allclose(masked(x, shape=(4, 4)), out)


def test_gradcheck():
    q, k, v = (t.requires_grad_() for t in rand(3, 1, 2, 5, 3, seed=6).unbind(0))
    mixer = SoftplusAttentionMixer(p=3, chunk_size=2)
    assert torch.autograd.gradcheck(lambda a, b, c: mixer(a, b, c, 5), (q, k, v))


def test_dropout_only_in_training():
    q, k, v = rand(3, 1, 2, 9, 4, seed=7).unbind(0)
    mixer = SoftplusAttentionMixer(attn_drop=0.5).eval()
    torch.testing.assert_close(mixer(q, k, v, 9), mixer(q, k, v, 9), atol=0, rtol=0)
    mixer.train()
    torch.manual_seed(0)
    assert not torch.allclose(mixer(q, k, v, 9), mixer.eval()(q, k, v, 9))


def test_bad_input():
    with pytest.raises(ValueError, match="p must be a finite number >= 1.*0.9"):
        visattn.create_mixer("lssar", p=0.9)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        visattn.create_mixer("lssa", chunk_size=0)
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        SoftplusAttentionMixer(is_causal="yes")
    q, k, v = rand(3, 1, 2, 9, 4).unbind(0)
    with pytest.raises(TypeError, match="attn_mask must be a bool tensor"):
        SoftplusAttentionMixer()(q, k, v, 9, attn_mask=torch.zeros(9, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match="prod\\(shape\\)"):
        SoftplusAttentionMixer()(q, k, v, (4, 4))
