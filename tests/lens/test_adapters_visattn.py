"""Lens adapter for visattn modules: explicit softmax / masked mixers and observed-only mixers."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from visattn import lens
from visattn.masks import materialize, neighborhood_mask
from visattn.ops import reference


@settings(max_examples=25, deadline=None)
@given(h=st.integers(3, 6), w=st.integers(3, 6), kernel=st.sampled_from([1, 3]), prefix=st.integers(0, 2),
       heads=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_neighborhood_probs_equal_masked_reference_from_captured_q_k(h, w, kernel, prefix, heads, seed):
    torch.manual_seed(seed)
    attn = visattn.Attention(8 * heads, heads, mixer="neighborhood", kernel_size=kernel, num_prefix_tokens=prefix,
                             shape=(h, w)).double().eval()
    x = torch.randn(2, prefix + h * w, 8 * heads, dtype=torch.float64)
    expected = attn(x)
    with lens.capture(attn, what=("probs", "logits", "q", "k", "v", "head_outputs")) as rec:
        out = attn(x)
    torch.testing.assert_close(out, expected)
    q, k = rec.get("q", 0).tensor, rec.get("k", 0).tensor
    allowed = materialize(neighborhood_mask(kernel), (h, w), prefix)
    _, weights = reference.attention(q, k, k, mask=allowed, return_weights=True)
    probs = rec.get("probs", 0).tensor
    torch.testing.assert_close(probs, weights)
    assert torch.all(probs[..., ~allowed] == 0)
    assert torch.all(torch.isneginf(rec.get("logits", 0).tensor[..., ~allowed]))
    torch.testing.assert_close(rec.get("head_outputs", 0).tensor, probs @ rec.get("v", 0).tensor)


def test_replace_attention_softmax_in_timm_vit(calls):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=2, num_heads=4).eval()
    model = visattn.replace_attention(model, "softmax")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        infos = lens.attention_layers(model)
        with lens.capture(model, what=("probs", "q", "k", "hidden")) as rec:
            out = model(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert [(i.name, i.family, i.kind, i.num_heads, i.editable) for i in infos] == [
        ("blocks.0.attn", "visattn", "SoftmaxMixer", 4, True), ("blocks.1.attn", "visattn", "SoftmaxMixer", 4, True)]
    q, k = rec.get("q", 1).tensor, rec.get("k", 1).tensor
    torch.testing.assert_close(rec.get("probs", 1).tensor, (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1))
    assert [(c.grid, c.num_prefix_tokens) for c in calls] == [((4, 4), 1), ((4, 4), 1)]
    assert rec.get("hidden", 0).shape == {"batch": 2, "token": 17, "channel": 32}
    assert all("forward" not in block.attn.mixer.__dict__ for block in model.blocks)


def test_attn_mask_and_causal_are_kept():
    torch.manual_seed(0)
    attn = visattn.Attention(16, 2, mixer="window", window_size=2, shape=(4, 4)).eval()
    x = torch.randn(1, 16, 16)
    allowed = torch.rand(16, 16) > 0.2
    with torch.no_grad():
        expected = attn(x, attn_mask=allowed, is_causal=True)
        with lens.capture(attn) as rec:
            out = attn(x, attn_mask=allowed, is_causal=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    probs = rec.get("probs", 0).tensor
    structure = materialize(visattn.masks.window_mask(2), (4, 4))
    forbidden = ~(structure & allowed & torch.ones(16, 16, dtype=torch.bool).tril())
    assert torch.all(probs[..., forbidden] == 0)


def test_observed_mixer_records_its_attention_weights_and_refuses_logits():
    torch.manual_seed(0)
    attn = visattn.Attention(16, 2, mixer="linear", shape=(3, 3)).eval()
    x = torch.randn(2, 9, 16)
    (info,) = lens.attention_layers(attn)
    assert info.kind == "LinearAttentionMixer" and not info.editable and "logits" not in info.provides
    with torch.no_grad():
        expected = attn(x)
        with lens.capture(attn, what=("probs", "head_outputs", "q", "k")) as rec:
            out = attn(x)
    torch.testing.assert_close(out, expected)
    q, k = rec.get("q", 0).tensor, rec.get("k", 0).tensor
    torch.testing.assert_close(rec.get("probs", 0).tensor, attn.mixer.attention_weights(q, k, (3, 3)))
    assert rec.get("head_outputs", 0).shape == {"batch": 2, "head": 2, "query": 9, "channel": 8}
    with pytest.raises(ValueError, match=r"layer 0 .*LinearAttentionMixer.*cannot provide \['logits'\]"):
        with lens.capture(attn, what=("logits",)):
            pass


@pytest.mark.parametrize("mixer", ["linear", "hedgehog", "taylor", "elementwise_qk"])
def test_observed_mixer_records_causal_weights_when_called_with_is_causal(mixer):
    """``Attention(...)(x, is_causal=True)`` hands the flag to these mixers (issue 13); the recorded probs are the
    causal weights the call used: lower-triangular rows summing to 1, the first token on itself."""
    torch.manual_seed(0)
    attn = visattn.Attention(16, 2, mixer=mixer, shape=(3, 3)).double().eval()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad(), lens.capture(attn, what=("probs", "q", "k")) as rec:
        attn(x, is_causal=True)
    probs = rec.get("probs", 0).tensor
    q, k = rec.get("q", 0).tensor, rec.get("k", 0).tensor
    torch.testing.assert_close(probs, attn.mixer.attention_weights(q, k, (3, 3), is_causal=True))
    assert torch.equal(probs, probs.tril())
    torch.testing.assert_close(probs[..., 0, 0], torch.ones(2, 2, dtype=torch.float64), rtol=0, atol=1e-5)


def test_standalone_mixer_and_mixed_model_order():
    mixer = visattn.create_mixer("neighborhood", kernel_size=3)
    (info,) = lens.attention_layers(mixer)
    assert info.name == "" and info.num_heads is None
    q = torch.randn(1, 2, 16, 4)
    with lens.capture(mixer) as rec:
        mixer(q, q, q, (4, 4))
    assert rec.get("probs", 0).shape == {"batch": 1, "head": 2, "query": 16, "key": 16}

    model = torch.nn.Sequential(visattn.Attention(16, 2, shape=(2, 2)), timm.layers.Attention(16, 2))
    assert [(i.name, i.family) for i in lens.attention_layers(model)] == [("0", "visattn"), ("1", "timm")]


def test_softmax_is_causal_flag_is_captured_as_causal():
    """The softmax mixer takes ``is_causal`` as a flag (SDPA's own, no N x N mask); the lens routes it too."""
    torch.manual_seed(0)
    attn = visattn.Attention(16, 2, mixer="softmax", shape=(3, 3)).double().eval()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = attn(x, is_causal=True)
        with lens.capture(attn, what=("probs",)) as rec:
            out = attn(x, is_causal=True)
    torch.testing.assert_close(out, expected)
    probs = rec.get("probs", 0).tensor
    assert torch.equal(probs, probs.tril())
    torch.testing.assert_close(probs[..., 0, 0], torch.ones(2, 2, dtype=torch.float64))
