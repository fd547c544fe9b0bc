"""Hedgehog feature maps and mixer: identity-init kernel, paper equation, stability, causality, loss, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from visattn.nn import Attention, HedgehogFeatureMap, HedgehogMixer, softmax_mimicry_loss
from visattn.ops.linear_attention import ROW_BLOCK

FP64 = {"atol": 1e-10, "rtol": 1e-10}


pytestmark = pytest.mark.usefixtures("one_thread")


def qkv(b, h, n, d, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=gen, dtype=dtype) for _ in range(3))


def randomize(mixer: HedgehogMixer, seed: int = 0, scale: float = 0.3) -> HedgehogMixer:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return mixer


def naive_phi(x, weight, bias):
    """phi(x) = [exp(W x + b), exp(-(W x + b))] written per head and token."""
    b, h, n, d = x.shape
    out = torch.empty(b, h, n, 2 * d, dtype=x.dtype)
    for head in range(h):
        u = torch.einsum("ed,bnd->bne", weight[head], x[:, head]) + bias[head]
        out[:, head] = torch.cat([torch.exp(u), torch.exp(-u)], dim=-1)
    return out


def naive_hedgehog(mixer: HedgehogMixer, q, k, v, is_causal=False):
    """Linear attention with the Hedgehog maps, unstabilised, token by token."""
    fq = naive_phi(q, mixer.q_map.weight.double(), mixer.q_map.bias.double())
    fk = naive_phi(k, mixer.k_map.weight.double(), mixer.k_map.bias.double())
    out = torch.zeros_like(v)
    n = q.shape[2]
    for i in range(n):
        last = i + 1 if is_causal else n
        sims = (fq[:, :, i : i + 1] * fk[:, :, :last]).sum(-1)
        out[:, :, i] = (sims.unsqueeze(-1) * v[:, :, :last]).sum(2) / sims.sum(-1, keepdim=True)
    return out


def test_identity_init_kernel_is_twice_the_sum_of_cosh():
    q, k, _ = qkv(2, 3, 9, 5)
    fmap = HedgehogFeatureMap(3, 5).double()
    assert torch.equal(fmap.weight, torch.eye(5, dtype=torch.float64).expand(3, 5, 5))
    assert (fmap.bias == 0).all()
    kernel = fmap(q) @ fmap(k).transpose(-2, -1)
    expected = 2 * torch.cosh(q.unsqueeze(3) + k.unsqueeze(2)).sum(-1)
    torch.testing.assert_close(kernel, expected, **FP64)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(2, 3), h=st.integers(1, 3), n=st.integers(0, 15).map(lambda x: 2 * x + 1), d=st.integers(1, 6),
       is_causal=st.booleans(), chunk_size=st.integers(1, 8), seed=st.integers(0, 1000))
def test_hedgehog_equals_the_paper_equation(b, h, n, d, is_causal, chunk_size, seed):
    q, k, v = qkv(b, h, n, d, seed=seed)
    mixer = randomize(HedgehogMixer(h, d, is_causal=is_causal, chunk_size=chunk_size), seed).double()
    expected = naive_hedgehog(mixer, q, k, v, is_causal)
    torch.testing.assert_close(mixer(q, k, v, n), expected, **FP64)
    torch.testing.assert_close(mixer.attention_weights(q, k, n) @ v, expected, **FP64)


@pytest.mark.parametrize(("is_causal", "scale"), [(False, 40.0), (True, 40.0)])
def test_large_logits_stay_finite_and_accurate_in_float32(is_causal, scale):
    """Every denominator >= 1 after the per-row shifts (visattn.ops.hedgehog), causal or not."""
    q, k, v = qkv(2, 2, 31, 4)
    q, k = q * scale, k * scale
    mixer = HedgehogMixer(2, 4, is_causal=is_causal, chunk_size=8)
    expected = naive_hedgehog(mixer.double(), q, k, v, is_causal)
    assert torch.isfinite(expected).all()
    out = mixer.float()(q.float(), k.float(), v.float(), 31)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)


def test_causal_huge_keys_in_a_later_chunk_do_not_disturb_earlier_tokens_in_float32():
    q, k, v = (x.float() for x in qkv(1, 2, 24, 4))
    mixer = HedgehogMixer(2, 4, is_causal=True, chunk_size=8)
    early = mixer(q[:, :, :16], k[:, :, :16], v[:, :, :16], 16)
    k[:, :, 16:, 0] = 300.0
    out = mixer(q, k, v, 24)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, :16], early, atol=1e-6, rtol=1e-5)


def test_more_tokens_than_one_row_block():
    n = ROW_BLOCK + 3
    q, k, v = qkv(1, 2, n, 3)
    mixer = randomize(HedgehogMixer(2, 3)).double()
    torch.testing.assert_close(mixer(q, k, v, n), naive_hedgehog(mixer, q, k, v), **FP64)


def test_causal_output_never_sees_a_later_token():
    q, k, v = qkv(2, 2, 21, 4)
    mixer = randomize(HedgehogMixer(2, 4, is_causal=True, chunk_size=4)).double()
    out = mixer(q, k, v, 21)
    for t in (0, 9, 19):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :])
        torch.testing.assert_close(mixer(q2, k2, v2, 21)[:, :, : t + 1], out[:, :, : t + 1], **FP64)


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck_inputs_and_feature_map_parameters(is_causal):
    q, k, v = (x.requires_grad_() for x in qkv(2, 1, 5, 3, seed=1))
    mixer = randomize(HedgehogMixer(1, 3, is_causal=is_causal, chunk_size=2)).double()
    assert torch.autograd.gradcheck(lambda q, k, v: mixer(q, k, v, 5), (q, k, v))
    names = ("q_map.weight", "q_map.bias", "k_map.weight", "k_map.bias")
    params = tuple(dict(mixer.named_parameters())[n].detach().clone().requires_grad_() for n in names)

    def through_params(*values):
        return torch.func.functional_call(mixer, dict(zip(names, values, strict=True)),
                                          (q.detach(), k.detach(), v.detach(), 5))

    assert torch.autograd.gradcheck(through_params, params)
    mixer(q, k, v, 5).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.parameters())


def test_bfloat16_within_stated_tolerance():
    q, k, v = qkv(2, 2, 17, 4)
    mixer = HedgehogMixer(2, 4)
    out = mixer(q.bfloat16(), k.bfloat16(), v.bfloat16(), 17).double()
    torch.testing.assert_close(out, naive_hedgehog(mixer.double(), q, k, v), atol=5e-2, rtol=5e-2)


def test_softmax_mimicry_loss_is_the_soft_label_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64), -1)
    a_hat = torch.softmax(torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64), -1)
    expected = sum(-(a[b, h, i] * a_hat[b, h, i].log()).sum() for b in range(2) for h in range(3)
                   for i in range(5)) / 30
    torch.testing.assert_close(softmax_mimicry_loss(a, a_hat), expected, **FP64)
    assert softmax_mimicry_loss(a, a) < softmax_mimicry_loss(a, a_hat)
    with pytest.raises(ValueError, match="must have one shape"):
        softmax_mimicry_loss(a, a_hat[..., :6])


def test_registry_entry_and_attention_module():
    spec = visattn.get_mixer_spec("hedgehog")
    assert spec.family == "reformulated" and spec.paper.arxiv == "2402.04347"
    layer = Attention(24, 3, mixer="hedgehog")
    assert layer.mixer.q_map.weight.shape == (3, 8, 8)
    x = torch.randn(2, 16, 24)
    layer(x).sum().backward()
    assert layer.mixer.k_map.weight.grad is not None


def test_state_bytes_is_the_feature_state_of_twice_the_head_dim():
    mixer = HedgehogMixer(3, 8)
    assert mixer.state_bytes() == 3 * (16 * 9 + 16) * 4
    assert mixer.state_bytes(2, value_dim=4, dtype=torch.float16) == 2 * 3 * (16 * 5 + 16) * 2
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        mixer.state_bytes(0)


def test_bad_input_errors_name_the_argument():
    q, k, v = qkv(1, 2, 4, 3)
    with pytest.raises(ValueError, match=r"x must be shaped \(B, heads=3, N, head_dim=3\)"):
        HedgehogMixer(3, 3).double()(q, k, v, 4)
    with pytest.raises(ValueError, match="num_heads must be a positive int, got 0"):
        HedgehogMixer(0, 3)
    with pytest.raises(ValueError, match="head_dim must be a positive int"):
        HedgehogFeatureMap(2, -1)
    with pytest.raises(ValueError, match=r"attn_drop must be in \[0, 1\), got 1.0"):
        HedgehogMixer(2, 3, attn_drop=1.0)
    with pytest.raises(ValueError, match="attn_mask is not supported by HedgehogMixer"):
        HedgehogMixer(2, 3).double()(q, k, v, 4, attn_mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        HedgehogMixer(2, 3, is_causal=1)
