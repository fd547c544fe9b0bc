"""NAT / DiNAT: the relative-position-bias neighborhood attention against naive references and NATTEN, the
backbones against timm's contract, the papers' parameter counts, and the official and Hugging Face checkpoint
layouts (HF's model run with naive ``natten2dqkrpb`` / ``natten2dav``, which current NATTEN no longer ships)."""

from __future__ import annotations

import math
import sys
import types

import pytest
import timm
import torch
from contract import check_timm_contract, count_params_meta, digits_loss_falls
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from visattn.masks import neighborhood_mask
from visattn.masks.evaluate import materialize
from visattn.models import dinat, nat
from visattn.models.nat_attention import NeighborhoodAttention2dRPB, neighborhood_attention_rpb
from visattn.ops import reference

TINY = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.0, kernel_size=3)
TINY_DILATIONS = ((2,), (1,), (1, 2), (1,))


def naive_rpb_attention(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor, shape: tuple[int, int], kernel: tuple[int, int],
                        dilation: tuple[int, int], scale: float | None = None) -> Tensor:
    """Dense reference: visattn's materialised neighborhood mask, the bias at (key - query) / dilation + k - 1."""
    h, w = shape
    allowed = materialize(neighborhood_mask(kernel_size=kernel, dilation=dilation), shape)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    iy = (torch.div(ys[None] - ys[:, None], dilation[0], rounding_mode="floor") + kernel[0] - 1)
    ix = (torch.div(xs[None] - xs[:, None], dilation[1], rounding_mode="floor") + kernel[1] - 1)
    bias = rpb[:, iy.clamp(0, 2 * kernel[0] - 2), ix.clamp(0, 2 * kernel[1] - 2)].masked_fill(~allowed, -math.inf)
    return reference.attention(q, k, v, mask=bias[None], scale=scale)


