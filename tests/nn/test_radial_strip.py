"""Radial strip attention (RST): strip masks, the cos/sin position terms, the module end to end, DRE, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn import create_mixer, get_mixer_spec
from visattn.nn import Attention, DynamicRadialEmbedding, RadialStripAttention, RadialStripMixer, convert_mdt_state_dict
from visattn.ops import masked_attention
from visattn.transforms import polar_inverse, polar_resample


def position_term(a, b, strip, d, rings, angles, theta_max):
    """B(d) per head, written from the paper's formulas (d = query minus key position along the strip)."""
    if strip == "ring":
        i = d % angles
        return a[:, i] * math.cos(2 * math.pi * d / angles) + b[:, i] * math.sin(2 * math.pi * d / angles)
    i = d + rings - 1
    return a[:, i] * math.cos(d * theta_max / rings) + b[:, i] * math.sin(d * theta_max / rings)


def naive_strip_attention(q, k, v, a, b, strip, rings, angles, theta_max, scale=None):
    """Per-strip dense softmax with the position term, one strip and one query at a time."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros_like(v)
    strips = [[m * angles + n for n in range(angles)] for m in range(rings)] if strip == "ring" else \
        [[m * angles + n for m in range(rings)] for n in range(angles)]
    for tokens in strips:
        for pi, i in enumerate(tokens):
            logits = torch.stack([(q[:, :, i] * k[:, :, j]).sum(-1) * scale
                                  + position_term(a, b, strip, pi - pj, rings, angles, theta_max)
                                  for pj, j in enumerate(tokens)], dim=-1)
            weights = torch.softmax(logits, dim=-1)
            out[:, :, i] = torch.einsum("bhj,bhjd->bhd", weights, v[:, :, tokens])
    return out


def random_mixer(rings, angles, strip, heads, theta_max=math.pi):
    mixer = RadialStripMixer(rings, angles, strip, heads, theta_max).double()
    with torch.no_grad():
        mixer.a.normal_()
        mixer.b.normal_()
    return mixer


@settings(max_examples=30, deadline=None)
@given(rings=st.integers(2, 6), angles=st.integers(1, 7), heads=st.integers(1, 3), batch=st.integers(1, 2),
       prefix=st.integers(0, 2), strip=st.sampled_from(["ring", "ray"]))
def test_zero_position_term_equals_masked_attention_with_strip_masks(rings, angles, heads, batch, prefix, strip):
    mixer = RadialStripMixer(rings, angles, strip, heads).double()
    with torch.no_grad():
        mixer.a.zero_()
        mixer.b.zero_()
    n = prefix + rings * angles
    q, k, v = (torch.randn(batch, heads, n, 5, dtype=torch.float64) for _ in range(3))
    mask = mixer.mask
    assert (mask.orientation, mask.width) == (("rows" if strip == "ring" else "columns"), 1)
    expected = masked_attention(q, k, v, mask, (rings, angles), prefix, backend="reference")
    torch.testing.assert_close(mixer(q, k, v, (rings, angles)), expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(rings=st.integers(2, 5), angles=st.integers(1, 6), heads=st.integers(1, 3),
       strip=st.sampled_from(["ring", "ray"]), theta_max=st.floats(0.1, 6.0), shared=st.booleans())
def test_mixer_equals_naive_per_strip_softmax_with_position_terms(rings, angles, heads, strip, theta_max, shared):
    mixer = random_mixer(rings, angles, strip, 1 if shared else heads, theta_max)
    q, k, v = (torch.randn(2, heads, rings * angles, 4, dtype=torch.float64) for _ in range(3))
    a, b = mixer.a.detach(), mixer.b.detach()
    expected = naive_strip_attention(q, k, v, a, b, strip, rings, angles, theta_max)
    torch.testing.assert_close(mixer(q, k, v, (rings, angles)), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strip", ["ring", "ray"])
def test_noncontiguous_inputs_and_prefix_tokens_with_position_terms(strip):
    """Prefix tokens see and are seen by everything without a position term; grid pairs as in the strips."""
    rings, angles, heads, prefix = 4, 5, 2, 2
    mixer = random_mixer(rings, angles, strip, heads)
    qkv = torch.randn(2, prefix + rings * angles, 3, heads, 4, dtype=torch.float64).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    assert not q.is_contiguous()
    n = prefix + rings * angles
    bias = torch.zeros(heads, n, n, dtype=torch.float64)
    a, b = mixer.a.detach(), mixer.b.detach()
    for i in range(prefix, n):
        for j in range(prefix, n):
            (mi, ni), (mj, nj) = divmod(i - prefix, angles), divmod(j - prefix, angles)
            if strip == "ring" and mi == mj:
                bias[:, i, j] = position_term(a, b, strip, ni - nj, rings, angles, math.pi)
            elif strip == "ray" and ni == nj:
                bias[:, i, j] = position_term(a, b, strip, mi - mj, rings, angles, math.pi)
            else:
                bias[:, i, j] = float("-inf")
    expected = torch.softmax(q @ k.transpose(-2, -1) * 4**-0.5 + bias, -1) @ v
    torch.testing.assert_close(mixer(q, k, v, (rings, angles)), expected, rtol=1e-12, atol=1e-12)
    weights = mixer.attention_weights(q, k, (rings, angles))
    torch.testing.assert_close(weights, torch.softmax(q @ k.transpose(-2, -1) * 4**-0.5 + bias, -1),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strip", ["ring", "ray"])
def test_rotating_the_polar_grid_commutes_with_the_mixer(strip):
    """Ring offsets are circular: rolling every ring by s azimuths rolls the output by s (rays: trivially)."""
    rings, angles = 3, 7
    mixer = random_mixer(rings, angles, strip, 2)
    q, k, v = (torch.randn(1, 2, rings, angles, 4, dtype=torch.float64) for _ in range(3))

    def run(t_q, t_k, t_v):
        flat = [t.reshape(1, 2, rings * angles, 4) for t in (t_q, t_k, t_v)]
        return mixer(*flat, (rings, angles)).reshape(1, 2, rings, angles, 4)

    rolled = run(*(torch.roll(t, 3, dims=3) for t in (q, k, v)))
    torch.testing.assert_close(rolled, torch.roll(run(q, k, v), 3, dims=3), rtol=1e-12, atol=1e-12)


def test_attention_weights_are_the_per_strip_softmax():
    rings, angles = 3, 4
    mixer = random_mixer(rings, angles, "ring", 1)
    q, k = (torch.randn(2, 3, rings * angles, 4, dtype=torch.float64) for _ in range(2))
    weights = mixer.attention_weights(q, k, (rings, angles))
    v = torch.eye(rings * angles, dtype=torch.float64).expand(2, 3, -1, -1)  # values = one-hot: out = weights
    expected = naive_strip_attention(q, k, v, mixer.a.detach(), mixer.b.detach(), "ring", rings, angles, math.pi)
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=1e-12)
    same_ring = (torch.arange(12)[:, None] // angles) == (torch.arange(12)[None, :] // angles)
    assert bool((weights[..., ~same_ring] == 0).all())


def naive_module(module: RadialStripAttention, x: torch.Tensor) -> torch.Tensor:
    """polar resample -> qkv -> per-strip dense softmax with the position term -> proj -> inverse, in float64."""
    mixer = module.mixer
    rings, angles = mixer.grid
    polar = polar_resample(x, (rings, angles), module.center, module.max_radius)
    batch, channels = polar.shape[:2]
    tokens = polar.flatten(2).transpose(1, 2)
    qkv = tokens @ module.qkv.weight.T + module.qkv.bias
    heads = module.num_heads
    q, k, v = (t.reshape(batch, -1, heads, channels // heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    out = naive_strip_attention(q, k, v, mixer.a, mixer.b, mixer.strip, rings, angles, mixer.theta_max)
    out = out.transpose(1, 2).reshape(batch, -1, channels) @ module.proj.weight.T + module.proj.bias
    return polar_inverse(out.transpose(1, 2).reshape(batch, channels, rings, angles), x.shape[-2:], module.center,
                         module.max_radius)


@pytest.mark.parametrize(
    ("strip", "heads", "size", "center", "max_radius"),
    [("ring", 1, (9, 11), None, None), ("ray", 2, (10, 7), (4.0, 2.5), 3.5), ("ring", 2, (8, 8), (3.5, 3.0), 5.0)],
)
def test_module_equals_naive_float64_computation(strip, heads, size, center, max_radius):
    torch.manual_seed(0)
    module = RadialStripAttention(6, 4, 9, strip, heads, center=center, max_radius=max_radius).double()
    with torch.no_grad():
        module.mixer.a.normal_()
        module.mixer.b.normal_()
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), naive_module(module, x), rtol=1e-12, atol=1e-12)


def test_module_gradients():
    torch.manual_seed(0)
    module = RadialStripAttention(2, 3, 5, "ray", 2, max_radius=1.9).double()
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))
    module(x).sum().backward()
    assert module.mixer.a.grad is not None and module.mixer.a.grad.abs().sum() > 0


@pytest.mark.parametrize("strip", ["ring", "ray"])
def test_mixer_gradients_wrt_inputs_and_tables(strip):
    mixer = random_mixer(2, 3, strip, 2)
    q, k, v = (torch.randn(1, 2, 6, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    a, b = mixer.a, mixer.b
    out = mixer(q, k, v, (2, 3))
    grads = torch.autograd.grad(out.sum(), (q, k, v, a, b))
    naive = naive_strip_attention(q, k, v, a, b, strip, 2, 3, math.pi)
    expected = torch.autograd.grad(naive.sum(), (q, k, v, a, b))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(lambda *t: mixer(*t, (2, 3)), (q, k, v))


def test_bfloat16_module_within_stated_tolerance():
    """bfloat16 module vs the same weights in float64: max abs error <= 0.02 on outputs up to about 0.8 (bf16 keeps
    8 significant bits; errors compound through resample, two projections, softmax and the inverse; measured 0.003)."""
    torch.manual_seed(0)
    module = RadialStripAttention(16, 6, 16, "ring", 1)
    x = torch.randn(2, 16, 13, 13)
    expected = module.double()(x.double())
    got = module.bfloat16()(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=0.02)


def test_registry_entry_and_attention_integration():
    spec = get_mixer_spec("radial_strip")
    assert spec.paper_key == "rst" and spec.paper.arxiv == "2404.00358"
    assert set(spec.faces) == {"definition", "fast", "module"}
    mixer = create_mixer("radial_strip", num_rings=4, num_angles=6, strip="ray")
    assert isinstance(mixer, RadialStripMixer) and mixer.strip == "ray"
    attn = Attention(16, num_heads=4, mixer="radial_strip", num_rings=4, num_angles=6, shape=(4, 6)).double()
    x = torch.randn(2, 24, 16, dtype=torch.float64)
    out = attn(x)
    q, k, v = attn.qkv_heads(x)
    expected = naive_strip_attention(q, k, v, attn.mixer.a.detach(), attn.mixer.b.detach(), "ring", 4, 6, math.pi)
    expected = attn.proj(expected.transpose(1, 2).reshape(2, 24, 16))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_dynamic_radial_embedding_starts_as_two_convolutions():
    torch.manual_seed(0)
    dre = DynamicRadialEmbedding(3, 5, kernel_size=3).double()
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    expected = dre.conv(x) + F.conv2d(x, dre.deform_weight, padding=1)
    torch.testing.assert_close(dre(x), expected, rtol=1e-12, atol=1e-12)


def test_dynamic_radial_embedding_offsets_move_the_kernel():
    """Offsets (dy, dx) = (0, 1) on every tap read one column to the right: output column j reads x columns
    j .. j + 2 (zero beyond the border) instead of j - 1 .. j + 1."""
    torch.manual_seed(0)
    dre = DynamicRadialEmbedding(2, 4, kernel_size=3, bias=True).double()
    with torch.no_grad():
        dre.offset_conv.bias.copy_(torch.tensor([0.0, 1.0] * 9))
        dre.deform_bias.normal_()
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64)
    expected = dre.conv(x) + F.conv2d(F.pad(x, (0, 2, 1, 1)), dre.deform_weight, dre.deform_bias)
    torch.testing.assert_close(dre(x), expected, rtol=1e-12, atol=1e-12)


def test_dynamic_radial_embedding_angle_map_and_gradients():
    dre = DynamicRadialEmbedding(2, 3, kernel_size=3, center=(2.0, 1.0)).double()
    feats = dre.angle_features((5, 4), torch.device("cpu"), torch.float64)[0]
    torch.testing.assert_close(feats[:, 2, 3], torch.tensor([1.0, 0.0], dtype=torch.float64))  # right of centre
    torch.testing.assert_close(feats[:, 4, 1], torch.tensor([0.0, 1.0], dtype=torch.float64))  # below the centre
    torch.testing.assert_close(feats[:, 2, 0], torch.tensor([-1.0, 0.0], dtype=torch.float64), atol=1e-15, rtol=0)
    with torch.no_grad():
        dre.offset_conv.weight.normal_(std=0.3)
    offsets = dre.offsets(torch.zeros(1, 2, 5, 4, dtype=torch.float64))
    assert offsets.shape == (1, 18, 5, 4) and offsets.std(dim=(-2, -1)).min() > 0  # offsets vary with the angle
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dre, (x,))


def test_dynamic_radial_embedding_bfloat16():
    """bfloat16 (deformable branch computed in float32): within 0.05 of float64 for outputs up to about 2 (measured
    0.014: bf16 rounding of inputs, weights and outputs, 2^-8 relative each)."""
    torch.manual_seed(0)
    dre = DynamicRadialEmbedding(3, 8)
    with torch.no_grad():
        dre.offset_conv.weight.normal_(std=0.3)
    x = torch.randn(2, 3, 9, 9)
    expected = dre.double()(x.double())
    got = dre.bfloat16()(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"strip": "spiral"}, ValueError, "strip must be one of"),
        ({"num_rings": 1}, ValueError, "num_rings must be >= 2"),
        ({"num_angles": 0}, ValueError, "num_angles must be >= 1"),
        ({"num_angles": 4.0}, TypeError, "num_angles must be an int"),
        ({"num_heads": 0}, ValueError, "num_heads must be >= 1"),
        ({"theta_max": float("nan")}, TypeError, "theta_max must be a finite real"),
        ({"attn_drop": 1.0}, ValueError, "attn_drop must be in"),
    ],
)
def test_mixer_rejects_bad_arguments(kwargs, error, match):
    args = {"num_rings": 4, "num_angles": 6} | kwargs
    with pytest.raises(error, match=match):
        RadialStripMixer(**args)


def test_mixer_rejects_bad_calls():
    mixer = RadialStripMixer(3, 4, num_heads=2)
    q = torch.randn(1, 2, 12, 4)
    with pytest.raises(ValueError, match=r"shape must be the polar grid \(num_rings, num_angles\)=\(3, 4\)"):
        mixer(q, q, q, (4, 3))
    with pytest.raises(ValueError, match="q must have num_heads=2 heads"):
        q3 = torch.randn(1, 3, 12, 4)
        mixer(q3, q3, q3, (3, 4))
    with pytest.raises(ValueError, match="attn_mask is not supported"):
        mixer(q, q, q, (3, 4), attn_mask=torch.ones(12, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="fewer than prod"):
        mixer(q[:, :, :8], q[:, :, :8], q[:, :, :8], (3, 4))


def test_modules_reject_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="dim must be divisible by num_heads"):
        RadialStripAttention(6, 3, 4, num_heads=4)
    with pytest.raises(TypeError, match="center must be a pair"):
        RadialStripAttention(4, 3, 4, center=3.0)
    with pytest.raises(ValueError, match="max_radius must be > 0"):
        RadialStripAttention(4, 3, 4, max_radius=0.0)
    module = RadialStripAttention(4, 3, 4, center=(9.0, 1.0))
    with pytest.raises(ValueError, match="center must lie within"):
        module(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="x must have dim=4 channels"):
        RadialStripAttention(4, 3, 4)(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"x must be a \(B, C, H, W\) tensor"):
        RadialStripAttention(4, 3, 4)(torch.randn(4, 5, 5))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        DynamicRadialEmbedding(3, 4, kernel_size=4)
    with pytest.raises(ValueError, match="x must have in_chans=3 channels"):
        DynamicRadialEmbedding(3, 4)(torch.randn(1, 2, 5, 5))
    with pytest.raises(ValueError, match="center must lie within"):
        DynamicRadialEmbedding(3, 4, center=(-1.0, 0.0))(torch.randn(1, 3, 5, 5))


def mdt_ring_attention(tokens, state, rings, angles):
    """The official MDT code's ring attention (one head, window (1, A)) written from its formulas: per ring,
    ``softmax(q . k / sqrt(C) + a_p[d] cos(2 pi d / A) + b_p[d] sin(2 pi d / A) + a_r[0])`` with ``d`` the
    query-minus-key azimuth offset used as a Python index into tables of ``2A - 1`` entries, then ``proj``."""
    qkv = tokens @ state["qkv.weight"].t() + state["qkv.bias"]
    q, k, v = qkv.chunk(3, dim=-1)
    scale = tokens.shape[-1] ** -0.5
    out = torch.zeros_like(v)
    a_p, b_p, a_r = state["a_p"][:, 0], state["b_p"][:, 0], state["a_r"][0, 0]
    for ring in range(rings):
        idx = list(range(ring * angles, (ring + 1) * angles))
        for n in range(angles):
            logits = []
            for m in range(angles):
                d = n - m
                phase = 2 * math.pi * d / angles
                logits.append((q[:, idx[n]] * k[:, idx[m]]).sum(-1) * scale + a_p[d] * math.cos(phase)
                              + b_p[d] * math.sin(phase) + a_r)
            weights = torch.softmax(torch.stack(logits, dim=-1), dim=-1)
            out[:, idx[n]] = torch.einsum("bm,bmc->bc", weights, v[:, idx])
    return out @ state["proj.weight"].t() + state["proj.bias"]


@pytest.mark.parametrize(("rings", "angles"), [(2, 5), (3, 4), (2, 1)])
def test_loads_the_official_mdt_weights_layout(rings, angles):
    """A state dict in MDT's layout (tables (2A - 1, 1), radial tables (1, 1)) loads with table_layout="mdt"
    and the attention equals MDT's formula; our default circular table (A entries) cannot take it."""
    dim = 6
    gen = torch.Generator().manual_seed(7)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    state = {"qkv.weight": rand(3 * dim, dim), "qkv.bias": rand(3 * dim), "proj.weight": rand(dim, dim),
             "proj.bias": rand(dim), "a_p": rand(2 * angles - 1, 1), "b_p": rand(2 * angles - 1, 1),
             "a_r": rand(1, 1), "b_r": rand(1, 1)}
    module = RadialStripAttention(dim, rings, angles, table_layout="mdt").double()
    module.load_state_dict(convert_mdt_state_dict(state), strict=True)
    tokens = rand(2, rings * angles, dim)
    torch.testing.assert_close(module.attend(tokens), mdt_ring_attention(tokens, state, rings, angles),
                               rtol=1e-12, atol=1e-12)
    if angles > 1:
        with pytest.raises(RuntimeError, match="size mismatch"):
            RadialStripAttention(dim, rings, angles).double().load_state_dict(convert_mdt_state_dict(state))


