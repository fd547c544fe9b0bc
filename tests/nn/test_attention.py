"""visattn.nn.Attention reproduces timm's Attention on identical weights and takes any registered mixer."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from timm.layers import Attention as TimmAttention

import visattn
from visattn.nn import Attention, MaskedMixer, SoftmaxMixer, from_timm_attention


@pytest.fixture(scope="module")
def vit_small():
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False).eval()


def test_vit_small_block_attention_weights_reproduce_its_output(vit_small):
    timm_attn = vit_small.blocks[3].attn
    ours = Attention(384, num_heads=6, qkv_bias=True, num_prefix_tokens=1).eval()
    ours.load_state_dict(timm_attn.state_dict())
    x = torch.randn(2, 197, 384)
    with torch.no_grad():
        assert torch.allclose(ours(x), timm_attn(x), atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    {"qk_norm": True}, {"scale_norm": True}, {"gated": True}, {"proj_bias": False}, {"attn_head_dim": 12},
])
def test_timm_attention_variants_load_and_match(kwargs):
    torch.manual_seed(1)
    needs_norm = kwargs.get("qk_norm") or kwargs.get("scale_norm")
    timm_attn = TimmAttention(48, num_heads=4, qkv_bias=True, norm_layer=torch.nn.LayerNorm if needs_norm else None,
                              **kwargs).eval()
    for p in timm_attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ours = from_timm_attention(timm_attn).eval()
    x = torch.randn(3, 10, 48)
    with torch.no_grad():
        assert torch.allclose(ours(x, shape=(10,)), timm_attn(x), atol=1e-5)


def test_replace_attention_softmax_leaves_logits_unchanged():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        visattn.replace_attention(model, "softmax")
        after = model(x)
    assert not any(isinstance(m, TimmAttention) for m in model.modules())
    assert sum(isinstance(m, Attention) for m in model.modules()) == len(model.blocks)
    assert torch.allclose(before, after, atol=1e-5)


def test_replace_attention_neighborhood_runs_forward_and_backward():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96, num_classes=10,
                              reg_tokens=2)
    visattn.replace_attention(model, "neighborhood", kernel_size=3)
    attn = model.blocks[0].attn
    assert attn.shape == (6, 6) and attn.num_prefix_tokens == 3
    assert isinstance(attn.mixer, MaskedMixer)
    out = model(torch.randn(2, 3, 96, 96))
    out.sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None
    assert torch.isfinite(model.blocks[0].attn.qkv.weight.grad).all()


def test_replace_attention_neighborhood_differs_from_softmax():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96, num_classes=10).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        dense = model(x)
        visattn.replace_attention(model, "neighborhood", kernel_size=3)
        local = model(x)
    assert not torch.allclose(dense, local, atol=1e-4)


def test_replace_attention_needs_timm_attention():
    with pytest.raises(ValueError, match="no timm Attention"):
        visattn.replace_attention(torch.nn.Linear(3, 3), "softmax")


def test_structured_mixer_equals_reference_with_prefix():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, mixer="window", window_size=2, num_prefix_tokens=1).double().eval()
    x = torch.randn(2, 1 + 4 * 6, 32, dtype=torch.float64)
    out = attn(x, shape=(4, 6))
    q, k, v = attn.qkv_heads(x)
    allowed = visattn.masks.materialize(visattn.masks.window_mask(2), (4, 6), 1)
    mixed = visattn.ops.attention(q, k, v, allowed)
    expected = attn.proj(mixed.transpose(1, 2).reshape(2, 25, 32))
    assert torch.allclose(out, expected, atol=1e-12)


def test_attn_mask_and_is_causal_combine_with_the_mixer():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, mixer="neighborhood", kernel_size=3).double().eval()
    x = torch.randn(1, 16, 16, dtype=torch.float64)
    keep = torch.rand(16, 16) > 0.5
    q, k, v = attn.qkv_heads(x)
    structure = visattn.masks.materialize(visattn.masks.neighborhood_mask(3), (4, 4))
    for attn_mask, causal in ((keep, False), (None, True), (torch.randn(16, 16, dtype=torch.float64), True)):
        out = attn(x, attn_mask=attn_mask, is_causal=causal)
        allowed = structure & (torch.ones(16, 16, dtype=torch.bool).tril() if causal else True)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            allowed = allowed & attn_mask
        bias = None if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask
        ref_mask = allowed if bias is None else bias.masked_fill(~allowed, float("-inf"))
        mixed = visattn.ops.attention(q, k, v, ref_mask)
        expected = attn.proj(mixed.transpose(1, 2).reshape(1, 16, 16))
        assert torch.allclose(out, expected, atol=1e-12)
        assert torch.isfinite(out).all()


def test_mixer_instance_and_dropout():
    attn = Attention(16, num_heads=2, mixer=SoftmaxMixer(), attn_drop=0.0)
    assert isinstance(attn.mixer, SoftmaxMixer)
    drop = Attention(16, num_heads=2, attn_drop=0.5).train()
    x = torch.randn(1, 9, 16)
    assert not torch.allclose(drop(x), drop.eval()(x))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"dim": 10, "num_heads": 3}, ValueError, "dim must be divisible by num_heads, got dim=10, num_heads=3"),
    ({"dim": 16, "mixer": "nope"}, ValueError, "unknown mixer 'nope'; known mixers: .*neighborhood"),
    ({"dim": 16, "mixer": 3}, TypeError, "mixer must be a registry name"),
    ({"dim": 16, "mixer": SoftmaxMixer(), "kernel_size": 3}, ValueError, "mixer_kwargs apply only"),
    ({"dim": 16, "num_prefix_tokens": -1}, ValueError, "num_prefix_tokens"),
    ({"dim": 16, "mixer": "neighborhood", "kernel_size": 0}, ValueError, "kernel_size must be >= 1"),
])
def test_bad_construction_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        Attention(**kwargs)


def test_bad_forward_input_raises():
    attn = Attention(16, num_heads=2, mixer="neighborhood", kernel_size=3)
    with pytest.raises(ValueError, match="cannot infer a square grid from N=15"):
        attn(torch.randn(1, 15, 16))
    with pytest.raises(ValueError, match="x has C=8 channels, expected dim=16"):
        attn(torch.randn(1, 16, 8))
    with pytest.raises(ValueError, match="x must be shaped"):
        attn(torch.randn(16, 16))
    with pytest.raises(ValueError, match=r"N=16 tokens but shape=\(3, 5\)"):
        attn(torch.randn(1, 16, 16), shape=(3, 5))
    with pytest.raises(ValueError, match="kernel_size \\* dilation"):
        attn(torch.randn(1, 4, 16))


def test_replace_attention_with_a_parametrised_mixer_keeps_the_timm_weights():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=3)
    qkv = model.blocks[0].attn.qkv.weight.detach().clone()
    visattn.replace_attention(model, "affine_scaled")
    assert torch.equal(model.blocks[0].attn.qkv.weight, qkv)
    assert any(name.startswith("blocks.0.attn.mixer.") for name, _ in model.named_parameters())
    model(torch.randn(1, 3, 32, 32)).sum().backward()


NATIVELY_CAUSAL = ["linear", "hedgehog", "taylor", "elementwise_qk"]


@pytest.mark.parametrize("mixer", NATIVELY_CAUSAL)
def test_is_causal_reaches_a_natively_causal_mixer_as_a_flag(mixer):
    """Issue 13: ``Attention(mixer=...)(x, is_causal=True)`` raised "attn_mask is not supported" (an N x N mask was
    built). Now the mixer gets the flag: equal to the same weights with the mixer built causal, and not equal to
    the bidirectional output."""
    torch.manual_seed(0)
    flagged = Attention(16, 2, mixer=mixer).double().eval()
    built_causal = Attention(16, 2, mixer=mixer, is_causal=True).double().eval()
    built_causal.load_state_dict(flagged.state_dict())
    assert flagged.mixer.supports_is_causal and not flagged.mixer.is_causal
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    out = flagged(x, is_causal=True, shape=(7,))
    torch.testing.assert_close(out, built_causal(x, shape=(7,)), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, flagged(x, shape=(7,)))
    # the first token sees only itself: changing later tokens leaves its output alone
    later = x.clone()
    later[:, 1:] += 1.0
    torch.testing.assert_close(flagged(later, is_causal=True, shape=(7,))[:, 0], out[:, 0], rtol=1e-12, atol=1e-12)


def test_a_mask_only_mixer_still_gets_the_causal_mask():
    torch.manual_seed(0)
    attn = Attention(16, 2, mixer="sliding", window_size=5).double().eval()
    assert not attn.mixer.supports_is_causal
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    q, k, v = attn.qkv_heads(x)
    allowed = visattn.masks.materialize(visattn.masks.sliding_window_mask(5), (9,)) & torch.ones(9, 9).bool().tril()
    expected = attn.proj(visattn.ops.attention(q, k, v, allowed).transpose(1, 2).reshape(1, 9, 16))
    torch.testing.assert_close(attn(x, is_causal=True, shape=(9,)), expected, rtol=1e-12, atol=1e-12)


WEIGHTLESS = ["elementwise_qk", "hedgehog", "hierarchical", "inline", "l2vit_linear", "linear", "taylor"]


@pytest.mark.parametrize("mixer", WEIGHTLESS)
def test_weightless_mixers_accept_attn_drop_and_warn_once_in_training_only(mixer):
    """Issue 13: these mixers raised on any ``attn_drop > 0``, even for inference. Now they accept it, never warn
    at inference, warn once in training, and compute what they compute without dropout."""
    torch.manual_seed(0)
    dropped = Attention(16, 2, attn_drop=0.3, mixer=mixer, shape=(3, 3)).double()
    plain = Attention(16, 2, mixer=mixer, shape=(3, 3)).double()
    plain.load_state_dict(dropped.state_dict())
    assert dropped.mixer.attn_drop == 0.3 and not dropped.mixer.uses_attn_drop
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluated = dropped.eval()(x)
    torch.testing.assert_close(evaluated, plain.eval()(x), rtol=1e-12, atol=1e-12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained = dropped.train()(x)
        dropped(x)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1 and "attn_drop=0.3 drops nothing" in messages[0]
    torch.testing.assert_close(trained, plain.train()(x), rtol=1e-12, atol=1e-12)


def test_softmax_gets_is_causal_as_a_flag_not_a_mask(monkeypatch):
    """Issue 13: the softmax mixer computes causality itself (SDPA's is_causal); Attention builds no N x N mask,
    and the result equals timm's Attention(x, is_causal=True) and the explicit causal mask."""
    import timm.layers

    torch.manual_seed(0)
    ours = visattn.nn.Attention(32, 4, qkv_bias=True).double().eval()
    theirs = timm.layers.Attention(32, 4, qkv_bias=True).double().eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    seen = []
    real = ours.mixer.forward
    monkeypatch.setattr(ours.mixer, "forward", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    with torch.no_grad():
        out = ours(x, is_causal=True)
        torch.testing.assert_close(out, theirs(x, is_causal=True))
        torch.testing.assert_close(out, ours(x, attn_mask=torch.ones(9, 9, dtype=torch.bool).tril()))
        allowed = torch.rand(9, 9) > 0.3
        allowed.fill_diagonal_(True)
        both = ours(x, attn_mask=allowed, is_causal=True)
        torch.testing.assert_close(both, ours(x, attn_mask=allowed & torch.ones(9, 9, dtype=torch.bool).tril()))
    assert seen[0] == {"attn_mask": None, "is_causal": True}
