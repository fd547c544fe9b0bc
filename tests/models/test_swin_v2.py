"""visattn_swinv2_*: timm's contract, the same logits and gradients as timm's Swin-V2 with the same weights
(shifted windows, padding, dynamic size), timm's and the official checkpoint layouts loaded by pretrained=True,
parameter counts equal to timm's, the cached position bias following weight changes, bad input refused."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from contract import (
    check_lens_matches,
    check_meta_build_matches,
    check_timm_contract,
    count_params_meta,
    digits_loss_falls,
    load_pretrained_file,
)

from visattn.models.swin_v2 import TIMM_COUNTERPARTS, SwinV2WindowAttention
from visattn.testing import randomize_module

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "visattn_swinv2_tiny_window8_256"
NARROW = dict(embed_dim=16, num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 2))
"""Tiny widths, Swin-V2's layout: at 64 px stage 0 is 16 x 16 tokens in 8 x 8 windows shifted by 4."""


def _pair(kwargs, seed=0):
    """visattn's model with seeded random weights (every parameter, norms included: Swin-V2's post-norms start at
    0, which would hide the attention) and timm's model holding the same state dict."""
    ours = randomize_module(timm.create_model(NAME, **kwargs), seed, scale=0.2)
    theirs = timm.create_model(NAME.removeprefix("visattn_"), **kwargs).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def test_timm_contract():
    model = check_timm_contract(NAME, 64, feature_fmt="NHWC", intermediates_fmt="NCHW", **NARROW)
    attns = [block.attn for layer in model.layers for block in layer.blocks]
    assert len(attns) == 8 and all(isinstance(a, SwinV2WindowAttention) for a in attns)
    assert model.layers[0].blocks[1].shift_size == (4, 4)


@pytest.mark.parametrize("name", ["visattn_swinv2_tiny_window8_256", "visattn_swinv2_small_window8_256",
                                  "visattn_swinv2_base_window8_256", "visattn_swinv2_base_window16_256"])
def test_parameter_count_equals_timm(name):
    """Paper (Table 1 of Swin-V2 / timm): T 28.3 M, S 49.7 M, B 87.9 M; the window size changes no parameter
    (the position bias is an MLP of the relative coordinates)."""
    assert name in TIMM_COUNTERPARTS
    assert count_params_meta(name) == count_params_meta(TIMM_COUNTERPARTS[name])


@pytest.mark.parametrize(("window", "run_size"), [(8, 64), (8, 96), (16, 80)])
def test_same_logits_and_gradients_as_timm(window, run_size):
    """fp32, eval, same state dict, dynamic size: logits, input gradients and every parameter gradient within 1e-4
    of timm's. 64 px: shifted 8 x 8 windows; 96 px: stage 1's 12 x 12 map padded to 16; 80 px with window 16:
    stage 0's 20 x 20 map padded to 32 and shifted by 8."""
    ours, theirs = _pair(dict(img_size=64, window_size=window, dynamic_img_size=True, num_classes=7, **NARROW))
    x = torch.randn(2, 3, run_size, run_size, generator=torch.Generator().manual_seed(1))
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-4, rtol=0)
    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-4, rtol=1e-4)
    theirs_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs_grads[name].grad, atol=1e-4, rtol=1e-4, msg=name)


def test_real_tiny_layout_same_logits_as_timm():
    """Swin-V2-T's real widths and depths at 128 px: the same logits as timm's."""
    ours, theirs = _pair(dict(img_size=128))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=0)