@pytest.mark.parametrize("strip", ["ring", "ray"])
def test_mdt_table_layout_indexes_offsets_as_python_indices(strip):
    rings, angles, heads = 3, 4, 2
    mixer = RadialStripMixer(rings, angles, strip, heads, table_layout="mdt").double()
    length = angles if strip == "ring" else rings
    assert mixer.a.shape == (heads, 2 * length - 1)
    with torch.no_grad():
        mixer.a.normal_()
        mixer.b.normal_()
    offset = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    step = 2 * math.pi / angles if strip == "ring" else math.pi / rings
    a, b = mixer.a.detach(), mixer.b.detach()
    expected = torch.stack([torch.tensor([[a[h, int(d)] * math.cos(d * step) + b[h, int(d)] * math.sin(d * step)
                                           for d in row] for row in offset.tolist()], dtype=torch.float64)
                            for h in range(heads)])
    torch.testing.assert_close(mixer.relative_bias(), expected, rtol=1e-12, atol=1e-12)


def test_convert_mdt_state_dict_rejects_other_windows():
    state = {"a_p": torch.zeros(7, 1), "b_p": torch.zeros(7, 1), "a_r": torch.zeros(3, 1), "b_r": torch.zeros(3, 1)}
    with pytest.raises(ValueError, match=r"state_dict\['a_r'\] must have one entry"):
        convert_mdt_state_dict(state)
    with pytest.raises(ValueError, match="must hold MDT's position table 'a_p'"):
        convert_mdt_state_dict({})
    with pytest.raises(ValueError, match="table_layout must be one of"):
        RadialStripMixer(3, 4, table_layout="swin")
