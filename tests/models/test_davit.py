"""visattn_davit_*: timm's model contract, same logits and gradients as timm's DaViT on the same weights, timm's
parameter counts, timm checkpoints through pretrained=True, bad arguments and checkpoints refused, training."""

from __future__ import annotations

import pytest
import timm
import torch
from contract import (
    check_state_dict_layout_is_timms,
    check_timm_contract,
    count_params_meta,
    digits_loss_falls,
    load_pretrained_file,
)

import visattn.models  # noqa: F401
from visattn.models.davit import DaVitSpatialBlock
from visattn.nn.davit import ChannelAttention, SpatialWindowAttention
from visattn.testing import randomize_module

TINY = dict(depths=(1, 2, 1, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4))
SIZES = ("tiny", "small", "base", "large")


def _pair(seed: int = 0, **kwargs):
    """timm's DaViT with random weights and visattn's DaViT holding the same weights, both in eval mode."""
    torch.manual_seed(seed)
    theirs = randomize_module(timm.create_model("davit_tiny", **TINY, **kwargs), seed=seed, scale=0.2)
    ours = timm.create_model("visattn_davit_tiny", **TINY, **kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def test_attention_is_visattn():
    model = timm.create_model("visattn_davit_tiny", **TINY)
    spatial = [m for m in model.modules() if isinstance(m, DaVitSpatialBlock)]
    assert len(spatial) == sum(TINY["depths"])
    assert all(isinstance(b.attn, SpatialWindowAttention) for b in spatial)
    assert sum(isinstance(m, ChannelAttention) for m in model.modules()) == sum(TINY["depths"])
    assert not any(isinstance(m, (timm.models.davit.WindowAttention, timm.models.davit.ChannelAttention))
                   for m in model.modules())


@pytest.mark.parametrize("img_hw", [(64, 64), (45, 71)])
def test_same_logits_and_gradients_as_timm(img_hw):
    """Same weights: logits, input gradients and attention weight gradients within 1e-4 of timm's (fp32), at a
    size the windows tile after the stem and one that needs padding everywhere (45 x 71)."""
    ours, theirs = _pair()
    x = torch.randn(2, 3, *img_hw, generator=torch.Generator().manual_seed(1))
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
    assert out_theirs.abs().max() > 0.1
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-4, rtol=0)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-4, rtol=1e-4)
    grads_theirs = {n: p.grad for n, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        if ".attn." in name:
            torch.testing.assert_close(p.grad, grads_theirs[name], atol=1e-4, rtol=1e-4, msg=name)


def test_timm_contract():
    check_timm_contract("visattn_davit_tiny", 64, pass_img_size=False, **TINY)


@pytest.mark.parametrize("size", SIZES)
def test_parameter_count_equals_timm(size):
    """Counted on the meta device; timm's DaViT has the paper's parameter counts (28.4 M, 49.7 M, 88.0 M, 196.8 M)."""
    ours = count_params_meta(f"visattn_davit_{size}")
    assert ours == count_params_meta(f"davit_{size}")
    assert round(ours / 1e6, 1) == {"tiny": 28.4, "small": 49.7, "base": 88.0, "large": 196.8}[size]


def test_same_state_dict_keys_as_timm():
    check_state_dict_layout_is_timms("visattn_davit_tiny", "davit_tiny")


def test_pretrained_cfg_points_at_timm_weights():
    cfg = timm.models.get_pretrained_cfg("visattn_davit_tiny")
    assert cfg.hf_hub_id == "timm/davit_tiny.msft_in1k"
    assert cfg.input_size == (3, 224, 224)


def test_pretrained_loads_a_timm_checkpoint(tmp_path):
    """A randomly initialised timm DaViT saved to a file, loaded by pretrained=True: the same logits."""
    torch.manual_seed(3)
    source = randomize_module(timm.create_model("davit_tiny", **TINY), seed=3, scale=0.2)
    loaded = load_pretrained_file("visattn_davit_tiny", source.state_dict(), tmp_path, **TINY).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-4, rtol=0)


def test_pretrained_loads_the_official_layout(tmp_path):
    """The official repository's key names (patch_embeds, main_blocks, cpe.0/1, norms, head) are renamed on load."""
    torch.manual_seed(4)
    source = randomize_module(timm.create_model("davit_tiny", **TINY), seed=4, scale=0.2)
    renames = [("stem.", "patch_embeds.0."), ("cpe1", "cpe.0"), ("cpe2", "cpe.1"), ("head.fc.", "head."),
               ("head.norm.", "norms.")]
    official = {}
    for key, value in source.state_dict().items():
        for stage in range(1, 4):
            key = key.replace(f"stages.{stage}.downsample.conv", f"patch_embeds.{stage}.proj")
            key = key.replace(f"stages.{stage}.downsample.", f"patch_embeds.{stage}.")
        key = key.replace("stem.conv", "stem.proj")
        for old, new in renames:
            key = key.replace(old, new)
        for stage in range(4):
            key = key.replace(f"stages.{stage}.blocks.", f"main_blocks.{stage}.")
        official[key] = value
    loaded = load_pretrained_file("visattn_davit_tiny", official, tmp_path, **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-4, rtol=0)


def test_pretrained_with_keys_that_do_not_match_lists_them(tmp_path):
    torch.manual_seed(0)
    state = timm.create_model("davit_tiny", **TINY).state_dict()
    state["stages.0.blocks.0.0.attn.extra"] = torch.zeros(1)
    del state["stages.1.blocks.0.1.attn.proj.bias"]
    with pytest.raises(RuntimeError, match=r"(?s)Missing key.*stages\.1\.blocks\.0\.1\.attn\.proj\.bias"
                                           r".*Unexpected key.*attn\.extra"):
        load_pretrained_file("visattn_davit_tiny", state, tmp_path, **TINY)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match=r"unknown DaViT argument\(s\) \['window_sise'\]"):
        timm.create_model("visattn_davit_tiny", window_sise=7)
    with pytest.raises(ValueError, match="channel_attn_v2"):
        timm.create_model("visattn_davit_tiny", channel_attn_v2=True, **TINY)
    model = timm.create_model("visattn_davit_tiny", **TINY)
    with pytest.raises(ValueError, match="x must be shaped"):
        model.stages[0].blocks[0][0].attn(torch.randn(1, 4, 4, 8))


def test_any_image_size_and_features():
    """DaViT pads (stem to 4, downsampling to 2, windows to 7): odd sizes give ceil-sized feature maps."""
    model = timm.create_model("visattn_davit_tiny", features_only=True, **TINY).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 33, 50))
    assert [tuple(m.shape[-2:]) for m in maps] == [(9, 13), (5, 7), (3, 4), (2, 2)]


def test_tiny_davit_learns_digits():
    torch.manual_seed(0)
    model = timm.create_model("visattn_davit_tiny", num_classes=10, **TINY)
    losses = digits_loss_falls(model, 32)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_compiles_and_matches_eager():
    ours, _ = _pair()
    compiled = torch.compile(ours)
    x = torch.randn(2, 3, 35, 42)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ours(x), atol=1e-4, rtol=1e-4)