def _windows(length: int, kernel: int, dilation: int) -> Tensor:
    """NATTEN's window of every position: ``(length, kernel)`` key positions (2022 kernels' semantics)."""
    x = torch.arange(length)
    group, local = x % dilation, x // dilation
    group_len = length // dilation + (group < length % dilation).long()
    start = torch.minimum((local - kernel // 2).clamp(min=0), group_len - kernel)
    return (start[:, None] + torch.arange(kernel)) * dilation + group[:, None]


def natten2dqkrpb(query: Tensor, key: Tensor, rpb: Tensor, kernel_size: int, dilation: int) -> Tensor:
    """Naive stand-in for NATTEN's removed ``natten2dqkrpb``: ``(B, h, H, W, d) -> (B, h, H, W, k * k)`` scores
    (keys in row-major window order) plus ``rpb[h, key - query + k - 1]`` in dilated steps."""
    _, _, height, width, _ = query.shape
    wy, wx = _windows(height, kernel_size, dilation), _windows(width, kernel_size, dilation)
    keys = key[:, :, wy[:, None, :, None], wx[None, :, None, :]]  # B h H W k k d
    scores = torch.einsum("bhyxd,bhyxijd->bhyxij", query, keys)
    ry = torch.div(wy - torch.arange(height)[:, None], dilation, rounding_mode="floor") + kernel_size - 1
    rx = torch.div(wx - torch.arange(width)[:, None], dilation, rounding_mode="floor") + kernel_size - 1
    bias = rpb[:, ry[:, None, :, None], rx[None, :, None, :]]  # h H W k k
    return (scores + bias[None]).flatten(-2)


def natten2dav(attn: Tensor, value: Tensor, kernel_size: int, dilation: int) -> Tensor:
    """Naive stand-in for NATTEN's removed ``natten2dav``: weights ``(B, h, H, W, k * k)`` -> ``(B, h, H, W, d)``."""
    _, _, height, width, _ = value.shape
    wy, wx = _windows(height, kernel_size, dilation), _windows(width, kernel_size, dilation)
    values = value[:, :, wy[:, None, :, None], wx[None, :, None, :]].flatten(4, 5)
    return torch.einsum("bhyxn,bhyxnd->bhyxd", attn, values)


# ---------------------------------------------------------------------------------------------- the attention


@pytest.mark.parametrize("shape, kernel, dilation, tile", [
    ((7, 7), (3, 3), (1, 1), 2), ((9, 11), (3, 5), (1, 2), 3), ((13, 10), (5, 3), (2, 3), 4),
    ((16, 16), (7, 7), (2, 2), 7), ((8, 9), (7, 7), (1, 1), 7), ((23, 17), (3, 3), (4, 3), 2),
    ((12, 12), (3, 3), (4, 4), 1), ((56, 7), (7, 7), (8, 1), 7),
])
def test_rpb_attention_matches_naive_float64(shape, kernel, dilation, tile):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, shape[0] * shape[1], 4, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(3, 2 * kernel[0] - 1, 2 * kernel[1] - 1, dtype=torch.float64)
    out = neighborhood_attention_rpb(q, k, v, rpb, shape, kernel_size=kernel, dilation=dilation, tile=tile, scale=0.3)
    torch.testing.assert_close(out, naive_rpb_attention(q, k, v, rpb, shape, kernel, dilation, 0.3),
                               rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(kernel=st.sampled_from([1, 3, 5]), dilation=st.integers(1, 3), extra=st.tuples(st.integers(0, 7),
       st.integers(0, 7)), tile=st.integers(1, 9), seed=st.integers(0, 2 ** 16))
def test_rpb_attention_drawn_shapes(kernel, dilation, extra, tile, seed):
    shape = (kernel * dilation + extra[0], kernel * dilation + extra[1])
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, shape[0] * shape[1], 3, dtype=torch.float64, generator=gen) for _ in range(3))
    rpb = torch.randn(2, 2 * kernel - 1, 2 * kernel - 1, dtype=torch.float64, generator=gen)
    out = neighborhood_attention_rpb(q, k, v, rpb, shape, kernel_size=kernel, dilation=dilation, tile=tile)
    torch.testing.assert_close(out, naive_rpb_attention(q, k, v, rpb, shape, (kernel,) * 2, (dilation,) * 2),
                               rtol=1e-12, atol=1e-12)


def test_rpb_attention_against_old_natten_semantics():
    """The bias indexing of NATTEN's 2022 ``natten2dqkrpb`` (per-query windows, written independently)."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 11, 13, 4, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, 9, 9, dtype=torch.float64)
    attn = natten2dqkrpb(q * 0.5, k, rpb, 5, 2).softmax(-1)
    expected = natten2dav(attn, v, 5, 2).flatten(2, 3)
    out = neighborhood_attention_rpb(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3), rpb, (11, 13), kernel_size=5,
                                     dilation=2, scale=0.5)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_rpb_zero_matches_natten():
    """With a zero bias it is plain neighborhood attention: NATTEN's na2d (current release) as an outside oracle."""
    na2d = pytest.importorskip("natten.functional").na2d
    torch.manual_seed(0)
    for shape, kernel, dilation in (((15, 14), 7, 2), ((9, 10), 3, 3)):
        q, k, v = (torch.randn(2, shape[0], shape[1], 2, 8) for _ in range(3))
        expected = na2d(q, k, v, kernel_size=kernel, dilation=dilation)
        rpb = torch.zeros(2, 2 * kernel - 1, 2 * kernel - 1)
        out = neighborhood_attention_rpb(*(t.flatten(1, 2).transpose(1, 2) for t in (q, k, v)), rpb, shape,
                                         kernel_size=kernel, dilation=dilation)
        torch.testing.assert_close(out.transpose(1, 2).reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


def test_rpb_attention_gradcheck():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5 * 6, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rpb = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: neighborhood_attention_rpb(*a, (5, 6), kernel_size=3, dilation=(1, 2), tile=2), (q, k, v, rpb),
        fast_mode=True)


def test_rpb_attention_meta_and_errors():
    q = torch.empty(2, 3, 100, 8, device="meta")
    rpb = torch.empty(3, 5, 5, device="meta")
    assert neighborhood_attention_rpb(q, q, q, rpb, (10, 10), kernel_size=3, dilation=2).shape == q.shape
    real = torch.zeros(1, 1, 100, 4)
    with pytest.raises(ValueError, match="rpb must be"):
        neighborhood_attention_rpb(real, real, real, torch.zeros(1, 3, 3), (10, 10), kernel_size=3)
    with pytest.raises(ValueError, match="odd"):
        neighborhood_attention_rpb(real, real, real, torch.zeros(1, 3, 3), (10, 10), kernel_size=2)
    with pytest.raises(ValueError, match="kernel_size \\* dilation"):
        neighborhood_attention_rpb(real, real, real, torch.zeros(1, 5, 5), (10, 10), kernel_size=3, dilation=4)
    with pytest.raises(ValueError, match="shape"):
        neighborhood_attention_rpb(real, real, real, torch.zeros(1, 5, 5), (9, 10), kernel_size=3)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        NeighborhoodAttention2dRPB(8, 2, kernel_size=4)


def official_layer(layer: NeighborhoodAttention2dRPB, x: Tensor) -> Tensor:
    """The official NAT layer's computation, naively: pad to kernel * dilation, qkv, dense masked attention, crop."""
    height, width = x.shape[1:3]
    window = layer.kernel_size * layer.dilation
    x = torch.nn.functional.pad(x, (0, 0, 0, max(0, window - width), 0, max(0, window - height)))
    batch, hp, wp, dim = x.shape
    q, k, v = layer.qkv(x).reshape(batch, hp * wp, 3, layer.num_heads, -1).permute(2, 0, 3, 1, 4)
    kernel, dilation = (layer.kernel_size,) * 2, (layer.dilation,) * 2
    out = naive_rpb_attention(q, k, v, layer.rpb, (hp, wp), kernel, dilation, layer.scale)
    return layer.proj(out.transpose(1, 2).reshape(batch, hp, wp, dim)[:, :height, :width])


@pytest.mark.parametrize("hw, dilation", [((3, 5), 1), ((9, 4), 2), ((8, 8), 1), ((13, 6), 3)])
def test_layer_padding_rule(hw, dilation):
    torch.manual_seed(0)
    layer = NeighborhoodAttention2dRPB(12, 3, kernel_size=3, dilation=dilation).double()
    x = torch.randn(2, *hw, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), official_layer(layer, x), rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        cached = layer(x)
        torch.testing.assert_close(layer(x), cached)
        layer.rpb.add_(1.0)  # an in-place update invalidates the cached bias
        torch.testing.assert_close(layer(x), official_layer(layer, x), rtol=1e-10, atol=1e-10)


def test_layer_plan_made_in_inference_mode_serves_training():
    layer = NeighborhoodAttention2dRPB(8, 2, kernel_size=3)
    x = torch.randn(1, 6, 6, 8)
    with torch.inference_mode():
        layer(x)
    layer(x).sum().backward()
    assert layer.rpb.grad is not None and layer.rpb.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- the models


PAPER_PARAMS_M = {"nat_mini": 20, "nat_tiny": 28, "nat_small": 51, "nat_base": 90, "dinat_mini": 20,
                  "dinat_tiny": 28, "dinat_small": 51, "dinat_base": 90, "dinat_large": 200, "dinat_large_384": 200,
                  "dinat_s_tiny": 28, "dinat_s_small": 50, "dinat_s_base": 88, "dinat_s_large": 197,
                  "dinat_s_large_384": 197, "nat_isotropic_small": 22, "dinat_isotropic_small": 22,
                  "nat_isotropic_base": 86, "dinat_isotropic_base": 86}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_parameter_counts_match_papers(name):
    """The tables print whole millions, rounded or cut (DiNAT-L: 200.9M printed as 200M)."""
    count = count_params_meta(f"visattn_{name}") / 1e6
    assert PAPER_PARAMS_M[name] in (math.floor(count), round(count)), count


@pytest.mark.parametrize("name, extra", [("visattn_nat_mini", {}),
                                         ("visattn_dinat_tiny", dict(dilations=TINY_DILATIONS)),
                                         ("visattn_dinat_s_tiny", dict(dilations=TINY_DILATIONS))])
def test_timm_contract(name, extra):
    check_timm_contract(name, (40, 36), pass_img_size=False, **TINY, **extra)


def test_isotropic_contract_and_official_keys():
    """``classification/isotropic.py``: ``patch_embed`` (16x16 conv, ``norm``), ``layers`` = Sequential of
    ``NATransformerLayer`` (``norm1``, ``attn`` with ``rpb``, ``norm2``, ``mlp``), ``norm``, ``head``."""
    kwargs = dict(embed_dim=16, depth=3, num_heads=2, kernel_size=3, drop_path_rate=0.0)
    model = check_timm_contract("visattn_dinat_isotropic_small", (70, 50), pass_img_size=False, **kwargs)
    assert [b.attn.dilation for b in model.layers] == [1, 2, 1]
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias",
            "norm.weight", "norm.bias", "head.weight", "head.bias"]
    keys += [f"layers.{i}.{n}" for i in range(3) for n in (
        "norm1.weight", "norm1.bias", "attn.rpb", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
        "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
        "mlp.fc2.bias")]
    assert sorted(model.state_dict()) == sorted(keys)
    with pytest.raises(TypeError, match="depths"):
        timm.create_model("visattn_nat_isotropic_small", depths=(1, 1))


