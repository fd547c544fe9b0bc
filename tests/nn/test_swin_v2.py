"""Swin-V2 window attention: timm parity, naive float64 formulas, gradients, bfloat16, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.swin_transformer_v2 import SwinTransformerV2Block
from timm.models.swin_transformer_v2 import WindowAttention as TimmWindowAttention

import visattn
from visattn.nn import Attention, CosineWindowMixer, ShiftedWindowAttentionV2, WindowAttentionV2
from visattn.nn.swin_v2 import shifted_window_mask

FP32 = {"atol": 1e-5, "rtol": 1e-5}
FP64 = {"atol": 1e-10, "rtol": 1e-10}


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights (so biases, logit scales and the position MLP all matter), in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return module.eval()


def log_coord(delta: torch.Tensor, norm: int) -> torch.Tensor:
    """Swin-V2 log-spaced coordinate of an integer offset, written from the paper's formula."""
    x = delta.double() * 8.0 / max(norm - 1, 1)
    return torch.sign(x) * torch.log2(1.0 + x.abs()) / 3.0


def naive_qkv(module: WindowAttentionV2, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v ``(..., heads, N, d)`` straight from the weights: k has no bias."""
    c, h = module.dim, module.num_heads
    w = module.qkv.weight
    zero = torch.zeros(c, dtype=x.dtype)
    qb, vb = (module.q_bias, module.v_bias) if module.q_bias is not None else (zero, zero)
    q, k, v = x @ w[:c].T + qb, x @ w[c:2 * c].T, x @ w[2 * c:].T + vb
    return tuple(t.reshape(*t.shape[:-1], h, c // h).transpose(-3, -2) for t in (q, k, v))


def naive_bias(module: WindowAttentionV2, ry: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
    """``16 sigmoid(MLP(log coords of (ry_i - ry_j, rx_i - rx_j)))`` per pair, ``(heads, N, N)``."""
    pwh, pww = module.pretrained_window_size
    nh, nw = (pwh, pww) if pwh > 0 else module.window_size
    coords = torch.stack([log_coord(ry[:, None] - ry[None, :], nh), log_coord(rx[:, None] - rx[None, :], nw)], -1)
    return (16 * torch.sigmoid(module.cpb_mlp(coords.to(module.qkv.weight.dtype)))).permute(2, 0, 1)


def naive_cosine_softmax(q, k, v, logit_scale, logits_extra):
    """Cosine similarity with a zero vector is 0 (norms floored at 1e-12 as in Swin-V2's F.normalize): padded
    tokens have k = 0, since k has no bias."""
    q_hat = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = q_hat @ (k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)).transpose(-2, -1)
    logits = cos * torch.exp(torch.clamp(logit_scale, max=math.log(100.0))) + logits_extra
    return torch.softmax(logits, dim=-1) @ v


def naive_window_attention(module: WindowAttentionV2, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Float64 formula of one Swin-V2 window attention call, pair by pair coordinates."""
    wh, ww = module.window_size
    idx = torch.arange(wh * ww)
    q, k, v = naive_qkv(module, x)
    extra = naive_bias(module, idx // ww, idx % ww)
    if mask is not None:
        extra = extra + mask.repeat(x.shape[0] // mask.shape[0], 1, 1)[:, None]
    out = naive_cosine_softmax(q, k, v, module.logit_scale, extra)
    return module.proj(out.transpose(-3, -2).reshape(x.shape))


def region(pos: torch.Tensor, length: int, window: int, shift: int) -> torch.Tensor:
    """Shift region of a padded coordinate: last ``shift`` -> 2, the ``window - shift`` before -> 1, else 0."""
    if shift == 0:
        return torch.zeros_like(pos)
    return torch.where(pos < length - window, 0, torch.where(pos < length - shift, 1, 2))


def naive_shifted(module: ShiftedWindowAttentionV2, x: torch.Tensor) -> torch.Tensor:
    """Dense float64 formula over the whole rolled, padded map: windows by coordinate division, -100 across
    shift regions, position bias from coordinate differences."""
    b, h, w, c = x.shape
    (wh, ww), (sh, sw) = module.window_size, module.shift_size
    hp, wp = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
    rolled = F.pad(torch.roll(x, (-sh, -sw), (1, 2)), (0, 0, 0, wp - w, 0, hp - h)).reshape(b, hp * wp, c)
    ys, xs = torch.arange(hp).repeat_interleave(wp), torch.arange(wp).repeat(hp)
    same_window = ((ys[:, None] // wh) == (ys[None, :] // wh)) & ((xs[:, None] // ww) == (xs[None, :] // ww))
    reg = region(ys, hp, wh, sh) * 3 + region(xs, wp, ww, sw)
    extra = naive_bias(module.attn, ys, xs) + torch.where(reg[:, None] != reg[None, :], -100.0, 0.0).double()
    extra = extra.masked_fill(~same_window, float("-inf"))
    q, k, v = naive_qkv(module.attn, rolled)
    out = naive_cosine_softmax(q, k, v, module.attn.logit_scale, extra)
    out = module.attn.proj(out.transpose(-3, -2).reshape(b, hp * wp, c)).reshape(b, hp, wp, c)
    return torch.roll(out[:, :h, :w], (sh, sw), (1, 2))


# ---------------------------------------------------------------- timm parity


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_state_dict_loads_both_ways(qkv_bias):
    ours = WindowAttentionV2(16, (3, 4), 2, qkv_bias=qkv_bias)
    timm_attn = TimmWindowAttention(16, (3, 4), 2, qkv_bias=qkv_bias)
    assert set(ours.state_dict()) == set(timm_attn.state_dict())
    ours.load_state_dict(timm_attn.state_dict(), strict=True)
    timm_attn.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize(
    ("window_size", "pretrained", "qkv_bias", "masked"),
    [((4, 5), (0, 0), True, False), ((3, 3), (0, 0), False, True), ((1, 4), (0, 0), True, False),
     ((4, 4), (6, 6), True, True), ((7, 2), (3, 5), True, False)],
)
def test_window_attention_matches_timm(window_size, pretrained, qkv_bias, masked):
    timm_attn = randomize(TimmWindowAttention(24, window_size, 3, qkv_bias=qkv_bias,
                                              pretrained_window_size=pretrained))
    ours = WindowAttentionV2(24, window_size, 3, qkv_bias=qkv_bias, pretrained_window_size=pretrained).eval()
    ours.load_state_dict(timm_attn.state_dict())
    n = window_size[0] * window_size[1]
    x = torch.randn(6, n, 24)
    mask = None
    if masked:
        mask = torch.where(torch.rand(3, n, n) < 0.3, -100.0, 0.0)
    torch.testing.assert_close(ours(x, mask), timm_attn(x, mask), **FP32)


@pytest.mark.parametrize(
    ("resolution", "window", "shift", "always_partition"),
    [((8, 8), 4, 0, False), ((8, 8), 4, 2, False), ((10, 13), 4, 2, False), ((9, 7), (3, 4), (1, 2), False),
     ((5, 9), 7, 3, False), ((6, 11), 4, (0, 2), True), ((6, 6), 8, 3, True), ((7, 10), 5, 0, False)],
)
def test_shifted_window_attention_matches_timm_block(resolution, window, shift, always_partition):
    block = SwinTransformerV2Block(24, resolution, 3, window_size=window, shift_size=shift,
                                   always_partition=always_partition)
    randomize(block.attn)
    ours = ShiftedWindowAttentionV2(24, resolution, window, shift, 3, always_partition=always_partition).eval()
    ours.attn.load_state_dict(block.attn.state_dict())
    assert (ours.window_size, ours.shift_size) == (tuple(block.window_size), tuple(block.shift_size))
    x = torch.randn(2, *resolution, 24)
    torch.testing.assert_close(ours(x), block._attn(x), **FP32)


def test_other_map_sizes_match_timm_dynamic_mask():
    """A map of another size than ``input_resolution`` gets its own shift mask, like timm's ``dynamic_mask``."""
    block = SwinTransformerV2Block(16, (8, 8), 2, window_size=4, shift_size=2, dynamic_mask=True)
    randomize(block.attn)
    ours = ShiftedWindowAttentionV2(16, (8, 8), 4, 2, 2).eval()
    ours.attn.load_state_dict(block.attn.state_dict())
    for size in ((6, 11), (8, 8), (12, 4)):
        x = torch.randn(2, *size, 16)
        torch.testing.assert_close(ours(x), block._attn(x), **FP32)
        with torch.no_grad():
            torch.testing.assert_close(ours.double()(x.double()), naive_shifted(ours, x.double()), **FP64)
        ours.float()


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 11), w=st.integers(1, 11), wh=st.integers(1, 5), ww=st.integers(1, 5),
       data=st.data(), always_partition=st.booleans())
def test_shift_mask_matches_timm(h, w, wh, ww, data, always_partition):
    shift = (data.draw(st.integers(0, wh - 1)), data.draw(st.integers(0, ww - 1)))
    block = SwinTransformerV2Block(8, (h, w), 2, window_size=(wh, ww), shift_size=shift,
                                   always_partition=always_partition)
    ours = ShiftedWindowAttentionV2(8, (h, w), (wh, ww), shift, 2, always_partition=always_partition)
    size = (math.ceil(h / ours.window_size[0]) * ours.window_size[0],
            math.ceil(w / ours.window_size[1]) * ours.window_size[1])
    if block.attn_mask is None:
        assert ours.attn_mask is None and ours.shift_mask(size) is None
    else:
        torch.testing.assert_close(ours.attn_mask, block.attn_mask, atol=0, rtol=0)
        assert torch.equal(ours.shift_mask(size), shifted_window_mask(size, ours.window_size, ours.shift_size))


# ---------------------------------------------------------------- float64 definitions


@settings(max_examples=25, deadline=None)
@given(wh=st.integers(1, 5), ww=st.integers(1, 5), heads=st.integers(1, 3), windows=st.integers(1, 3),
       pretrained=st.sampled_from([(0, 0), (4, 6)]), masked=st.booleans())
def test_window_attention_equals_naive_float64(wh, ww, heads, windows, pretrained, masked):
    module = randomize(WindowAttentionV2(4 * heads, (wh, ww), heads, pretrained_window_size=pretrained).double())
    n = wh * ww
    x = torch.randn(2 * windows, n, 4 * heads, dtype=torch.float64)
    mask = torch.where(torch.rand(windows, n, n) < 0.3, -100.0, 0.0).double() if masked else None
    with torch.no_grad():
        torch.testing.assert_close(module(x, mask), naive_window_attention(module, x, mask), **FP64)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), wh=st.integers(1, 4), ww=st.integers(1, 4), data=st.data(),
       always_partition=st.booleans())
def test_shifted_window_attention_equals_naive_float64(h, w, wh, ww, data, always_partition):
    shift = (data.draw(st.integers(0, wh - 1)), data.draw(st.integers(0, ww - 1)))
    module = ShiftedWindowAttentionV2(8, (h, w), (wh, ww), shift, 2, always_partition=always_partition)
    randomize(module.double())
    x = torch.randn(2, h, w, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), naive_shifted(module, x), **FP64)


def test_logit_scale_is_clamped_at_log_100():
    module = randomize(WindowAttentionV2(8, 3, 2).double())
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        module.logit_scale.fill_(10.0)
        high = module(x)
        module.logit_scale.fill_(math.log(100.0))
        torch.testing.assert_close(high, module(x), **FP64)
        torch.testing.assert_close(high, naive_window_attention(module, x, None), **FP64)


# ---------------------------------------------------------------- the "swin_v2" mixer


def naive_mixer(q, k, v, logit_scale, shape, window, prefix):
    """Dense float64 cosine attention: grid tokens see their window, prefix tokens see and are seen by all."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, len(shape))
    same = (coords[:, None] // torch.tensor(window) == coords[None, :] // torch.tensor(window)).all(-1)
    n = prefix + coords.shape[0]
    allowed = torch.ones(n, n, dtype=torch.bool)
    allowed[prefix:, prefix:] = same
    extra = torch.zeros(n, n, dtype=q.dtype).masked_fill(~allowed, float("-inf"))
    return naive_cosine_softmax(q, k, v, logit_scale, extra)


def test_mixer_is_registered_with_its_paper():
    spec = visattn.registry.get_mixer_spec("swin_v2")
    assert spec.paper.arxiv == "2111.09883"
    assert "s2lic" in visattn.papers.PAPERS
    assert isinstance(visattn.create_mixer("swin_v2", num_heads=2), CosineWindowMixer)


@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from([(6, 4), (3, 9), (10,), (2, 4, 6)]), heads=st.integers(1, 3),
       prefix=st.integers(0, 2), backend=st.sampled_from(["auto", "dense", "reference"]), data=st.data())
def test_mixer_equals_naive_float64(shape, heads, prefix, backend, data):
    window = tuple(data.draw(st.sampled_from([d for d in range(1, s + 1) if s % d == 0])) for s in shape)
    mixer = visattn.create_mixer("swin_v2", num_heads=heads, window_size=window, backend=backend).double()
    with torch.no_grad():
        mixer.logit_scale.copy_(torch.randn(heads, 1, 1, dtype=torch.float64))
    n = prefix + math.prod(shape)
    q, k, v = (torch.randn(2, heads, n, 5, dtype=torch.float64) for _ in range(3))
    with torch.no_grad():
        expected = naive_mixer(q, k, v, mixer.logit_scale, shape, window, prefix)
        torch.testing.assert_close(mixer(q, k, v, shape), expected, **FP64)
        weights = mixer.attention_weights(q, k, shape)
        torch.testing.assert_close(weights @ v, expected, **FP64)


def test_mixer_without_window_is_global_cosine_attention():
    mixer = CosineWindowMixer(2, window_size=None).double()
    q, k, v = (torch.randn(1, 2, 13, 4, dtype=torch.float64) for _ in range(3))
    with torch.no_grad():
        expected = naive_cosine_softmax(q, k, v, mixer.logit_scale, torch.zeros(13, 13, dtype=torch.float64))
        torch.testing.assert_close(mixer(q, k, v, (13,)), expected, **FP64)


def test_mixer_in_attention_module_matches_window_attention_without_bias():
    """One window covering the grid: Attention(mixer=swin_v2) == WindowAttentionV2 whose position MLP outputs 0,
    i.e. a constant bias of 16 sigmoid(0) = 8 that the softmax ignores."""
    module = randomize(WindowAttentionV2(12, (3, 4), 3, qkv_bias=False).double())
    mixer = CosineWindowMixer(3, window_size=(3, 4)).double()
    attn = Attention(12, 3, mixer=mixer).double()
    with torch.no_grad():
        mixer.logit_scale.copy_(module.logit_scale)
        attn.qkv.weight.copy_(module.qkv.weight)
        attn.proj.load_state_dict(module.proj.state_dict())
        module.cpb_mlp[2].weight.zero_()
        x = torch.randn(2, 12, 12, dtype=torch.float64)
        torch.testing.assert_close(attn(x, shape=(3, 4)), module(x), **FP64)


# ---------------------------------------------------------------- gradients


def test_window_attention_gradcheck():
    module = randomize(WindowAttentionV2(4, (2, 3), 2).double())
    x = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    scale = module.logit_scale.detach().clone().requires_grad_(True)
    mask = torch.where(torch.rand(2, 6, 6) < 0.3, -100.0, 0.0).double()

    def run(x, scale):
        return torch.func.functional_call(module, {"logit_scale": scale}, (x, mask))

    assert torch.autograd.gradcheck(run, (x, scale))


def test_shifted_window_attention_gradcheck():
    module = randomize(ShiftedWindowAttentionV2(4, (3, 5), 2, 1, 2).double())
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


def test_mixer_gradcheck():
    mixer = CosineWindowMixer(2, window_size=(1, 3)).double()
    q, k, v = (torch.randn(1, 2, 7, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    scale = torch.randn(2, 1, 1, dtype=torch.float64, requires_grad=True)

    def run(q, k, v, scale):
        return torch.func.functional_call(mixer, {"logit_scale": scale}, (q, k, v, (2, 3)))

    assert torch.autograd.gradcheck(run, (q, k, v, scale))


# ---------------------------------------------------------------- bfloat16


def test_bfloat16_within_stated_tolerance():
    """bfloat16 (8-bit mantissa) agrees with float32 to 5% of the output's largest magnitude."""
    module = randomize(ShiftedWindowAttentionV2(32, (10, 9), 4, 2, 4))
    x = torch.randn(2, 10, 9, 32)
    with torch.no_grad():
        expected = module(x)
        got = module.to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()
    mixer = CosineWindowMixer(2, window_size=3)
    q, k, v = (torch.randn(1, 2, 36, 8) for _ in range(3))
    with torch.no_grad():
        expected = mixer(q, k, v, (6, 6))
        got = mixer.to(torch.bfloat16)(q.bfloat16(), k.bfloat16(), v.bfloat16(), (6, 6)).float()
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()


# ---------------------------------------------------------------- bad input


def test_bad_arguments_raise_naming_the_argument():
    with pytest.raises(ValueError, match="dim must be divisible by num_heads"):
        WindowAttentionV2(10, 4, 3)
    with pytest.raises(ValueError, match="window_size"):
        WindowAttentionV2(8, 0, 2)
    with pytest.raises(ValueError, match="pretrained_window_size"):
        WindowAttentionV2(8, 4, 2, pretrained_window_size=-1)
    with pytest.raises(ValueError, match="shift_size must be smaller than window_size"):
        ShiftedWindowAttentionV2(8, (8, 8), 4, 4, 2)
    with pytest.raises(ValueError, match=r"window_size=\(4, 4\) must divide input_resolution=\(6, 8\)"):
        ShiftedWindowAttentionV2(8, (6, 8), 4, 2, 2, padding=False)
    with pytest.raises(ValueError, match="must divide input_resolution"):
        ShiftedWindowAttentionV2(8, (3, 3), 4, 0, 2, always_partition=True, padding=False)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        CosineWindowMixer(0)


def test_bad_inputs_raise_naming_the_input():
    module = WindowAttentionV2(8, (2, 3), 2)
    with pytest.raises(ValueError, match=r"x must be shaped \(num_windows \* B, 6, 8\)"):
        module(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="mask must be shaped"):
        module(torch.randn(4, 6, 8), torch.zeros(3, 6, 6))
    shifted = ShiftedWindowAttentionV2(8, (4, 6), (2, 3), 1, 2, padding=False)
    with pytest.raises(ValueError, match=r"x must be shaped \(B, H, W, C\)"):
        shifted(torch.randn(2, 24, 8))
    with pytest.raises(ValueError, match=r"must divide x's \(H, W\)=\(5, 6\)"):
        shifted(torch.randn(1, 5, 6, 8))
    mixer = CosineWindowMixer(2, window_size=4)
    q = torch.randn(1, 2, 9, 4)
    with pytest.raises(ValueError, match="window_size must divide the axis length"):
        mixer(q, q, q, (3, 3))
    with pytest.raises(ValueError, match=r"q must be shaped \(B, heads=2"):
        mixer(torch.randn(1, 3, 16, 4), torch.randn(1, 3, 16, 4), torch.randn(1, 3, 16, 4), (4, 4))
