"""visattn_patnet_*: the network equals a naive float64 reference written from the paper and the release (every
block's formula spelled out with functional ops), timm's model contract, parameter counts, the release's checkpoint
layout through pretrained=True, bad arguments refused, training."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from contract import check_timm_contract, count_params_meta, digits_loss_falls, load_pretrained_file

import visattn.models  # noqa: F401
from visattn.models.patnet import PATNET_ARGS, PATNet, checkpoint_filter_fn
from visattn.models.published import PUBLISHED
from visattn.nn.feature_maps import PartialChannelAttention, PartialSelfAttention, PartialSpatialAttention, PATBlock
from visattn.testing import randomize_module

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(embed_dim=16, depths=(1, 2, 1, 1), feature_dim=32)
SIZES = ("t0", "t1", "t2", "s", "m", "l")
EPS = 1e-5


def _bn(x, state, prefix):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean, var = state[f"{prefix}.running_mean"].view(shape), state[f"{prefix}.running_var"].view(shape)
    weight, bias = state[f"{prefix}.weight"].view(shape), state[f"{prefix}.bias"].view(shape)
    return (x - mean) / torch.sqrt(var + EPS) * weight + bias


def _hardsigmoid(x):
    return torch.clamp(x + 3, 0, 6) / 6


def _buckets(h, w, ratio=20.0):
    """iRPE Euclidean bucket of every pixel pair, pair by pair: ``beta + round(||p_i - p_j||)`` (the release's
    piecewise index inside ``alpha = ratio``; tiny maps never reach the logarithmic part)."""
    alpha, beta = ratio, 2 * ratio
    ids = torch.empty(h * w, h * w, dtype=torch.long)
    for i in range(h * w):
        for j in range(h * w):
            d = round(math.dist(divmod(i, w), divmod(j, w)))
            assert d <= alpha
            ids[i, j] = int(beta) + d
    return ids


def _self_attention(x, state, prefix, heads):
    b, c, h, w = x.shape
    t = x.flatten(2).transpose(1, 2)
    t = F.layer_norm(t, (c,), state[f"{prefix}.norm.weight"], state[f"{prefix}.norm.bias"], eps=1e-6)
    qkv = t @ state[f"{prefix}.attn.qkv.weight"].T
    q, k, v = qkv.view(b, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-1, -2) / math.sqrt(c // heads)
    logits = logits + state[f"{prefix}.attn.rpe_bias"][:, _buckets(h, w)]
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, h * w, c)
    out = out @ state[f"{prefix}.attn.proj.weight"].T + state[f"{prefix}.attn.proj.bias"]
    return out.transpose(1, 2).reshape(b, c, h, w)


def _channel_gate(x, state, prefix):
    flat = x.flatten(2)
    stats = torch.stack((flat.mean(-1), flat.std(-1, correction=1)), -1)  # (B, C', 2)
    z = torch.einsum("bcs,dcs->bd", stats, state[f"{prefix}.gate_conv.weight"][:, :, 0])[..., None, None]
    return x * _hardsigmoid(_bn(z, state, f"{prefix}.gate_norm"))


def _mlp(x, state, prefix, act, spatial):
    y = F.conv2d(x, state[f"{prefix}.0.weight"])
    y = F.conv2d(act(_bn(y, state, f"{prefix}.1")), state[f"{prefix}.3.weight"])
    if spatial:
        c = y.shape[1]
        y1, y2 = y[:, : c - c // 2], y[:, c - c // 2:]
        y1 = _bn(y1 * _hardsigmoid(F.conv2d(y1, state[f"{prefix}.4.conv_attn.weight"])), state, f"{prefix}.4.norm")
        y2 = F.conv2d(_bn(y2, state, f"{prefix}.4.norm2"), state[f"{prefix}.4.conv.weight"])
        y = torch.cat((y1, y2), 1)
    return y


def _reference(state, x, depths, act, heads, spatial):
    """PATNet from its state dict, float64, eval: stem, merging, PAT_ch blocks in stages 0-2 (residual around
    mixer and MLP together), PAT_sf in the last (residual around each), head."""
    x = _bn(F.conv2d(x, state["patch_embed.proj.weight"], stride=4), state, "patch_embed.norm")
    for i, depth in enumerate(depths):
        if i:
            x = _bn(F.conv2d(x, state[f"stages.{i}.downsample.reduction.weight"], stride=2), state,
                    f"stages.{i}.downsample.norm")
        for j in range(depth):
            p = f"stages.{i}.blocks.{j}"
            cp = x.shape[1] // 4
            x1 = F.conv2d(x[:, :cp], state[f"{p}.spatial_mixing.partial_conv3.weight"], padding=1)
            if i < len(depths) - 1:
                x2 = _bn(_channel_gate(x[:, cp:], state, f"{p}.spatial_mixing"), state, f"{p}.spatial_mixing.norm")
                x = x + _mlp(torch.cat((x1, x2), 1), state, f"{p}.mlp", act, spatial)
            else:
                x = x + torch.cat((x1, _self_attention(x[:, cp:], state, f"{p}.spatial_mixing", heads)), 1)
                x = x + _mlp(x, state, f"{p}.mlp", act, spatial)
    x = act(x.mean((2, 3)) @ state["conv_head.weight"][:, :, 0, 0].T)
    return x @ state["classifier.weight"].T + state["classifier.bias"]


def _model(name="visattn_patnet_t1", seed=0, **kwargs):
    torch.manual_seed(seed)
    return randomize_module(timm.create_model(name, **TINY, **kwargs), seed=seed, scale=0.3).double().eval()


@pytest.mark.parametrize(("name", "img_hw", "act", "heads", "spatial"), [
    ("visattn_patnet_t1", (64, 64), F.gelu, 6, True),
    ("visattn_patnet_t1", (47, 81), F.gelu, 6, True),
    ("visattn_patnet_t2", (64, 48), F.relu, 6, False),
    ("visattn_patnet_t0", (40, 72), F.gelu, 4, False),
])
def test_equals_the_naive_reference(name, img_hw, act, heads, spatial):
    """Float64 logits equal the reference to 1e-10 at square and odd sizes, with and without PAT_sp, GELU and ReLU,
    4 and 6 heads (heads 6 need 24 attended channels: embed_dim 16 -> 128 in the last stage, 96 attended)."""
    model = _model(name)
    x = torch.randn(2, 3, *img_hw, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
        ref = _reference(model.state_dict(), x, TINY["depths"], act, heads, spatial)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


def test_float32_within_tolerance_and_gradients_flow():
    """float32 within 1e-4 of float64 (eval); in training (dropout on) every parameter receives a finite gradient,
    rpe_bias included."""
    model = _model()
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
    model32 = model.float().eval()
    torch.testing.assert_close(model32(x.float()).double(), ref, atol=1e-4, rtol=1e-4)
    model32.train()
    model32(x.float()).square().mean().backward()
    missing = [n for n, p in model32.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_blocks_are_visattn_and_follow_the_release():
    model = timm.create_model("visattn_patnet_t1", **TINY)
    blocks = [m for m in model.modules() if isinstance(m, PATBlock)]
    assert len(blocks) == sum(TINY["depths"])
    for i, stage in enumerate(model.stages):
        for block in stage.blocks:
            kind = PartialSelfAttention if i == len(model.stages) - 1 else PartialChannelAttention
            assert isinstance(block.spatial_mixing, kind)
            assert isinstance(block.mlp[-1], PartialSpatialAttention)
    attn = model.stages[-1].blocks[0].spatial_mixing.attn
    assert (attn.num_heads, attn.attn_drop, attn.proj_drop.p, attn.num_buckets) == (6, 0.1, 0.1, 81)
    t0 = timm.create_model("visattn_patnet_t0", **TINY)
    assert t0.stages[-1].blocks[0].spatial_mixing.attn.num_heads == 4
    assert not any(isinstance(m, PartialSpatialAttention) for m in t0.modules())
    released = timm.create_model("visattn_patnet_s", num_heads=4, **TINY)
    assert released.stages[-1].blocks[0].spatial_mixing.attn.num_heads == 4


def test_timm_contract():
    check_timm_contract("visattn_patnet_t1", 64, pass_img_size=False, **TINY)


@pytest.mark.parametrize("size", SIZES)
def test_parameter_counts(size):
    """Counted on the meta device against a count from the configuration: FasterNet's skeleton with PAT's extra
    parameters per block (PAT_ch: (3c/4)^2 * 2 gate conv + 3 x 2 (3c/4) BN; PAT_sf: LayerNorm, qkv, proj, 81
    buckets per head instead; PAT_sp: c/2 + (c/2)^2 + 2 x 2 (c/2)). The paper's figures are not recorded (None)."""
    name = f"visattn_patnet_{size}"
    cfg = PATNET_ARGS[name]
    dims = [cfg["embed_dim"] * 2 ** i for i in range(4)]
    heads = cfg.get("num_heads", 6)
    expected = 3 * 16 * dims[0] + 2 * dims[0] + 1280 * dims[-1] + 1281 * 1000
    for i, (dim, depth) in enumerate(zip(dims, cfg["depths"], strict=True)):
        if i:
            expected += dims[i - 1] * dim * 4 + 2 * dim
        cp, cu, half = dim // 4, dim - dim // 4, dim // 2
        block = cp * cp * 9 + 2 * dim * dim * 2 + 2 * 2 * dim
        if i < 3:
            block += cu * cu * 2 + 2 * cu + 2 * cu
        else:
            block += 2 * cu + 3 * cu * cu + cu * cu + cu + heads * 81
        if cfg.get("spatial_attn", False):
            block += half + half * half + 2 * (dim - half) + 2 * half
        expected += depth * block
    assert count_params_meta(name) == expected
    assert PUBLISHED[name].params_m is None and PUBLISHED[name].gmacs is None


