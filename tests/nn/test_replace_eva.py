"""replace_attention on timm's EVA family: EvaAttention becomes EvaMixerAttention, weights and rotary embedding
kept; with mixer="softmax" the model's logits and input gradients are unchanged (fp32, within 1e-5); any other
mixer receives q and k rotated by the block's RoPE."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import apply_rot_embed_cat
from timm.models.eva import EvaAttention

import visattn
from visattn.nn.replace_eva import EvaMixerAttention, replace_eva_attention

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {
    "eva02 fused qkv, q/v bias, RoPE": ("eva02_tiny_patch14_224", dict(img_size=28, depth=2)),
    "separate q/k/v projections": ("eva02_tiny_patch14_224", dict(img_size=28, depth=2, qkv_fused=False)),
    "4 register tokens, no class token": ("vit_betwixt_patch16_rope_reg4_gap_256",
                                         dict(img_size=48, depth=2, embed_dim=64, num_heads=4)),
}


def _model(name: str, kwargs: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=5, **kwargs).eval()
    for p in model.parameters():  # biases and layer scales start at zero or one: randomise every weight
        torch.nn.init.normal_(p, std=0.2)
    return model


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_softmax_keeps_logits_and_gradients(config):
    name, kwargs = CONFIGS[config]
    model = _model(name, kwargs)
    swapped = visattn.replace_attention(copy.deepcopy(model), "softmax")
    assert not any(isinstance(m, EvaAttention) for m in swapped.modules())
    assert sum(isinstance(m, EvaMixerAttention) for m in swapped.modules()) == 2
    assert swapped.state_dict().keys() == model.state_dict().keys()
    side = kwargs["img_size"]
    x = torch.randn(2, 3, side, side)
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, new = model(x_ref), swapped(x_new)
    torch.testing.assert_close(new, ref, atol=1e-5, rtol=0)
    ref.square().sum().backward()
    new.square().sum().backward()
    torch.testing.assert_close(x_new.grad, x_ref.grad, atol=1e-5, rtol=1e-5)


def test_softmax_keeps_logits_at_a_second_resolution_with_dynamic_size():
    model = _model("eva02_tiny_patch14_224", dict(img_size=28, depth=2, dynamic_img_size=True))
    swapped = visattn.replace_attention(copy.deepcopy(model), "softmax")
    x = torch.randn(1, 3, 42, 42)
    torch.testing.assert_close(swapped(x), model(x), atol=1e-5, rtol=0)


def test_the_mixer_gets_rotated_queries_and_keys_of_the_grid_tokens_only():
    """The q and k a mixer receives equal EVA's projections with RoPE applied after the prefix tokens; without the
    rotation they would differ (the test can fail)."""
    model = _model("vit_betwixt_patch16_rope_reg4_gap_256", CONFIGS["4 register tokens, no class token"][1])
    visattn.replace_attention(model, "neighborhood", kernel_size=3)
    layer = model.blocks[0].attn
    seen = {}
    layer.mixer.register_forward_pre_hook(lambda m, args: seen.update(q=args[0], k=args[1], grid=args[3]))
    block_input = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args, kwargs: block_input.update(x=args[0], **kwargs),
                                              with_kwargs=True)
    model(torch.randn(1, 3, 48, 48))
    x, rope = model.blocks[0].norm1(block_input["x"]), block_input["rope"]
    p = model.num_prefix_tokens
    assert seen["grid"] == (3, 3) and layer.num_prefix_tokens == p == 4  # 4 registers, no class token
    q, k, _ = layer.qkv_heads(x)  # no rope
    for name, plain in (("q", q), ("k", k)):
        rotated = apply_rot_embed_cat(plain[:, :, p:], rope, half=layer.rotate_half)
        torch.testing.assert_close(seen[name][:, :, :p], plain[:, :, :p])
        torch.testing.assert_close(seen[name][:, :, p:], rotated)
        assert not torch.allclose(seen[name][:, :, p:], plain[:, :, p:])


def test_meta_device_and_bad_input():
    with torch.device("meta"):
        model = timm.create_model("eva02_tiny_patch14_224", img_size=28, depth=2, num_classes=5)
    visattn.replace_attention(model, "window", window_size=2)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.eval()(torch.empty(2, 3, 28, 28, device="meta")).shape == (2, 5)
    with pytest.raises(TypeError, match="source must be a timm EvaAttention"):
        EvaMixerAttention(torch.nn.Linear(2, 2))
    assert replace_eva_attention(torch.nn.Linear(2, 2)) == 0
    layer = EvaMixerAttention(EvaAttention(32, num_heads=2, norm_layer=torch.nn.LayerNorm))
    with pytest.raises(ValueError, match="cannot infer a square grid from N=7"):
        layer(torch.randn(1, 7, 32))
    with pytest.raises(TypeError, match="kernel_sise"):
        EvaMixerAttention(EvaAttention(32, num_heads=2, norm_layer=torch.nn.LayerNorm), "neighborhood", kernel_sise=3)
