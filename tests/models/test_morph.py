"""MORPH (visattn.models.morph): the component-wise convolution, the inter-field cross-attention and the whole
forward against written-out formulas in float64, shape-agnostic inputs (1-D, 2-D, 3-D, odd sizes), rollout,
parameter counts of the published sizes (meta device), training, and bad inputs.

float32 tolerances: none are used; every comparison is float64 at 1e-10 (products of a few hundred terms)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.models.morph import (
    MORPH_SIZES,
    ComponentConv,
    FieldCrossAttention,
    Morph,
    MorphSize,
    create_morph,
    morph_l,
    morph_lt,
    morph_ti,
    morph_xl,
    params_table,
    patch_sizes,
    patchify,
    to_uptf7,
    unpatchify,
)
from visattn.models.published import PUBLISHED_TASK_MODELS
from visattn.nn.axial import MorphAxialAttention

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = dict(atol=1e-10, rtol=1e-10)
TINY = dict(dim=16, depth=1, heads=2, mlp_dim=24, patch_size=2, heads_xa=4, max_patches=32, dropout=0.0,
            emb_dropout=0.0)


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.3)
    return module


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, 0.2 * x)


def _conv3x3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out[b, o, d, h, w] = sum_{i, a, c, e} weight[o, i, a, c, e] x[b, i, d + a - 1, h + c - 1, w + e - 1]`` with
    zeros outside the grid, summed offset by offset."""
    padded = F.pad(x, (1, 1, 1, 1, 1, 1))
    _, _, d, h, w = x.shape
    out = torch.zeros(x.shape[0], weight.shape[0], d, h, w, dtype=x.dtype)
    for a in range(3):
        for c in range(3):
            for e in range(3):
                shifted = padded[:, :, a:a + d, c:c + h, e:e + w]
                out += torch.einsum("oi,bidhw->bodhw", weight[:, :, a, c, e], shifted)
    return out


def _component_conv_oracle(conv: ComponentConv, x: torch.Tensor) -> torch.Tensor:
    """Zero-pad the components to max_components, 1x1x1 convolution, then each 3x3x3 convolution and LeakyReLU."""
    pad = torch.zeros(x.shape[0], conv.max_components - x.shape[1], *x.shape[2:], dtype=x.dtype)
    h = torch.einsum("oi,bidhw->bodhw", conv.input_proj.weight[:, :, 0, 0, 0], torch.cat([x, pad], dim=1))
    for layer in conv.convs:
        if isinstance(layer, torch.nn.Conv3d):
            h = _leaky(_conv3x3x3(h, layer.weight))
    return h


@pytest.mark.parametrize(("components", "grid", "filters"), [(1, (3, 5, 4), 8), (2, (1, 1, 7), 16), (3, (1, 6, 5), 32)])
def test_component_conv_matches_the_written_out_formula(components, grid, filters):
    conv = _randomize(ComponentConv(3, filters)).double()
    x = torch.randn(2, components, *grid, dtype=torch.float64)
    out = conv(x)
    assert out.shape == (2, filters, *grid)
    torch.testing.assert_close(out, _component_conv_oracle(conv, x), **TOL)
    assert sum(isinstance(m, torch.nn.Conv3d) for m in conv.convs) == 1 + round(math.log2(filters / 8))


def _field_attention_oracle(module: FieldCrossAttention, x: torch.Tensor) -> torch.Tensor:
    """``W_o concat_h softmax(q_h k_h^T / sqrt(d_h)) v_h + b_o`` with the learnable query, head by head."""
    attn = module.attn
    dim, heads = module.dim, attn.num_heads
    wq, wk, wv = attn.in_proj_weight.split(dim)
    bq, bk, bv = attn.in_proj_bias.split(dim)
    q = module.query[0, 0] @ wq.T + bq
    k, v = x @ wk.T + bk, x @ wv.T + bv
    d = dim // heads
    out = []
    for b in range(x.shape[0]):
        per_head = []
        for head in range(heads):
            cols = slice(head * d, (head + 1) * d)
            scores = torch.stack([(q[cols] * k[b, f, cols]).sum() for f in range(x.shape[1])]) / math.sqrt(d)
            weights = torch.exp(scores - scores.max()) / torch.exp(scores - scores.max()).sum()
            per_head.append(sum(weights[f] * v[b, f, cols] for f in range(x.shape[1])))
        out.append(attn.out_proj.weight @ torch.cat(per_head) + attn.out_proj.bias)
    return torch.stack(out)