def _official_layout(state):
    """timm's state dict in the official Microsoft layout: patch merging at the end of the previous stage,
    classifier ``head``."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        out[key.replace("head.fc.", "head.")] = value
    return out


@pytest.mark.parametrize("layout", ["timm", "official"])
def test_pretrained_loads_a_checkpoint(tmp_path, layout):
    """A randomly initialised timm Swin-V2 saved to a file (timm's or the official layout) and loaded by
    pretrained=True: the same logits."""
    source = randomize_module(timm.create_model("swinv2_tiny_window8_256", img_size=64, **NARROW), 3, scale=0.2)
    state = source.state_dict()
    checkpoint = state if layout == "timm" else _official_layout(state)
    loaded = load_pretrained_file(NAME, checkpoint, tmp_path, img_size=64, **NARROW).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-5, rtol=0)


def test_pretrained_cfg_points_at_timms_weights():
    cfg = timm.create_model(NAME, img_size=64, **NARROW).pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/swinv2_tiny_window8_256.ms_in1k"
    assert cfg["input_size"] == (3, 256, 256)
    assert (timm.models.get_pretrained_cfg("visattn_swinv2_base_window16_256").hf_hub_id
            == "timm/swinv2_base_window16_256.ms_in1k")


def test_pretrained_with_keys_that_do_not_match_lists_them(tmp_path):
    torch.manual_seed(0)
    state = timm.create_model("swinv2_tiny_window8_256", img_size=64, **NARROW).state_dict()
    state["layers.0.blocks.0.attn.extra"] = torch.zeros(1)
    del state["layers.1.blocks.1.attn.logit_scale"]
    with pytest.raises(RuntimeError, match=r"(?s)Missing key.*blocks\.1\.attn\.logit_scale.*Unexpected key.*extra"):
        load_pretrained_file(NAME, state, tmp_path, img_size=64, **NARROW)


def test_cached_position_bias_follows_weight_changes():
    """Without grad the bias (and shift mask sum) is reused; a new state dict or an in-place update of the MLP is
    seen on the next call, and with grad enabled the MLP receives gradients."""
    ours, theirs = _pair(dict(img_size=64, num_classes=5, **NARROW))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours(x)
        torch.manual_seed(5)
        other = timm.create_model("swinv2_tiny_window8_256", img_size=64, num_classes=5, **NARROW).eval()
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
        ours.load_state_dict(other.state_dict())
        torch.testing.assert_close(ours(x), other(x), atol=1e-4, rtol=0)
        ours.layers[0].blocks[1].attn.cpb_mlp[2].weight.mul_(3.0)
        other.layers[0].blocks[1].attn.cpb_mlp[2].weight.mul_(3.0)
        torch.testing.assert_close(ours(x), other(x), atol=1e-4, rtol=0)
    ours(x).sum().backward()
    assert ours.layers[0].blocks[1].attn.cpb_mlp[0].weight.grad.abs().sum() > 0


def test_fixed_size_model_refuses_other_sizes():
    model = timm.create_model(NAME, img_size=64, **NARROW).eval()
    with pytest.raises(ValueError, match=r"img_size=\(96, 96\).*dynamic_img_size=True"):
        model(torch.randn(1, 3, 96, 96))
    dynamic = timm.create_model(NAME, img_size=64, dynamic_img_size=True, num_classes=3, **NARROW).eval()
    with torch.no_grad():
        assert dynamic(torch.randn(1, 3, 72, 100)).shape == (1, 3)


def test_built_on_meta_then_materialised_equals_a_cpu_build():
    """Meta construction, ``to_empty``, timm's ``reinit_non_persistent_buffers`` and a state dict: the same logits
    as the model built on the CPU."""
    ours, _ = _pair(dict(img_size=64, **NARROW))
    check_meta_build_matches(NAME, ours, torch.randn(1, 3, 64, 64), img_size=64, **NARROW)


def test_lens_captures_the_maps_it_captures_on_timms_model():
    """visattn.lens routes visattn's attention modules: float64, same weights, the captured attention maps and the
    model output equal those on timm's model."""
    ours, theirs = (m.double() for m in _pair(dict(img_size=64, **NARROW)))
    check_lens_matches(ours, theirs, torch.randn(1, 3, 64, 64, dtype=torch.float64), num_layers=8)


def test_unknown_argument_is_refused():
    with pytest.raises(TypeError, match=r"unknown Swin-V2 argument\(s\) \['window'\]"):
        timm.create_model(NAME, window=7)


def test_tiny_config_trains_on_digits():
    model = timm.create_model(NAME, img_size=32, window_size=4, num_classes=10, **NARROW)
    assert model.layers[0].blocks[1].shift_size == (2, 2)
    digits_loss_falls(model, 32)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = timm.create_model(NAME, img_size=64, num_classes=5, embed_dim=16, num_heads=(1, 2), depths=(2, 2)).eval()
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=0)