def _official_layout(state):
    """visattn's keys renamed to haiduo/PartialNet's ``models/partialnet.py`` layout (BasicStage at stages.{2i},
    PatchMerging at stages.{2i-1}, SRM's cfc1/bn under spatial_mixing.attn, iRPE's rpe_k.lookup_table_bias,
    avgpool_pre_head.1, head)."""
    official = {}
    for key, value in state.items():
        for i in range(4):
            if key.startswith(f"stages.{i}.downsample."):
                key = key.replace(f"stages.{i}.downsample.", f"stages.{2 * i - 1}.")
            elif key.startswith(f"stages.{i}.blocks."):
                key = key.replace(f"stages.{i}.blocks.", f"stages.{2 * i}.blocks.")
            else:
                continue
            break
        key = key.replace(".spatial_mixing.gate_conv.", ".spatial_mixing.attn.cfc1.")
        key = key.replace(".spatial_mixing.gate_norm.", ".spatial_mixing.attn.bn.")
        key = key.replace(".spatial_mixing.attn.rpe_bias", ".spatial_mixing.attn.rpe_k.lookup_table_bias")
        key = key.replace("conv_head.", "avgpool_pre_head.1.").replace("classifier.", "head.")
        official[key] = value
    return official


@pytest.mark.parametrize("lightning_prefix", [False, True])
def test_pretrained_loads_the_release_layout(tmp_path, lightning_prefix):
    source = _model(seed=4).float()
    official = _official_layout(source.state_dict())
    names = {
        "patch_embed.proj.weight", "patch_embed.norm.running_mean",
        "stages.0.blocks.0.spatial_mixing.partial_conv3.weight", "stages.0.blocks.0.spatial_mixing.attn.cfc1.weight",
        "stages.0.blocks.0.spatial_mixing.attn.bn.weight", "stages.0.blocks.0.spatial_mixing.norm.running_var",
        "stages.1.reduction.weight", "stages.1.norm.bias", "stages.2.blocks.1.mlp.4.conv_attn.weight",
        "stages.2.blocks.1.mlp.4.norm2.weight", "stages.6.blocks.0.spatial_mixing.attn.qkv.weight",
        "stages.6.blocks.0.spatial_mixing.attn.proj.bias", "stages.6.blocks.0.spatial_mixing.norm.weight",
        "stages.6.blocks.0.spatial_mixing.attn.rpe_k.lookup_table_bias", "avgpool_pre_head.1.weight", "head.bias",
    }
    assert names <= set(official), names - set(official)
    assert not any(k.split(".")[-2] in ("gate_conv", "gate_norm") or "rpe_bias" in k or "downsample" in k
                   for k in official)
    if lightning_prefix:
        official = {f"model.{k}": v for k, v in official.items()}
    assert checkpoint_filter_fn(official, source).keys() == source.state_dict().keys()
    loaded = load_pretrained_file("visattn_patnet_t1", official, tmp_path, **TINY).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=1e-5, rtol=0)