@pytest.mark.parametrize(("fields", "heads"), [(1, 1), (2, 4), (3, 2)])
def test_field_cross_attention_matches_the_written_out_formula(fields, heads):
    module = _randomize(FieldCrossAttention(12, heads)).double()
    x = torch.randn(5, fields, 12, dtype=torch.float64)
    torch.testing.assert_close(module(x), _field_attention_oracle(module, x), **TOL)


def test_new_blocks_pass_gradcheck():
    conv = _randomize(ComponentConv(3, 8)).double()
    x = torch.randn(1, 2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x,))
    attn = _randomize(FieldCrossAttention(4, 2), seed=1).double()
    tokens = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(attn, (tokens,))


def test_whole_model_passes_gradcheck():
    model = _randomize(Morph(**(TINY | dict(dim=8, mlp_dim=8, heads_xa=2, max_ar=2))), seed=7).double()
    x = torch.randn(1, 2, 2, 1, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model, (x,))


@pytest.mark.parametrize(("grid", "patch"), [((1, 1, 12), 4), ((1, 6, 9), 3), ((4, 2, 6), 2)])
def test_patchify_matches_a_loop_and_unpatchify_inverts_it(grid, patch):
    p = patch_sizes(grid, patch)
    x = torch.randn(2, 3, *grid, dtype=torch.float64)
    tokens = patchify(x, p)
    counts = [g // q for g, q in zip(grid, p, strict=True)]
    index = 0
    for i in range(counts[0]):
        for j in range(counts[1]):
            for k in range(counts[2]):
                block = x[:, :, i * p[0]:(i + 1) * p[0], j * p[1]:(j + 1) * p[1], k * p[2]:(k + 1) * p[2]]
                torch.testing.assert_close(tokens[:, index], block.reshape(2, -1), **TOL)
                index += 1
    assert index == tokens.shape[1]
    torch.testing.assert_close(unpatchify(tokens, 3, tuple(counts), p), x, **TOL)


@settings(max_examples=25, deadline=None)
@given(grid=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)), patch=st.integers(1, 3),
       channels=st.integers(1, 3))
def test_unpatchify_inverts_patchify_on_any_grid(grid, patch, channels):
    counts = tuple(g for g in grid)
    p = patch_sizes(tuple(c * patch if c > 1 else 1 for c in counts), patch)
    sides = tuple(c * q for c, q in zip(counts, p, strict=True))
    x = torch.randn(2, channels, *sides)
    tokens = patchify(x, p)
    assert tokens.shape == (2, math.prod(counts), channels * math.prod(p))
    assert torch.equal(unpatchify(tokens, channels, counts, p), x)


