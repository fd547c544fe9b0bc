"""visattn.nn.Attention reproduces timm's Attention on identical weights and takes any registered mixer."""

from __future__ import annotations

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
