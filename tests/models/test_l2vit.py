"""visattn_l2vit_*: timm's contract, block order and parameter counts of the official configs, checkpoints in the
official layout (ChuanyangZheng/L2ViT), both blocks against a naive float64 reading of the released code, padding
at odd sizes, digits training, bad input refused."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from contract import check_timm_contract, count_params_meta, digits_loss_falls, load_pretrained_file

from visattn.models.l2vit import LinearGlobalBlock, LocalWindowBlock, checkpoint_filter_fn

pytestmark = pytest.mark.usefixtures("one_thread")

NARROW = dict(dims=(16, 32, 32, 64), depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=3)
"""Tiny widths; at 48 px the maps are 12, 6, 3, 2 tokens a side (windows of 3, the last one padded)."""


def test_timm_contract():
    model = check_timm_contract("visattn_l2vit_tiny", 48, pass_img_size=False, **NARROW)
    kinds = [[type(b).__name__ for b in stage.blocks] for stage in model.stages]
    assert kinds == [["LocalWindowBlock", "LinearGlobalBlock"]] * 4


def test_official_block_order():
    """T: stages of 2, 2, 6, 2 blocks, even blocks local windows of 7, odd blocks linear + LCM (7 x 7 kernels)."""
    with torch.device("meta"):
        model = timm.create_model("visattn_l2vit_tiny")
    blocks = [b for stage in model.stages for b in stage.blocks]
    assert len(blocks) == 12
    assert all(isinstance(b, LocalWindowBlock if j % 2 == 0 else LinearGlobalBlock)
               for stage in model.stages for j, b in enumerate(stage.blocks))
    assert {b.window_size for b in blocks if isinstance(b, LocalWindowBlock)} == {7}
    assert {b.lcm.conv1.kernel_size for b in blocks if isinstance(b, LinearGlobalBlock)} == {(7, 7)}
    assert [s.blocks[0].attn.num_heads for s in model.stages] == [3, 6, 12, 24]


@pytest.mark.parametrize(("name", "paper_m", "exact"), [
    ("visattn_l2vit_tiny", 29, 28_596_781),
    ("visattn_l2vit_small", 50, 50_199_157),
    ("visattn_l2vit_base", 89, 88_577_188),
])
def test_parameter_counts(name, paper_m, exact):
    """The official README: T 29 M, S 50 M, B 89 M. The counts equal those of the official ``L2ViT_{Tiny,Small,
    Base}`` classes (28,596,781 / 50,199,157 / 88,577,188, counted by instantiating them outside this repository);
    T is 1.4 % below the README's rounded 29 M."""
    count = count_params_meta(name)
    assert count == exact
    assert abs(count / 1e6 - paper_m) <= 0.02 * paper_m


def _official_layout(state):
    """Our state dict in the layout of the released ``L2ViT`` (classification/models/l2vit.py): the stem and the
    downsampling layers in ``downsample_layers`` (the stem's convolutions under ``proj.proj``), blocks directly
    under ``stages.{i}.{j}``, ``attn.temperature``, ``norm3``, ``local_mp``, ``head``; as in the released
    ``*-best-ema.pth`` files, wrapped in ``{"model": ...}``."""
    import re

    out = {}
    for key, value in state.items():
        key = re.sub(r"^stem\.proj\.", "downsample_layers.0.proj.proj.", key)
        key = re.sub(r"^stem\.", "downsample_layers.0.", key)
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = key.replace(".attn.mixer.temperature", ".attn.temperature")
        key = key.replace(".lcm.norm.", ".norm3.").replace(".lcm.", ".local_mp.").replace("head.fc.", "head.")
        out[key] = value
    return {"model": out}


def _randomise_statistics(model):
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)


