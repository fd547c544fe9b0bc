"""visattn_inline_*: timm's contract, the block layout of the official configs, parameter counts against the paper,
checkpoints in the official layout (LeapLabTHU/InLine), InLine attention in a Swin block against its formula,
digits training, bad input refused."""

from __future__ import annotations

import re

import pytest
import timm
import torch
from contract import check_lens_cli, check_timm_contract, count_params_meta, digits_loss_falls, load_pretrained_file

from visattn.models.inline import InLineWindowAttention, checkpoint_filter_fn, parse_attn_types
from visattn.nn.inline_attention import inline_oracle

pytestmark = pytest.mark.usefixtures("one_thread")

SWIN_NARROW = dict(embed_dim=16, num_heads=(1, 2, 2, 4), depths=(2, 2, 2, 2))
"""Tiny widths: at 64 px the stage maps are 16, 8, 4, 2 tokens a side."""
DEIT_SHAPE = dict(patch_size=8, embed_dim=24, depth=2, num_heads=2)
DEIT_NARROW = dict(img_size=32, **DEIT_SHAPE)


def test_swin_timm_contract():
    model = check_timm_contract("visattn_inline_swin_tiny", 64, feature_fmt="NHWC", intermediates_fmt="NCHW",
                                **SWIN_NARROW)
    kinds = [[type(b.attn).__name__ for b in stage.blocks] for stage in model.layers]
    assert kinds[:3] == [["InLineWindowAttention"] * 2] * 3 and kinds[3] == ["WindowAttention"] * 2


def test_deit_timm_contract():
    model = check_timm_contract("visattn_inline_deit_tiny", 32, **DEIT_SHAPE)
    assert all(block.attn.mixer.__class__.__name__ == "InLineMixer" for block in model.blocks)


def test_official_layouts_at_224():
    """T "IIIS": InLine over the whole 56/28/14 maps (official window 56 clamped), stage 4 softmax window 7 (the 7x7
    map, no shift); S "IISS": stage 3 softmax windows 7 shifted by 3 in odd blocks; B "IIMS2": stage 3 starts with
    two InLine blocks over its 14 x 14 map."""
    with torch.device("meta"):
        tiny, small, base = (timm.create_model(f"visattn_inline_swin_{s}") for s in ("tiny", "small", "base"))
    windows = [b.window_size for s in tiny.layers[:3] for b in s.blocks]
    assert windows == [(56, 56)] * 2 + [(28, 28)] * 2 + [(14, 14)] * 6
    assert all(b.shift_size == (0, 0) for s in tiny.layers for b in s.blocks)
    assert [b.window_size for b in tiny.layers[3].blocks] == [(7, 7)] * 2
    stage3 = small.layers[2].blocks
    assert all(not isinstance(b.attn, InLineWindowAttention) for b in stage3)
    assert [b.shift_size for b in stage3[:2]] == [(0, 0), (3, 3)]
    assert [isinstance(b.attn, InLineWindowAttention) for b in base.layers[2].blocks] == [True] * 2 + [False] * 16
    assert [b.window_size for b in base.layers[2].blocks[1:4]] == [(14, 14), (7, 7), (7, 7)]
    assert base.layers[2].blocks[3].shift_size == (3, 3)


def test_layout_at_384():
    """Built for 384 (the official 384 configs: window 96 for InLine, 12 for softmax): InLine over the whole
    96 x 96 map, stage 4's softmax window 12 = its map."""
    with torch.device("meta"):
        model = timm.create_model("visattn_inline_swin_tiny", img_size=384)
    assert model.layers[0].blocks[0].window_size == (96, 96)
    assert model.layers[0].blocks[0].attn.window_size == (96, 96)
    assert [b.window_size for b in model.layers[3].blocks] == [(12, 12)] * 2


@pytest.mark.parametrize(("name", "paper_m", "exact"), [
    ("visattn_inline_deit_tiny", 6.5, 6_477_736),
    ("visattn_inline_swin_tiny", 30, 29_223_544),
    ("visattn_inline_swin_small", 50, 49_793_296),
    ("visattn_inline_swin_base", 88, 88_350_120),
])
def test_parameter_counts(name, paper_m, exact):
    """The README's table: DeiT-T 6.5 M, Swin-T 30 M, Swin-S 50 M, Swin-B 88 M. Swin-T counts 29.22 M (2.6 % below
    the README's "30M"): the official ``InLineSwin(attn_type="IIIS", window_size=56)`` builds the same 29,223,544
    parameters (counted by instantiating the official class outside this repository), so the README rounds up."""
    count = count_params_meta(name)
    assert count == exact
    assert abs(count / 1e6 - paper_m) <= 0.03 * paper_m


def test_parse_attn_types():
    assert parse_attn_types("IIMS2", (2, 2, 4, 2)) == [["I", "I"], ["I", "I"], ["I", "I", "S", "S"], ["S", "S"]]
    for bad in ("IIS", "IIXS", "IIMS", "IIIS2", 5):
        with pytest.raises(ValueError, match="attn_types"):
            parse_attn_types(bad, (2, 2, 2, 2))