def test_dynamic_image_sizes_and_padding():
    torch.manual_seed(0)
    model = timm.create_model("visattn_dinat_mini", **TINY, dilations=TINY_DILATIONS, num_classes=3).eval()
    with torch.no_grad():
        for hw in ((1, 1), (33, 47), (224, 96)):
            assert model(torch.randn(1, 3, *hw)).shape == (1, 3)
            maps = model.forward_intermediates(torch.randn(1, 3, *hw), intermediates_only=True)
            sides = [hw]
            for _ in range(4):
                sides.append(tuple(-(-s // (4 if len(sides) == 1 else 2)) for s in sides[-1]))
            assert [tuple(m.shape[-2:]) for m in maps] == sides[1:]


def test_unknown_kwargs_and_bad_configs():
    with pytest.raises(TypeError, match="window_size"):
        timm.create_model("visattn_nat_mini", window_size=7)
    with pytest.raises(ValueError, match="dilations"):
        timm.create_model("visattn_nat_mini", **TINY, dilations=((1,), (1,)))
    with pytest.raises(ValueError, match="kernel_size"):
        timm.create_model("visattn_nat_mini", **dict(TINY, kernel_size=6))


def test_digits_training_loss_falls():
    torch.manual_seed(0)
    model = timm.create_model("visattn_dinat_mini", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                              kernel_size=3, dilations=((2,), (1,), (1,), (1,)), num_classes=10, drop_path_rate=0.0)
    digits_loss_falls(model, 24, lr=3e-3)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = timm.create_model("visattn_dinat_mini", **TINY, dilations=TINY_DILATIONS, num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- checkpoints


def official_state_dict_keys(depths, layer_scale: bool, num_classes: int) -> list[str]:
    """Key names of SHI-Labs' ``classification/nat.py`` (``NAT`` -> ``ConvTokenizer.proj`` Sequential and
    ``norm``; ``levels`` of ``NATBlock`` with ``blocks`` of ``NATLayer``: ``norm1``, ``attn`` = NATTEN's
    ``NeighborhoodAttention2D`` (``qkv``, ``rpb``, ``proj``), ``norm2``, ``mlp`` (``fc1``, ``fc2``), ``gamma1``,
    ``gamma2`` with layer scale; ``downsample`` = ``ConvDownsampler`` (``reduction`` without bias, ``norm``);
    final ``norm`` and ``head``), written out from that source, not from our model."""
    keys = [f"patch_embed.proj.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
    keys += ["patch_embed.norm.weight", "patch_embed.norm.bias"]
    for i, depth in enumerate(depths):
        for j in range(depth):
            block = f"levels.{i}.blocks.{j}."
            keys += [block + n for n in ("norm1.weight", "norm1.bias", "attn.rpb", "attn.qkv.weight", "attn.qkv.bias",
                                         "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                                         "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")]
            if layer_scale:
                keys += [block + "gamma1", block + "gamma2"]
        if i < len(depths) - 1:
            keys += [f"levels.{i}.downsample.reduction.weight", f"levels.{i}.downsample.norm.weight",
                     f"levels.{i}.downsample.norm.bias"]
    keys += ["norm.weight", "norm.bias"]
    if num_classes:
        keys += ["head.weight", "head.bias"]
    return keys


@pytest.mark.parametrize("layer_scale", [0, 1e-5])
def test_official_checkpoint_loads_through_timm(tmp_path, layer_scale):
    kwargs = dict(TINY, layer_scale=layer_scale)  # 1000 classes, as the checkpoints (else timm drops the head)
    source = timm.create_model("visattn_nat_small", **kwargs)
    names = official_state_dict_keys(TINY["depths"], bool(layer_scale), 1000)
    assert sorted(source.state_dict()) == sorted(names)
    torch.manual_seed(3)
    checkpoint = {n: torch.randn_like(t) for n, t in source.state_dict().items()}
    path = tmp_path / "nat_small.pth"
    torch.save(checkpoint, path)
    model = timm.create_model("visattn_nat_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **kwargs).eval()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, checkpoint[name], rtol=0, atol=0)
    source.load_state_dict(checkpoint)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source.eval()(x), rtol=0, atol=0)


def test_official_dinat_s_checkpoint_loads():
    """SHI-Labs' ``classification/dinats.py``: ``patch_embed.proj`` (4x4 conv) and ``norm``; ``layers`` of
    ``BasicLayer`` with ``blocks`` of ``NATransformerLayer`` (``norm1``, ``attn``, ``norm2``, ``mlp``, no layer
    scale) and ``downsample`` = ``PatchMerging`` (``norm`` over 4C, ``reduction`` without bias); ``norm``, ``head``."""
    model = timm.create_model("visattn_dinat_s_tiny", **TINY, dilations=TINY_DILATIONS).eval()
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"]
    for i, depth in enumerate(TINY["depths"]):
        for j in range(depth):
            keys += [f"layers.{i}.blocks.{j}.{n}" for n in (
                "norm1.weight", "norm1.bias", "attn.rpb", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                "mlp.fc2.bias")]
        if i < len(TINY["depths"]) - 1:
            keys += [f"layers.{i}.downsample.{n}" for n in ("norm.weight", "norm.bias", "reduction.weight")]
    keys += ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    ours = model.state_dict()
    torch.manual_seed(0)
    official = {k: torch.randn_like(ours["levels." + k[len("layers."):] if k.startswith("layers.") else k])
                for k in keys}
    dinat.load_checkpoint(model, official)
    for key, value in official.items():
        torch.testing.assert_close(model.state_dict()[key.replace("layers.", "levels.", 1)], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing keys"):
        dinat.load_checkpoint(model, {k: v for k, v in official.items() if "rpb" not in k})


def test_patch_merging_order():
    """Swin's order: ``x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]``; odd sides padded with zeros."""
    merge = dinat.PatchMerging(1)
    with torch.no_grad():
        merge.norm.weight.fill_(1.0)
        merge.norm.bias.zero_()
        merge.reduction.weight.copy_(torch.tensor([[1.0, 10.0, 100.0, 1000.0], [0.0, 0.0, 0.0, 0.0]]))
        merge.norm = torch.nn.Identity()
        x = torch.arange(9.0).reshape(1, 3, 3, 1)
        out = merge(x)[..., 0]
    assert out.shape == (1, 2, 2)
    assert out[0, 0, 0] == 0 + 10 * 3 + 100 * 1 + 1000 * 4
    assert out[0, 1, 1] == 8


def test_mismatched_checkpoint_lists_keys():
    model = timm.create_model("visattn_nat_mini", **TINY, num_classes=5)
    state = model.state_dict()
    state["levels.0.blocks.0.attn.relative_bias"] = state.pop("levels.0.blocks.0.attn.rpb")
    state["head.weight"] = torch.zeros(7, 128)
    with pytest.raises(ValueError, match=r"missing keys \['levels.0.blocks.0.attn.rpb'\].*unexpected keys "
                                         r"\['levels.0.blocks.0.attn.relative_bias'\].*head.weight"):
        nat.load_checkpoint(model, state)


def _hf_attention_forward_4x(self, hidden_states: Tensor, output_attentions: bool = False) -> tuple[Tensor, ...]:
    """transformers 4.x's ``NeighborhoodAttention.forward`` (the one the HF checkpoints ran with): heads moved to
    dim 1 by ``permute(0, 3, 1, 2, 4)``. transformers 5.25's refactor ``.transpose(1, 2)``s ``(B, H, W, heads, d)``
    into ``(B, W, H, heads, d)`` before ``natten2dqkrpb`` -- never run, as that kernel no longer imports."""
    shape = (*hidden_states.shape[:-1], self.num_attention_heads, self.attention_head_size)
    q, k, v = (layer(hidden_states).view(shape).permute(0, 3, 1, 2, 4) for layer in (self.query, self.key, self.value))
    probs = natten2dqkrpb(q / math.sqrt(self.attention_head_size), k, self.rpb, self.kernel_size, self.dilation)
    probs = self.dropout(probs.softmax(dim=-1))
    context = natten2dav(probs, v, self.kernel_size, self.dilation).permute(0, 2, 3, 1, 4)
    context = context.reshape(*context.shape[:-2], self.all_head_size)
    return (context, probs) if output_attentions else (context,)


@pytest.fixture
def hf_dinat(monkeypatch):
    """transformers' DiNAT classes, importable with the naive ``natten2dqkrpb`` / ``natten2dav`` above."""
    transformers = pytest.importorskip("transformers")
    functional = pytest.importorskip("natten.functional")
    monkeypatch.setattr(functional, "natten2dqkrpb", natten2dqkrpb, raising=False)
    monkeypatch.setattr(functional, "natten2dav", natten2dav, raising=False)
    for name in [n for n in sys.modules if n.startswith("transformers.models.dinat")]:
        monkeypatch.delitem(sys.modules, name)
    from transformers.models.dinat import modeling_dinat

    monkeypatch.setattr(modeling_dinat.NeighborhoodAttention, "forward", _hf_attention_forward_4x)
    return types.SimpleNamespace(config=transformers.DinatConfig, classifier=modeling_dinat.DinatForImageClassification,
                                 model=modeling_dinat.DinatModel)


@pytest.mark.parametrize("layer_scale", [0.0, 0.5])
def test_hf_dinat_checkpoint_gives_the_same_logits(hf_dinat, layer_scale):
    config = hf_dinat.config(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], kernel_size=3,
                             dilations=[[2], [1], [1, 2], [1]], mlp_ratio=2.0, num_labels=5, drop_path_rate=0.0,
                             layer_scale_init_value=layer_scale)
    torch.manual_seed(0)
    source = hf_dinat.classifier(config).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model = timm.create_model("visattn_dinat_mini", embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
                              kernel_size=3, dilations=((2,), (1,), (1, 2), (1,)), mlp_ratio=2.0, num_classes=5,
                              layer_scale=layer_scale).eval()
    nat.load_checkpoint(model, source.state_dict())
    for hw in ((64, 64), (40, 72)):
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            torch.testing.assert_close(model(x), source(pixel_values=x).logits, rtol=1e-4, atol=1e-4)
    headless = {k.replace("dinat.", "", 1): v for k, v in source.state_dict().items() if k.startswith("dinat.")}
    assert sorted(headless) == sorted(hf_dinat.model(config, add_pooling_layer=True).state_dict())
    backbone = timm.create_model("visattn_dinat_mini", embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
                                 kernel_size=3, dilations=((2,), (1,), (1, 2), (1,)), mlp_ratio=2.0, num_classes=0,
                                 layer_scale=layer_scale).eval()
    nat.load_checkpoint(backbone, headless)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), source.dinat(pixel_values=x).pooler_output, rtol=1e-4, atol=1e-4)


def test_hf_nat_prefix_converts_like_dinat():
    """transformers' removed ``NatForImageClassification`` had DiNAT's module names under the prefix ``nat``."""
    model = timm.create_model("visattn_nat_mini", **TINY, num_classes=5)
    ours = model.state_dict()
    hf = {}
    for i, depth in enumerate(TINY["depths"]):
        for j in range(depth):
            src, dst = f"nat.encoder.levels.{i}.layers.{j}.", f"levels.{i}.blocks.{j}."
            q, k, v = ours[dst + "attn.qkv.weight"].chunk(3)
            qb, kb, vb = ours[dst + "attn.qkv.bias"].chunk(3)
            hf.update({src + "attention.self.query.weight": q, src + "attention.self.key.weight": k,
                       src + "attention.self.value.weight": v, src + "attention.self.query.bias": qb,
                       src + "attention.self.key.bias": kb, src + "attention.self.value.bias": vb,
                       src + "attention.self.rpb": ours[dst + "attn.rpb"]})
            for a, b in (("layernorm_before", "norm1"), ("attention.output.dense", "attn.proj"),
                         ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2")):
                for p in ("weight", "bias"):
                    hf[f"{src}{a}.{p}"] = ours[f"{dst}{b}.{p}"]
        if i < len(TINY["depths"]) - 1:
            for p in ("reduction.weight", "norm.weight", "norm.bias"):
                hf[f"nat.encoder.levels.{i}.downsample.{p}"] = ours[f"levels.{i}.downsample.{p}"]
    for i in (0, 1):
        for p in ("weight", "bias"):
            hf[f"nat.embeddings.patch_embeddings.projection.{i}.{p}"] = ours[f"patch_embed.proj.{i}.{p}"]
    for p in ("weight", "bias"):
        hf[f"nat.embeddings.norm.{p}"] = ours[f"patch_embed.norm.{p}"]
        hf[f"nat.layernorm.{p}"] = ours[f"norm.{p}"]
        hf[f"classifier.{p}"] = ours[f"head.{p}"]
    converted = nat.checkpoint_filter_fn(hf, model)
    assert converted.keys() == ours.keys()
    for name in ours:
        torch.testing.assert_close(converted[name], ours[name], rtol=0, atol=0)
