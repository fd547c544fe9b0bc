"""``replace_attention`` refuses mixers that are causal by default unless ``is_causal`` is given explicitly."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch

import visattn

TINY = {"img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}


def _tiny_vit() -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **TINY).eval()


def test_causal_defaults_are_known():
    causal = [n for n in visattn.list_mixers() if visattn.get_mixer_spec(n).causal_default]
    assert {"lssa", "lssar"} <= set(causal) and "softmax" not in causal and "neighborhood" not in causal


@pytest.mark.parametrize("mixer", ["lssa", "lssar"])
def test_causal_by_default_mixer_is_refused_without_is_causal(mixer):
    model = _tiny_vit()
    with pytest.raises(ValueError, match=f"mixer '{mixer}' is causal by default .*pass is_causal=False"):
        visattn.replace_attention(model, mixer)
    assert type(model.blocks[0].attn).__module__.startswith("timm"), "the model must be left unchanged"


@pytest.mark.parametrize("is_causal", [False, True])
def test_explicit_is_causal_is_honoured(is_causal):
    model = visattn.replace_attention(_tiny_vit(), "lssa", is_causal=is_causal)
    assert model.blocks[0].attn.mixer.is_causal is is_causal
    x = torch.randn(2, 3, 16, 16)
    assert model(x).shape == (2, 3)
    # bidirectional: the first patch's output depends on the last patch; causal: it does not
    probe = x.clone()
    probe[..., 8:, 8:] += 1.0
    tokens = [model.blocks(model._pos_embed(model.patch_embed(t)))[:, 1] for t in (x, probe)]
    assert torch.equal(tokens[0], tokens[1]) is is_causal


def _tiny_vit_with_attention_dropout() -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, attn_drop_rate=0.1,
                             **{**TINY, "img_size": 32})


# What each mixer needs on the 4 x 4 grid of the 32-pixel tiny ViT (one class token).
GRID_KWARGS = {
    "grid": {"grid_size": 2}, "halo": {"block_size": 2, "halo_size": 1}, "neighborhood": {"kernel_size": 3},
    "window": {"window_size": 2}, "swin_v2": {"window_size": 2}, "radial_strip": {"num_rings": 4, "num_angles": 4},
    "sparsifiner": {"num_tokens": 17}, "lssa": {"is_causal": False}, "lssar": {"is_causal": False},
}
NEEDS_CALIBRATION = {"paro"}


@pytest.mark.parametrize("mixer", visattn.list_mixers())
def test_every_mixer_replaces_into_a_vit_with_attention_dropout(mixer):
    """Issue 13: with ``attn_drop_rate > 0`` the weightless mixers (linear, hedgehog, inline, l2vit_linear, taylor,
    elementwise_qk, hierarchical) raised, even for inference. Every mixer now takes the model's dropout over."""
    torch.manual_seed(0)
    model = visattn.replace_attention(_tiny_vit_with_attention_dropout(), mixer, **GRID_KWARGS.get(mixer, {}))
    attn = model.blocks[0].attn
    assert attn.mixer.attn_drop == pytest.approx(0.1)
    if mixer in NEEDS_CALIBRATION:
        return
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(x)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train()(x).sum().backward()
    assert attn.qkv.weight.grad is not None and torch.isfinite(attn.qkv.weight.grad).all()


@pytest.mark.parametrize("mixer", ["softmax", "linear"])
def test_attn_drop_can_be_overridden(mixer):
    """Issue 13: ``attn_drop=0.0`` raised "got multiple values for keyword argument 'attn_drop'"."""
    model = visattn.replace_attention(_tiny_vit_with_attention_dropout(), mixer, attn_drop=0.0)
    assert all(m.mixer.attn_drop == 0.0 for m in model.modules() if isinstance(m, visattn.nn.Attention))
    model = _tiny_vit_with_attention_dropout()
    new = visattn.nn.from_timm_attention(model.blocks[0].attn, mixer, attn_drop=0.05)
    assert new.mixer.attn_drop == 0.05