def _official_swin_layout(state):
    """The visattn state dict in the official InLineSwin layout (models/inline_swin.py): patch merging at the end
    of the previous stage (``layers.{i}.downsample``), ``head``, ``attn.residual``, the persistent buffers
    ``relative_position_index`` of every softmax block and ``attn_mask`` of the shifted ones, wrapped in
    ``{"model": ...}`` as the released files."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        key = key.replace("head.fc.", "head.").replace(".attn.mixer.residual.", ".attn.residual.")
        out[key] = value
        if key.endswith("attn.relative_position_bias_table"):
            out[key.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(4, 4).long()
    out["layers.2.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    return {"model": out}


def test_swin_loads_the_official_layout(tmp_path):
    kwargs = dict(img_size=64, **SWIN_NARROW)
    torch.manual_seed(3)
    source = timm.create_model("visattn_inline_swin_small", **kwargs).eval()
    state = _official_swin_layout(source.state_dict())
    names = set(state["model"])
    assert {"layers.0.blocks.0.attn.residual.0.weight", "layers.0.blocks.0.attn.residual.2.bias",
            "layers.0.downsample.reduction.weight", "layers.2.blocks.0.attn.relative_position_bias_table",
            "head.weight"} <= names
    assert not any("downsample" in k for k in names if k.startswith("layers.3."))
    path = tmp_path / "inline_swin_s.pth"
    torch.save(state, path)
    loaded = timm.create_model("visattn_inline_swin_small", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-5, rtol=0)


def test_deit_loads_the_official_layout(tmp_path):
    torch.manual_seed(4)
    source = timm.create_model("visattn_inline_deit_tiny", **DEIT_NARROW).eval()
    official = {k.replace(".attn.mixer.residual.", ".attn.residual."): v for k, v in source.state_dict().items()}
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.attn.residual.2.weight",
            "blocks.1.attn.qkv.bias", "head.weight"} <= set(official)
    path = tmp_path / "inline_deit_t.pth"
    torch.save({"model": official}, path)
    loaded = timm.create_model("visattn_inline_deit_tiny", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)), **DEIT_NARROW).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-5, rtol=0)


def test_official_layout_with_wrong_keys_lists_them(tmp_path):
    source = timm.create_model("visattn_inline_deit_tiny", **DEIT_NARROW)
    official = {k.replace(".attn.mixer.residual.", ".attn.residual."): v for k, v in source.state_dict().items()}
    del official["blocks.0.attn.residual.0.weight"]
    official["blocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"(?s)Missing key.*attn\.mixer\.residual\.0\.weight.*Unexpected.*extra"):
        load_pretrained_file("visattn_inline_deit_tiny", official, tmp_path, **DEIT_NARROW)


def test_window_attention_equals_the_formula_float64():
    """An InLine Swin block's attention on a 5 x 5 window: proj(dense InLine weights @ v + shifted-copy local
    residual) (the naive oracle), float64; the shift mask is ignored as in the official code."""
    torch.manual_seed(0)
    attn = InLineWindowAttention(12, 3, 5).double()
    x = torch.randn(4, 25, 12, dtype=torch.float64)
    q, k, v = attn.qkv_heads(x)
    expected = attn.proj(inline_oracle(attn.mixer, q, k, v, (5, 5), x=x).transpose(1, 2).reshape(4, 25, 12))
    torch.testing.assert_close(attn(x), expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(attn(x, mask=torch.zeros(2, 25, 25, dtype=torch.float64)), expected)


def test_filter_accepts_a_bare_state_dict():
    model = timm.create_model("visattn_inline_deit_tiny", **DEIT_NARROW)
    state = {k.replace(".attn.mixer.residual.", ".attn.residual."): v for k, v in model.state_dict().items()}
    assert set(checkpoint_filter_fn(state, model)) == set(model.state_dict())


def test_bad_arguments():
    with pytest.raises(ValueError, match="attn_types"):
        timm.create_model("visattn_inline_swin_tiny", attn_types="IIQS", img_size=64, **SWIN_NARROW)
    with pytest.raises(TypeError, match="bogus"):
        timm.create_model("visattn_inline_swin_tiny", bogus=1, img_size=64, **SWIN_NARROW)
    with pytest.raises(ValueError, match="kernel"):
        timm.create_model("visattn_inline_deit_tiny", inline_kernel="cosh", **DEIT_NARROW)


def test_swin_digits_loss_falls():
    torch.manual_seed(0)
    model = timm.create_model("visattn_inline_swin_tiny", img_size=32, num_classes=10, embed_dim=16,
                              num_heads=(1, 2, 2, 4), depths=(1, 1, 1, 1), attn_types="IIIS")
    digits_loss_falls(model, 32)


def test_deit_digits_loss_falls():
    torch.manual_seed(0)
    model = timm.create_model("visattn_inline_deit_tiny", num_classes=10, **dict(DEIT_NARROW, embed_dim=32))
    digits_loss_falls(model, 32, lr=3e-3)


@pytest.mark.slow
def test_lens_cli_on_the_deit(tmp_path):
    """The lens reads InLine's weights in every block of InLine-DeiT (~12 s on a busy machine). InLine-Swin is not
    covered: the lens's timm Swin adapter cannot give the hidden states of its softmax stage."""
    check_lens_cli("visattn_inline_deit_tiny", tmp_path, "img_size=32,patch_size=8,embed_dim=24,depth=2,num_heads=2",
                   min_layers=2)
