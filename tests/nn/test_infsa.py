"""InfSA and Linear-InfSA: paper equations, Frobenius bound, one broadcast vector, trainable rho, masks, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from visattn.nn import Attention, InfSAMixer, LinearInfSAMixer

FP64 = {"atol": 1e-10, "rtol": 1e-10}


pytestmark = pytest.mark.usefixtures("one_thread")


def qkv(b, h, n, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=gen, dtype=torch.float64) for _ in range(3))


def naive_infsa(q, k, v, rho, mask=None):
    """A = rho R / (||R||_F + 1e-6), R_ij = max(q_i.k_j / d, 0) (masked entries 0), out = A V; per (b, h)."""
    b, h, n, d = q.shape
    out = torch.zeros_like(v)
    weights = torch.zeros(b, h, n, n, dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            r = torch.zeros(n, n, dtype=q.dtype)
            for i in range(n):
                for j in range(n):
                    if mask is None or mask[i, j]:
                        r[i, j] = max(float(q[bi, hi, i] @ k[bi, hi, j]) / d, 0.0)
            a = rho * r / (math.sqrt(float((r**2).sum())) + 1e-6)
            weights[bi, hi] = a
            out[bi, hi] = a @ v[bi, hi]
    return out, weights


def naive_linear_infsa(q, k, v, rho, eps=1e-6):
    """q_bar = sum_t w_t q_t, w_t = ||q_t|| / sum ||q||; a_j = relu(q_bar.k_j / d) / sum_l relu(q_bar.k_l / d);
    every token's output is rho sum_j a_j v_j (released code's +eps, on the d^-1/2-scaled norms)."""
    b, h, n, d = q.shape
    out = torch.zeros_like(v)
    for bi in range(b):
        for hi in range(h):
            norms = [float(q[bi, hi, t].norm()) / math.sqrt(d) for t in range(n)]
            w = [x / (sum(norms) + eps) for x in norms]
            q_bar = sum(w[t] * q[bi, hi, t] for t in range(n))
            a = [max(float(q_bar @ k[bi, hi, j]) / d, 0.0) for j in range(n)]
            total = sum(a) + eps
            pooled = rho * sum(a[j] / total * v[bi, hi, j] for j in range(n))
            out[bi, hi] = pooled.expand(n, -1)
    return out


@settings(max_examples=20, deadline=None)
@given(b=st.integers(2, 3), h=st.integers(1, 2), n=st.integers(0, 6).map(lambda x: 2 * x + 1), d=st.integers(1, 6),
       rho=st.floats(0.05, 0.99), seed=st.integers(0, 1000))
def test_infsa_equals_the_paper_equation(b, h, n, d, rho, seed):
    q, k, v = qkv(b, h, n, d, seed)
    mixer = InfSAMixer(rho=rho).double()
    out, weights = naive_infsa(q, k, v, mixer.rho.item())
    torch.testing.assert_close(mixer(q, k, v, n), out, **FP64)
    torch.testing.assert_close(mixer.attention_weights(q, k, n), weights, **FP64)
    assert mixer.rho.item() == pytest.approx(rho)


def test_infsa_weights_are_nonnegative_not_row_normalised_and_frobenius_bounded_by_rho():
    q, k, _ = qkv(2, 3, 15, 4)
    w = InfSAMixer(rho=0.9).double().attention_weights(q, k, (3, 5))
    assert (w >= 0).all()
    assert not torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)))
    norms = torch.linalg.vector_norm(w, dim=(-2, -1))
    assert (norms < 0.9).all() and (norms > 0.9 - 1e-5).all()


def test_infsa_bool_mask_zeroes_affinities_before_the_norm():
    q, k, v = qkv(2, 1, 7, 3, seed=5)
    mask = torch.rand(7, 7, generator=torch.Generator().manual_seed(1)) > 0.4
    mixer = InfSAMixer().double()
    out, _ = naive_infsa(q, k, v, mixer.rho.item(), mask)
    torch.testing.assert_close(mixer(q, k, v, 7, attn_mask=mask), out, **FP64)


@settings(max_examples=20, deadline=None)
@given(b=st.integers(2, 3), h=st.integers(1, 2), n=st.integers(0, 10).map(lambda x: 2 * x + 1), d=st.integers(1, 6),
       seed=st.integers(0, 1000))
def test_linear_infsa_equals_the_paper_equation_and_is_one_vector_for_every_token(b, h, n, d, seed):
    q, k, v = qkv(b, h, n, d, seed)
    mixer = LinearInfSAMixer().double()
    out = mixer(q, k, v, n)
    torch.testing.assert_close(out, naive_linear_infsa(q, k, v, mixer.rho.item()), **FP64)
    assert torch.equal(out, out[:, :, :1].expand_as(out))
    torch.testing.assert_close(mixer.attention_weights(q, k, n) @ v, out, **FP64)


@pytest.mark.parametrize("mixer_class", [InfSAMixer, LinearInfSAMixer])
def test_rho_is_trainable_and_starts_at_095(mixer_class):
    mixer = mixer_class().double()
    assert mixer.rho.item() == pytest.approx(0.95)
    assert isinstance(mixer.rho_logit, torch.nn.Parameter)
    q, k, v = qkv(2, 2, 9, 4)
    mixer(q, k, v, 9).sum().backward()
    assert mixer.rho_logit.grad is not None and mixer.rho_logit.grad.abs() > 0
    fixed = mixer_class(learn_rho=False)
    assert not list(fixed.parameters()) and "rho_logit" in dict(fixed.named_buffers())


@pytest.mark.parametrize("mixer_class", [InfSAMixer, LinearInfSAMixer])
def test_gradcheck(mixer_class):
    q, k, v = (t.requires_grad_() for t in qkv(2, 1, 5, 3, seed=3))
    mixer = mixer_class().double()
    assert torch.autograd.gradcheck(lambda q, k, v: mixer(q, k, v, 5), (q, k, v))


def test_registry_entries_and_attention_module():
    for name, cost in (("infsa", "O(N^2)"), ("linear_infsa", "O(N d)")):
        spec = visattn.get_mixer_spec(name)
        assert spec.family == "reformulated" and spec.paper.arxiv == "2603.00175" and spec.complexity == cost
    layer = Attention(32, 4, mixer="linear_infsa")
    x = torch.randn(2, 16, 32)
    out = layer(x)
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)
    layer = Attention(32, 4, mixer="infsa", attn_drop=0.1).train()
    layer(x).sum().backward()


def test_bad_input_errors_name_the_argument():
    for rho in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=f"rho must be in \\(0, 1\\), got {rho}"):
            InfSAMixer(rho=rho)
    with pytest.raises(TypeError, match="learn_rho must be a bool"):
        LinearInfSAMixer(learn_rho="no")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        InfSAMixer(eps=-1.0)
    q, k, v = qkv(1, 1, 4, 2)
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        InfSAMixer().double()(q, k, v, 4, attn_mask=torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="does not broadcast"):
        InfSAMixer().double()(q, k, v, 4, attn_mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask is not supported by LinearInfSAMixer"):
        LinearInfSAMixer().double()(q, k, v, 4, attn_mask=torch.ones(4, 4, dtype=torch.bool))