def test_loads_the_official_layout(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("visattn_l2vit_tiny", **NARROW).eval()
    _randomise_statistics(source)
    state = _official_layout(source.state_dict())
    assert {"downsample_layers.0.proj.proj.0.weight", "downsample_layers.0.proj.proj.4.running_var",
            "downsample_layers.0.norm.weight", "downsample_layers.2.proj.weight", "downsample_layers.2.norm.bias",
            "stages.0.0.cpe.1.proj.weight", "stages.0.0.attn.qkv.bias", "stages.0.1.attn.temperature",
            "stages.0.1.norm3.weight", "stages.0.1.local_mp.conv1.weight", "stages.0.1.local_mp.bn.running_mean",
            "stages.3.1.local_mp.conv2.bias", "norm.weight", "head.weight"} <= set(state["model"])
    path = tmp_path / "l2vit_tiny.pth"
    torch.save(state, path)
    loaded = timm.create_model("visattn_l2vit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                               **NARROW).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-5, rtol=0)


def test_official_layout_with_wrong_keys_lists_them(tmp_path):
    state = _official_layout(timm.create_model("visattn_l2vit_tiny", **NARROW).state_dict())["model"]
    del state["stages.1.1.attn.temperature"]
    state["stages.1.1.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"(?s)Missing key.*blocks\.1\.attn\.mixer\.temperature.*Unexpected.*extra"):
        load_pretrained_file("visattn_l2vit_tiny", {"model_ema": state}, tmp_path, **NARROW)
    model = timm.create_model("visattn_l2vit_tiny", **NARROW)
    official = _official_layout(model.state_dict())["model"]
    assert checkpoint_filter_fn(official, model).keys() == model.state_dict().keys()


def _cpe(conv, x):
    return x + F.conv2d(x, conv.weight, conv.bias, padding=1, groups=x.shape[1])


def _ln(norm, x):
    """LayerNorm over channels of an NCHW map, written out."""
    mean = x.mean(1, keepdim=True)
    var = (x - mean).square().mean(1, keepdim=True)
    return (x - mean) / (var + norm.eps).sqrt() * norm.weight[:, None, None] + norm.bias[:, None, None]


def _heads(attn, tokens):
    b, n, c = tokens.shape
    qkv = (tokens @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _mlp(mlp, x):
    return F.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias


def _naive_window_block(block, x):
    """The released LWABlock, written out per window with explicit zero padding (x NCHW)."""
    b, c, h, w = x.shape
    s = block.window_size
    x = _cpe(block.cpe[0].proj, x)
    y = F.pad(_ln(block.norm1, x), (0, (-w) % s, 0, (-h) % s))
    out = torch.zeros_like(y)
    for i in range(0, y.shape[2], s):
        for j in range(0, y.shape[3], s):
            tokens = y[:, :, i:i + s, j:j + s].flatten(2).transpose(1, 2)
            q, k, v = _heads(block.attn, tokens)
            mixed = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1) @ v
            mixed = mixed.transpose(1, 2).reshape(b, s * s, c) @ block.attn.proj.weight.T + block.attn.proj.bias
            out[:, :, i:i + s, j:j + s] = mixed.transpose(1, 2).reshape(b, c, s, s)
    x = _cpe(block.cpe[1].proj, x + out[:, :, :h, :w])
    return x + _mlp(block.mlp, _ln(block.norm2, x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _naive_linear_block(block, x):
    """The released LGABlock (kv-first linear attention with the clamp at 100, then LCM), x NCHW."""
    b, c, h, w = x.shape
    x = _cpe(block.cpe[0].proj, x)
    q, k, v = _heads(block.attn, _ln(block.norm1, x).flatten(2).transpose(1, 2))
    q, k = q.relu(), k.relu()
    denom = (q @ k.sum(2, keepdim=True).transpose(-1, -2)).clamp(min=100.0)
    mixed = q @ (k.transpose(-1, -2) @ v * block.attn.mixer.temperature) / denom
    mixed = mixed.transpose(1, 2).reshape(b, h * w, c) @ block.attn.proj.weight.T + block.attn.proj.bias
    x = x + mixed.transpose(1, 2).reshape(b, c, h, w)
    lcm = block.lcm
    branch = F.conv2d(_ln(lcm.norm, x), lcm.conv1.weight, lcm.conv1.bias, padding=3, groups=c)
    bn = lcm.bn
    branch = (F.gelu(branch) - bn.running_mean[:, None, None]) / (bn.running_var[:, None, None] + bn.eps).sqrt()
    branch = branch * bn.weight[:, None, None] + bn.bias[:, None, None]
    x = x + F.conv2d(branch, lcm.conv2.weight, lcm.conv2.bias, padding=3, groups=c)
    return x + _mlp(block.mlp, _ln(block.norm2, x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.mark.parametrize(("h", "w"), [(6, 6), (7, 5)])
def test_blocks_equal_the_released_formulas_float64(h, w):
    """Both blocks in float64 on random weights (BN statistics and temperatures random too) against the naive
    reading of the released code; 7 x 5 pads the 3 x 3 windows on both sides."""
    torch.manual_seed(0)
    window, linear = LocalWindowBlock(8, 2, window_size=3).double().eval(), LinearGlobalBlock(8, 2).double().eval()
    for block in (window, linear):
        for p in block.parameters():
            p.data.normal_(0, 0.5)
    _randomise_statistics(linear)
    linear.attn.mixer.temperature.data.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, h, w, dtype=torch.float64) * 3
    for block, naive in ((window, _naive_window_block), (linear, _naive_linear_block)):
        out = block(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, naive(block, x), atol=1e-10, rtol=1e-10)


def test_odd_image_sizes_run():
    """50 x 38 px: the stem pads to 52 x 40, every stage pads to even sizes and to whole windows."""
    model = timm.create_model("visattn_l2vit_tiny", num_classes=3, **NARROW).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 38)).shape == (1, 3)
        _, maps = model.forward_intermediates(torch.randn(1, 3, 50, 38))
    assert [tuple(m.shape[-2:]) for m in maps] == [(13, 10), (7, 5), (4, 3), (2, 2)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        timm.create_model("visattn_l2vit_tiny", dims=(16, 32), depths=(2, 2), num_heads=(1,))
    with pytest.raises(ValueError, match="window_size"):
        timm.create_model("visattn_l2vit_tiny", window_size=0)
    with pytest.raises(TypeError, match="bogus"):
        timm.create_model("visattn_l2vit_tiny", bogus=1)
    model = timm.create_model("visattn_l2vit_tiny", **NARROW)
    with pytest.raises(ValueError, match="x must be an image batch"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt="NHWC")


def test_digits_loss_falls():
    torch.manual_seed(0)
    model = timm.create_model("visattn_l2vit_tiny", num_classes=10, dims=(16, 32, 32, 64), depths=(2, 2, 2, 2),
                              num_heads=(1, 2, 2, 4), window_size=4)
    digits_loss_falls(model, 32)
