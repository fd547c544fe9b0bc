"""``replace_attention`` refuses mixers that are causal by default unless ``is_causal`` is given explicitly."""

from __future__ import annotations

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
