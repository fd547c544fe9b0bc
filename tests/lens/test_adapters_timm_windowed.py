"""Lens capture of timm's window and partition attention (Swin V1/V2 ``WindowAttention``, MaxViT ``AttentionCl`` and
``Attention2d``, CoAtNet): on random-init small models the captured maps equal the maps timm itself computes from
q and k on its unfused path (read at ``attn_drop``), shifted-window masks included, in float64; the model's
output is unchanged; the layers can be edited; the patch is undone afterwards."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.maxxvit import MaxxVit, MaxxVitCfg, MaxxVitTransformerCfg

from visattn import lens
from visattn.lens import Edit


def swin(version: int, img_size: int = 32, window_size: int = 4):
    torch.manual_seed(0)
    name = "swin_tiny_patch4_window7_224" if version == 1 else "swinv2_tiny_window8_256"
    return timm.create_model(name, pretrained=False, img_size=img_size, window_size=window_size, embed_dim=16,
                             depths=(2, 2), num_heads=(2, 4), num_classes=5)


def maxvit(nchw: bool):
    torch.manual_seed(0)
    cfg = MaxxVitCfg(embed_dim=(16, 32), depths=(1, 1), block_type=("M", "M"), stem_width=16,
                     transformer_cfg=MaxxVitTransformerCfg(dim_head=8, window_size=(2, 2), grid_size=(2, 2),
                                                           use_nchw_attn=nchw,
                                                           rel_pos_type="mlp" if nchw else "bias"))
    return MaxxVit(cfg, img_size=32, num_classes=5)


def coatnet():
    torch.manual_seed(0)
    cfg = MaxxVitCfg(embed_dim=(16, 32), depths=(1, 1), block_type=("C", "T"), stem_width=16,
                     transformer_cfg=MaxxVitTransformerCfg(dim_head=8))
    return MaxxVit(cfg, img_size=32, num_classes=5)


MODELS = {"swin": lambda: swin(1), "swinv2": lambda: swin(2), "swin_odd": lambda: swin(1, 24, 3),
          "swinv2_odd": lambda: swin(2, 24, 3), "maxvit_cl": lambda: maxvit(False),
          "maxvit_nchw": lambda: maxvit(True), "coatnet": coatnet}
KINDS = {"swin": "WindowAttention", "swinv2": "WindowAttention", "swin_odd": "WindowAttention",
         "swinv2_odd": "WindowAttention", "maxvit_cl": "AttentionCl",
         "maxvit_nchw": "Attention2d", "coatnet": "Attention2d"}


def timm_maps(model, x):
    """Each attention module's post-softmax map as timm computes it unfused (the input of attn_drop)."""
    maps, handles = {}, []
    modules = [m for m in model.modules() if hasattr(m, "attn_drop") and hasattr(m, "qkv")]
    for index, module in enumerate(modules):
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
        handles.append(module.attn_drop.register_forward_hook(
            lambda mod, args, out, index=index: maps.__setitem__(index, out.detach())))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, maps


@pytest.mark.parametrize("name", list(MODELS))
def test_captured_maps_equal_timm_unfused_maps(name):
    model = MODELS[name]().double().eval()
    size = 24 if name.endswith("_odd") else 32
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    layers = lens.attention_layers(model)
    assert layers and {info.kind for info in layers} == {KINDS[name]}
    assert all(info.editable and "hidden" in info.provides for info in layers)
    with lens.capture(model, what=("probs", "q", "k", "v", "head_outputs", "hidden")) as rec, torch.no_grad():
        out = model(x)
    base, maps = timm_maps(model, x)
    assert len(maps) == len(layers)
    for i in range(len(layers)):
        probs = rec.get("probs", i).tensor
        torch.testing.assert_close(probs, maps[i], atol=1e-12, rtol=1e-10)
        layout, hidden = rec.layout(i), rec.get("hidden", i).tensor
        assert layout.windows * 2 == probs.shape[0] and layout.queries.shape[1] == probs.shape[-1]
        assert hidden.dim() == 3 and hidden.shape[0] == 2
        assert sorted(map(tuple, layout.queries.reshape(-1, 2).tolist())) == [
            (y, x) for y in range(layout.grid[0]) for x in range(layout.grid[1])]
        torch.testing.assert_close(rec.get("head_outputs", i).tensor, probs @ rec.get("v", i).tensor)
    torch.testing.assert_close(out, base, atol=1e-10, rtol=1e-10)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_swin_shifted_windows_carry_their_mask():
    """The second block of a Swin stage shifts its windows: the captured maps must be zero across window edges."""
    model = swin(1).double().eval()
    shifted = [i for i, info in enumerate(lens.attention_layers(model)) if info.name == "layers.0.blocks.1.attn"]
    with lens.capture(model, layers=shifted) as rec, torch.no_grad():
        model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    probs = rec.get("probs", shifted[0]).tensor
    assert probs.shape == (4, 2, 16, 16)
    assert (probs[-1] < 1e-30).any() and not (probs[0] < 1e-30).any()


def test_window_layers_can_be_edited_and_restore():
    class Uniform(Edit):
        def edit_probs(self, probs, call):
            return self.restrict(torch.full_like(probs, 1.0 / probs.shape[-1]), probs)

    model = swin(1).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        base = model(x)
        with lens.edit(model, [Uniform(layers=[0])]), lens.capture(model, layers=[0, 1],
                                                                  what=("probs", "v", "head_outputs")) as rec:
            edited = model(x)
        again = model(x)
    probs = rec.get("probs", 0).tensor
    torch.testing.assert_close(probs, torch.full_like(probs, 1.0 / 16))
    assert not torch.allclose(rec.get("probs", 1).tensor, torch.full_like(probs, 1.0 / 16))
    v = rec.get("v", 0).tensor
    torch.testing.assert_close(rec.get("head_outputs", 0).tensor, v.mean(-2, keepdim=True).expand_as(v))
    assert not torch.equal(edited, base)
    torch.testing.assert_close(again, base, atol=0, rtol=0)
