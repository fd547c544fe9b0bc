"""Affine-Scaled Attention (arXiv 2602.23057): the paper's formula per token, rows summing to alpha_ma, the running
mean buffer (updated in training only), masks, Attention integration, gradients and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from visattn.nn import AffineScaledMixer, Attention
from visattn.nn.affine_scaled import linear_clip

FP64 = {"atol": 1e-12, "rtol": 1e-10}


def naive_affine(q, k, v, x, w_a, alpha_ma, allowed=None):
    """Per (b, h, i): alpha = phi(w_a[h] . x_i) with phi the piecewise clip; softmax over visible keys;
    beta = (alpha_ma[h] - alpha) / n_i spread over the n_i visible keys. Returns (out, weights)."""
    b, h, n, d = q.shape
    weights = torch.zeros(b, h, n, n, dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                z = float(torch.dot(w_a[hi].detach(), x[bi, i]))
                alpha = 0.0 if z <= -5 else 1.0 if z >= 5 else 0.1 * z + 0.5
                visible = torch.ones(n, dtype=torch.bool) if allowed is None else allowed[i]
                ones = visible.to(q.dtype)
                logits = (k[bi, hi] @ q[bi, hi, i]) / d ** 0.5
                probs = torch.exp(logits - logits[visible].max()) * ones
                probs = probs / probs.sum()
                beta = (float(alpha_ma[hi]) - alpha) / int(visible.sum())
                weights[bi, hi, i] = alpha * probs + beta * ones
    return weights @ v, weights


def make(dim=12, heads=3, n=9, b=2, seed=0, head_dim=5, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    mixer = AffineScaledMixer(dim, heads, **kwargs).double()
    with torch.no_grad():
        mixer.alpha_proj.weight.copy_(torch.randn(heads, dim, generator=gen, dtype=torch.float64) * 2.0)
        mixer.alpha_ma.copy_(torch.rand(heads, generator=gen, dtype=torch.float64))
    q, k, v = torch.randn(3, b, heads, n, head_dim, generator=gen, dtype=torch.float64).unbind(0)
    x = torch.randn(b, n, dim, generator=gen, dtype=torch.float64)
    return mixer, q, k, v, x


def test_linear_clip_is_the_papers_piecewise_function():
    z = torch.tensor([-7.0, -5.0, -4.0, 0.0, 2.0, 4.999, 5.0, 9.0], dtype=torch.float64)
    expected = torch.tensor([0.0, 0.0, 0.1, 0.5, 0.7, 0.9999, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(linear_clip(z), expected, **FP64)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 5).map(lambda x: 2 * x + 1), heads=st.integers(1, 3), is_causal=st.booleans(),
       seed=st.integers(0, 1000))
def test_eval_output_equals_paper_formula_and_rows_sum_to_alpha_ma(n, heads, is_causal, seed):
    mixer, q, k, v, x = make(heads=heads, n=n, seed=seed, is_causal=is_causal)
    mixer.eval()
    allowed = torch.ones(n, n, dtype=torch.bool).tril() if is_causal else None
    out, weights = naive_affine(q, k, v, x, mixer.alpha_proj.weight, mixer.alpha_ma, allowed)
    torch.testing.assert_close(mixer(q, k, v, n, x=x), out, **FP64)
    got = mixer.attention_weights(q, k, n, x=x)
    torch.testing.assert_close(got, weights, **FP64)
    torch.testing.assert_close(got.sum(-1), mixer.alpha_ma.view(1, -1, 1).expand(2, heads, n), **FP64)


def test_bool_attn_mask_spreads_beta_over_visible_keys():
    mixer, q, k, v, x = make(n=11, seed=3)
    mixer.eval()
    allowed = torch.rand(11, 11, generator=torch.Generator().manual_seed(4)) > 0.5
    allowed.fill_diagonal_(True)
    out, weights = naive_affine(q, k, v, x, mixer.alpha_proj.weight, mixer.alpha_ma, allowed)
    torch.testing.assert_close(mixer(q, k, v, 11, attn_mask=allowed, x=x), out, **FP64)
    torch.testing.assert_close(weights.sum(-1), mixer.alpha_ma.view(1, -1, 1).expand(2, 3, 11), **FP64)


def test_running_mean_updates_in_training_only():
    mixer, q, k, v, x = make(seed=5, momentum=0.9)
    before = mixer.alpha_ma.clone()
    alpha = linear_clip(x @ mixer.alpha_proj.weight.T)
    expected = 0.9 * before + 0.1 * alpha.mean(dim=(0, 1))
    mixer.train()
    out = mixer(q, k, v, 9, x=x)
    torch.testing.assert_close(mixer.alpha_ma, expected, **FP64)
    assert not mixer.alpha_ma.requires_grad
    reference, _ = naive_affine(q, k, v, x, mixer.alpha_proj.weight, expected)
    torch.testing.assert_close(out, reference, **FP64)
    mixer.eval()
    frozen = mixer.alpha_ma.clone()
    mixer(q, k, v, 9, x=x)
    mixer.attention_weights(q, k, 9, x=x)
    torch.testing.assert_close(mixer.alpha_ma, frozen, atol=0, rtol=0)
    assert "alpha_ma" in mixer.state_dict()


def test_attention_module_passes_x_and_causal_mask_matches_causal_mixer():
    torch.manual_seed(0)
    layer = Attention(24, num_heads=4, mixer="affine_scaled").double().eval()
    assert isinstance(layer.mixer, AffineScaledMixer) and layer.mixer.alpha_proj.weight.shape == (4, 24)
    x = torch.randn(2, 16, 24, dtype=torch.float64, requires_grad=True)
    out = layer(x, is_causal=True)
    causal = Attention(24, num_heads=4, mixer="affine_scaled", is_causal=True).double().eval()
    causal.load_state_dict(layer.state_dict())
    torch.testing.assert_close(causal(x), out, **FP64)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_float32_close_to_float64():
    mixer, q, k, v, x = make(n=25, seed=6)
    mixer.eval()
    expected = mixer(q, k, v, 25, x=x)
    got = mixer.float()(q.float(), k.float(), v.float(), 25, x=x.float())
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_gradcheck():
    mixer, q, k, v, x = make(dim=4, heads=2, n=3, b=1, seed=7, head_dim=3)
    mixer.eval()
    inputs = tuple(t.requires_grad_() for t in (q, k, v, x))
    assert torch.autograd.gradcheck(lambda a, b, c, d: mixer(a, b, c, 3, x=d), inputs)


def test_registry_entry():
    spec = visattn.get_mixer_spec("affine_scaled")
    assert spec.family == "reformulated" and spec.paper.arxiv == "2602.23057"
    assert AffineScaledMixer.uses_input
    mixer = visattn.create_mixer_for_layer("affine_scaled", dim=20, num_heads=5, head_dim=4)
    assert mixer.alpha_ma.shape == (5,) and (mixer.alpha_ma == 1).all()


def test_bad_input():
    mixer, q, k, v, x = make()
    with pytest.raises(ValueError, match="x .*is required"):
        mixer(q, k, v, 9)
    with pytest.raises(ValueError, match=r"x must be the \(B, N, C=12\) layer input"):
        mixer(q, k, v, 9, x=x[..., :5])
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        mixer(q, k, v, 9, attn_mask=torch.zeros(9, 9, dtype=torch.float64), x=x)
    with pytest.raises(ValueError, match="momentum must be a number in"):
        AffineScaledMixer(8, 2, momentum=1.0)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        AffineScaledMixer(8, 0)