def _forward_oracle(model: Morph, x: torch.Tensor) -> torch.Tensor:
    """MORPH's forward as the release writes it out: per field convolution, patches cut by loops, features zero
    padded to filters * p^3 before the full projection, cross-attention by formula, positional table resampled,
    blocks, the full decoder then cut to F * C * patch volume, and patches put back by loops. ``x`` needs sides that
    are multiples of the patch."""
    n, t, f, c, *grid = x.shape
    p = patch_sizes(tuple(grid), model.patch_size)
    counts = [g // q for g, q in zip(grid, p, strict=True)]
    embed = model.embed
    tokens = torch.zeros(n, t, math.prod(counts), model.dim, dtype=x.dtype)
    for b in range(n):
        for s in range(t):
            feats = embed.conv(x[b, s])
            per_patch = []
            for i in range(counts[0]):
                for j in range(counts[1]):
                    for k in range(counts[2]):
                        block = feats[:, :, i * p[0]:(i + 1) * p[0], j * p[1]:(j + 1) * p[1], k * p[2]:(k + 1) * p[2]]
                        flat = block.reshape(f, -1)
                        padded = torch.cat([flat, flat.new_zeros(f, embed.max_features - flat.shape[1])], dim=1)
                        per_patch.append(embed.projection(padded))
            tokens[b, s] = _field_attention_oracle(embed.field_attn, torch.stack(per_patch))
    table = model.pos.table[0, :t].permute(0, 2, 1)
    pos = F.interpolate(table, size=tokens.shape[2], mode="linear", align_corners=False).permute(0, 2, 1)
    z = (tokens + pos).reshape(n, t, *counts, model.dim)
    for block in model.blocks:
        z = block(z)
    decoded = model.head(model.head_norm(z[:, -1].reshape(n, -1, model.dim)))[..., : f * c * math.prod(p)]
    out = torch.zeros(n, f, c, *grid, dtype=x.dtype)
    index = 0
    for i in range(counts[0]):
        for j in range(counts[1]):
            for k in range(counts[2]):
                out[:, :, :, i * p[0]:(i + 1) * p[0], j * p[1]:(j + 1) * p[1], k * p[2]:(k + 1) * p[2]] = (
                    decoded[:, index].reshape(n, f, c, *p))
                index += 1
    return out


@pytest.mark.parametrize("shape", [(2, 2, 2, 2, 1, 4, 6), (1, 1, 3, 1, 1, 1, 8), (1, 2, 1, 3, 2, 4, 2)])
def test_forward_matches_the_written_out_pipeline(shape):
    model = _randomize(Morph(**TINY, max_ar=2), seed=3).double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(model(x), _forward_oracle(model, x), **TOL)
    assert isinstance(model.blocks[0].attn, MorphAxialAttention)


@pytest.mark.parametrize("grid", [(1, 1, 9), (1, 7, 5), (3, 5, 3)])
def test_sides_off_the_patch_are_padded_by_replication_and_cropped(grid):
    model = _randomize(Morph(**TINY), seed=2).double().eval()
    x = torch.randn(2, 1, 1, 2, *grid, dtype=torch.float64)
    p = patch_sizes(grid, 2)
    extra = [-(-g // q) * q - g for g, q in zip(grid, p, strict=True)]
    padded = F.pad(x.reshape(-1, *grid), (0, extra[2], 0, extra[1], 0, extra[0]), mode="replicate")
    expected = _forward_oracle(model, padded.reshape(*x.shape[:4], *padded.shape[-3:]))
    torch.testing.assert_close(model(x), expected[..., : grid[0], : grid[1], : grid[2]], **TOL)
    strict = Morph(**TINY, pad=False)
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        strict(x.float())


@pytest.mark.parametrize(("spatial", "grid"), [(1, (11,)), (2, (6, 9)), (3, (3, 4, 5))])
def test_any_dimension_and_size_gives_the_next_state(spatial, grid):
    model = Morph(**TINY, max_ar=2).eval()
    x = to_uptf7(torch.randn(2, 2, 2, 3, *grid), spatial)
    assert x.shape == (2, 2, 2, 3, *(1,) * (3 - spatial), *grid)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 2, 3, *x.shape[4:]) and torch.isfinite(out).all()


def test_rollout_feeds_each_prediction_back():
    model = _randomize(Morph(**TINY, max_ar=2), seed=4).double().eval()
    x = torch.randn(1, 2, 1, 2, 1, 4, 4, dtype=torch.float64)
    states = model.rollout(x, 3)
    assert states.shape == (1, 3, 1, 2, 1, 4, 4)
    window = x
    for s in range(3):
        step = model(window)
        torch.testing.assert_close(states[:, s], step, **TOL)
        window = torch.cat([window[:, 1:], step[:, None]], dim=1)


def test_earlier_time_steps_reach_the_prediction_through_time_attention():
    model = _randomize(Morph(**TINY, max_ar=2), seed=5).double().eval()
    x = torch.randn(1, 2, 1, 1, 1, 4, 4, dtype=torch.float64)
    changed = x.clone()
    changed[:, 0] += 1.0
    assert not torch.allclose(model(x), model(changed))


def test_residual_option_adds_the_last_state():
    model = _randomize(Morph(**TINY), seed=6).double().eval()
    residual = _randomize(Morph(**TINY, residual=True), seed=6).double().eval()
    x = torch.randn(2, 1, 1, 1, 1, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(residual(x), model(x) + x[:, -1], **TOL)


def _expected_params(size: str) -> int:
    """The sum of MORPH's parts for one published size (3 fields, 3 components, patch 8, 4096-patch table)."""
    s = MORPH_SIZES[size]
    d, m, p3 = s.dim, s.mlp_dim, 8 ** 3
    widths = [8]
    while widths[-1] < s.filters:
        widths.append(min(2 * widths[-1], s.filters))
    widths.append(s.filters)
    conv = 3 * 8 + sum(a * b * 27 for a, b in zip(widths[:-1], widths[1:], strict=True))
    projection = s.filters * p3 * d + d
    cross = 4 * d * d + 4 * d + d
    table = s.max_ar * 4096 * d
    block = 2 * 2 * d + 4 * (4 * d * d + 4 * d) + (d * m + m) + (m * d + d)
    head = 2 * d + d * 9 * p3 + 9 * p3
    return conv + projection + cross + table + s.depth * block + head


@pytest.mark.parametrize("size", sorted(MORPH_SIZES))
def test_published_sizes_count_their_parts_on_the_meta_device(size):
    with torch.device("meta"):
        model = create_morph(size)
    assert all(p.device.type == "meta" for p in model.parameters())
    count = sum(p.numel() for p in model.parameters())
    assert count == _expected_params(size)
    paper = PUBLISHED_TASK_MODELS[f"morph_{size.lower()}"]
    if paper.params_m is not None:
        assert abs(count / 1e6 - paper.params_m) <= 0.01 * paper.params_m, (count, paper)


def test_published_counts():
    """MORPH-Ti 9.86 M; MORPH-L 483.3 M (the release states ~480 M for L with its 16-step table); MORPH-Lt
    231.42 M (~231 M) and MORPH-XL 1,124.66 M (~1.12 B) with their 8-step tables; XL's convolution doubles
    8 -> 16 -> 32 -> 64 filters, then one more 64 -> 64."""
    with torch.device("meta"):
        assert sum(p.numel() for p in morph_ti().parameters()) == 9_864_408
        assert sum(p.numel() for p in morph_l().parameters()) == 483_293_400
        assert sum(p.numel() for p in morph_lt().parameters()) == 231_422_168
        xl = morph_xl()
    assert sum(p.numel() for p in xl.parameters()) == 1_124_658_584
    assert abs(231_422_168 / 1e6 - 231) <= 0.5 and abs(1_124_658_584 / 1e9 - 1.12) <= 0.005
    assert [c.out_channels for c in xl.embed.conv.convs if isinstance(c, torch.nn.Conv3d)] == [16, 32, 64, 64]
    assert xl.pos.mode == "slice" and xl.pos.table.shape[1:3] == (8, 4096)
    assert MORPH_SIZES["Lt"] == MorphSize(8, 1024, 16, 8, 3072, max_ar=8)
    assert MORPH_SIZES["XL"] == MorphSize(64, 1536, 24, 16, 8192, max_ar=8)


def test_meta_device_forward_and_rollout():
    with torch.device("meta"):
        model = create_morph("Ti", max_ar=2)
        x = torch.empty(2, 2, 2, 1, 1, 24, 20)
        assert model(x).shape == (2, 2, 1, 1, 24, 20)
        assert model.rollout(x, 2).shape == (2, 2, 2, 1, 1, 24, 20)


def test_tiny_config_trains_and_its_loss_falls():
    torch.manual_seed(0)
    model = Morph(**TINY)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 1, 1, 1, 4, 4, generator=generator)
    target = torch.roll(x[:, -1], 1, dims=-1) * 0.5
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses


@pytest.mark.parametrize(("x", "error", "match"), [
    (torch.zeros(1, 1, 1, 1, 8, 8), ValueError, r"\(N, T, F, C, D, H, W\)"),
    (torch.zeros(1, 1, 1, 1, 1, 1, 8, 8), ValueError, "UPTF-7"),
    (torch.zeros(1, 1, 4, 1, 1, 4, 4), ValueError, "F=4.*max_fields=3"),
    (torch.zeros(1, 1, 1, 4, 1, 4, 4), ValueError, "C=4.*max_components=3"),
    (torch.zeros(1, 2, 1, 1, 1, 4, 4), ValueError, "T=2.*max_ar=1"),
    ([[1.0]], TypeError, "torch.Tensor"),
])
def test_bad_inputs_are_refused_with_the_reason(x, error, match):
    model = Morph(**TINY)
    with pytest.raises(error, match=match):
        model(x)
    if isinstance(x, torch.Tensor):
        with pytest.raises(error, match=match):
            model.rollout(x, 2)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(filters=12), "filters"), (dict(dim=0), "dim"), (dict(pos_mode="cubic"), "mode"),
    (dict(heads_xa=5), "num_heads"), (dict(patch_size=0), "patch_size"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Morph(**(TINY | kwargs))


def test_bad_size_rollout_steps_and_spatial_dims():
    with pytest.raises(ValueError, match="size must be one of"):
        create_morph("XXL")
    with pytest.raises(ValueError, match="steps"):
        Morph(**TINY).rollout(torch.zeros(1, 1, 1, 1, 1, 4, 4), 0)
    with pytest.raises(ValueError, match="spatial_dims"):
        to_uptf7(torch.zeros(1, 1, 1, 1, 4), 4)
    with pytest.raises(ValueError, match="2 grid axes"):
        to_uptf7(torch.zeros(1, 1, 1, 1, 4), 2)


def test_docs_show_the_current_parameter_table():
    """docs/tasks.md's MORPH table is :func:`params_table` (regenerate it with ``print(params_table())``)."""
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "tasks.md"
    assert params_table() in page.read_text()