def test_pretrained_with_keys_that_do_not_match_lists_them(tmp_path):
    state = timm.create_model("visattn_patnet_t0", **TINY).state_dict()
    state["stages.0.blocks.0.extra"] = torch.zeros(1)
    del state["stages.3.blocks.0.spatial_mixing.attn.rpe_bias"]
    with pytest.raises(RuntimeError, match=r"(?s)Missing key.*stages\.3\.blocks\.0\.spatial_mixing\.attn\.rpe_bias"
                                           r".*Unexpected key.*stages\.0\.blocks\.0\.extra"):
        load_pretrained_file("visattn_patnet_t0", state, tmp_path, **TINY)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="embed_dims"):
        timm.create_model("visattn_patnet_t0", embed_dims=16)
    with pytest.raises(ValueError, match=r"num_heads must divide the 96 attended channels .* got 5"):
        timm.create_model("visattn_patnet_t0", num_heads=5, **TINY)
    with pytest.raises(ValueError, match=r"depths must be a non-empty sequence of positive ints, got \(1, 0\)"):
        PATNet(embed_dim=16, depths=(1, 0))
    with pytest.raises(ValueError, match="n_div must be an int >= 2 dividing embed_dim=18, got 4"):
        PATNet(embed_dim=18, depths=(1, 1))
    model = timm.create_model("visattn_patnet_t0", **TINY).eval()
    with pytest.raises(ValueError, match="at least 2 pixels"):
        model(torch.randn(1, 3, 4, 4))


def test_tiny_patnet_learns_digits():
    torch.manual_seed(0)
    model = timm.create_model("visattn_patnet_t1", num_classes=10, **TINY)
    losses = digits_loss_falls(model, 32)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_compiles_and_matches_eager():
    model = _model().float()
    compiled = torch.compile(model)
    x = torch.randn(2, 3, 35, 42)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
