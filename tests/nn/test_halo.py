"""HaloAttention (HaloNet): timm parity, per-pair definition with zero-padded keys, halo_mask agreement, grads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from timm.layers.halo_attn import HaloAttn

from visattn.masks import halo_mask
from visattn.nn import HaloAttention
from visattn.ops import masked_attention

TIMM_CONFIGS = [
    (dict(dim=64), (16, 16)),
    (dict(dim=16, num_heads=4, block_size=4, halo_size=1), (8, 12)),
    (dict(dim=13, dim_out=26, num_heads=2, block_size=4, halo_size=2, stride=2), (12, 8)),
    (dict(dim=15, dim_out=21, num_heads=3, block_size=3, halo_size=1, stride=2), (9, 12)),
    (dict(dim=16, num_heads=2, block_size=4, halo_size=1, stride=2, avg_down=True, qkv_bias=True), (8, 8)),
    (dict(dim=24, num_heads=3, dim_head=5, block_size=2, halo_size=2, scale_pos_embed=True), (6, 4)),
    (dict(dim=32, num_heads=4, qk_ratio=0.5, block_size=4, halo_size=3, qkv_bias=True), (8, 8)),
    # halo wider than the block: windows reach past the neighbouring blocks (timm accepts it)
    (dict(dim=16, num_heads=2, block_size=2, halo_size=3), (4, 6)),
    (dict(dim=12, num_heads=3, block_size=1, halo_size=2, dim_head=4), (3, 5)),
    (dict(dim=16, num_heads=2, block_size=2, halo_size=5, stride=2, qkv_bias=True), (4, 4)),
    (dict(dim=8, dim_out=12, num_heads=2, block_size=3, halo_size=4, stride=2, scale_pos_embed=True), (6, 3)),
    # the map is one block: the zero-padded keys enter the softmax as one closed-form logit
    (dict(dim=16, num_heads=2, block_size=4, halo_size=2), (4, 4)),
    (dict(dim=16, num_heads=2, block_size=4, halo_size=1, stride=2, qkv_bias=True), (4, 4)),
    (dict(dim=12, dim_out=8, num_heads=2, block_size=3, halo_size=5, avg_down=True, stride=2,
          scale_pos_embed=True), (3, 3)),
]


def _projections(module: HaloAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q ``(B, heads, d_qk, H', W')``, k ``(B, heads, d_qk, H, W)``, v ``(B, heads, d_v, H, W)``, timm's layout."""
    heads, d_qk, d_v = module.num_heads, module.dim_head_qk, module.dim_head_v
    q = F.conv2d(x, module.q.weight, module.q.bias, stride=module.block_stride)
    kv = F.conv2d(x, module.kv.weight, module.kv.bias)
    q = q.unflatten(1, (heads, d_qk))
    kv = kv.unflatten(1, (heads, d_qk + d_v))
    return q, kv[:, :, :d_qk], kv[:, :, d_qk:]


def _per_pair(module: HaloAttention, x: torch.Tensor) -> torch.Tensor:
    """The definition, query by query: the block's window of the zero-padded key map, padded keys in the softmax."""
    q, k, v = _projections(module, x)
    b, halo, w, bq = module.block_size, module.halo_size, module.win_size, module.block_size_ds
    k = F.pad(k, (halo, halo, halo, halo))
    v = F.pad(v, (halo, halo, halo, halo))
    rel_h, rel_w = module.pos_embed.height_rel, module.pos_embed.width_rel
    out = x.new_zeros(x.shape[0], module.num_heads, module.dim_head_v, *q.shape[-2:])
    for r in range(q.shape[-2]):
        for c in range(q.shape[-1]):
            (br, i), (bc, j) = divmod(r, bq), divmod(c, bq)
            keys = k[..., br * b:br * b + w, bc * b:bc * b + w].flatten(-2)
            values = v[..., br * b:br * b + w, bc * b:bc * b + w].flatten(-2)
            query = q[..., r, c]
            rel = torch.stack([query @ (rel_h[xk - i + w - 1] + rel_w[yk - j + w - 1])
                               for xk in range(w) for yk in range(w)], dim=-1)
            dots = torch.einsum("bhd,bhdn->bhn", query, keys)
            logits = (dots + rel) * module.scale if module.scale_pos_embed else dots * module.scale + rel
            out[..., r, c] = torch.einsum("bhn,bhdn->bhd", logits.softmax(-1), values)
    return module.pool(out.flatten(1, 2))


@pytest.mark.parametrize(("kwargs", "size"), TIMM_CONFIGS)
def test_equals_timm_halo_attn(kwargs, size):
    torch.manual_seed(0)
    theirs = HaloAttn(**kwargs)
    ours = HaloAttention(**kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, kwargs["dim"], *size)
    expected = theirs(x)
    got = ours(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(block=st.integers(1, 4), halo=st.integers(0, 4), nh=st.integers(1, 2), nw=st.integers(1, 3),
       heads=st.integers(1, 2), stride=st.sampled_from([1, 2]), avg_down=st.booleans(),
       scale_pos_embed=st.booleans(), dim=st.integers(1, 5))
def test_per_pair_definition_float64(block, halo, nh, nw, heads, stride, avg_down, scale_pos_embed, dim):
    assume(stride == 1 or block * min(nh, nw) >= 2)
    module = HaloAttention(dim, dim_out=2 * heads, stride=stride, num_heads=heads, dim_head=3, block_size=block,
                           halo_size=halo, qkv_bias=True, avg_down=avg_down, scale_pos_embed=scale_pos_embed)
    module = module.double()
    x = torch.randn(2, dim, block * nh, block * nw, dtype=torch.float64)
    torch.testing.assert_close(module(x), _per_pair(module, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("block", "halo", "size"), [(4, 2, (16, 12)), (3, 1, (9, 9)), (2, 0, (4, 6)), (2, 2, (8, 8))])
def test_interior_blocks_equal_halo_mask_reference(block, halo, size):
    torch.manual_seed(1)
    module = HaloAttention(6, dim_out=8, num_heads=2, dim_head=3, block_size=block, halo_size=halo).double()
    torch.nn.init.zeros_(module.pos_embed.height_rel)
    torch.nn.init.zeros_(module.pos_embed.width_rel)
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    q, k, v = (t.flatten(-2).transpose(-1, -2) for t in _projections(module, x))
    expected = masked_attention(q, k, v, halo_mask(block, halo), size, backend="reference")
    got = module(x).unflatten(1, (2, 4)).flatten(-2).transpose(-1, -2)

    rows = torch.arange(size[0])[:, None].expand(size).flatten()
    cols = torch.arange(size[1])[None, :].expand(size).flatten()

    def interior(coord: torch.Tensor, length: int) -> torch.Tensor:
        start = coord // block * block
        return (start - halo >= 0) & (start + block + halo <= length)

    inside = interior(rows, size[0]) & interior(cols, size[1])
    assert inside.any()
    torch.testing.assert_close(got[:, :, inside], expected[:, :, inside], rtol=1e-12, atol=1e-12)
    if halo:
        # Border blocks keep the zero-padded keys in the softmax, so they differ from the mask over real tokens.
        assert not torch.allclose(got[:, :, ~inside], expected[:, :, ~inside])
    else:
        assert inside.all()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(4, 2), (2, 2)])
def test_gradcheck(stride, size):
    torch.manual_seed(2)
    module = HaloAttention(3, dim_out=4, stride=stride, num_heads=2, dim_head=2, block_size=2, halo_size=1,
                           qkv_bias=True).double()
    x = torch.randn(1, 3, *size, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


@pytest.mark.parametrize(("extra", "size"), [
    (dict(), (4, 6)), (dict(stride=2), (4, 6)), (dict(stride=2, avg_down=True), (4, 6)),
    (dict(scale_pos_embed=True), (4, 6)), (dict(halo_size=3, stride=2, scale_pos_embed=True), (4, 6)),
    (dict(block_size=4), (4, 4)), (dict(block_size=4, halo_size=3, stride=2, scale_pos_embed=True), (4, 4)),
])
def test_parameter_and_input_gradients_equal_timm(extra, size):
    """The scale folded into the q weight, the in-place bias accumulation and the transposed PV all backpropagate
    as timm's unfused layer does, to every parameter and to the input."""
    torch.manual_seed(3)
    kwargs = dict(dim=8, num_heads=2, block_size=2, halo_size=1, qkv_bias=True) | extra
    theirs, ours = HaloAttn(**kwargs).double(), HaloAttention(**kwargs).double()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    x_theirs, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    theirs(x_theirs).square().sum().backward()
    ours(x_ours).square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-10, atol=1e-10)
    for (name, p), (_, p_timm) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_timm.grad, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("extra", [dict(), dict(stride=2), dict(scale_pos_embed=True), dict(halo_size=3, stride=2)])
def test_blocks_and_merge_reproduce_forward(extra):
    """``blocks()`` (the lens adapter's per-block view) with one SDPA call and ``merge()`` give ``forward``'s output."""
    torch.manual_seed(6)
    module = HaloAttention(**(dict(dim=6, dim_out=8, num_heads=2, dim_head=3, block_size=2, halo_size=1) | extra))
    module = module.double()
    x = torch.randn(2, 6, 4, 6, dtype=torch.float64)
    q, k, v, bias = module.blocks(x)
    queries, keys = module.block_size_ds**2, module.win_size**2
    assert q.shape == (4, 6, queries, 3) and k.shape == (4, 6, keys, 3) and v.shape == (4, 6, keys, 4)
    assert bias.shape == (4, 6, queries, keys)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=module.scale)
    torch.testing.assert_close(module.merge(out, 4, 6), module(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_bfloat16(stride):
    torch.manual_seed(4)
    module = HaloAttention(32, num_heads=4, block_size=4, halo_size=2, stride=stride)
    x = torch.randn(2, 32, 8, 8)
    expected = module(x)
    got = module.bfloat16()(x.bfloat16())
    assert got.dtype == torch.bfloat16
    # bfloat16 keeps 8 mantissa bits: measured error about 0.6% of the output scale; allowed 2%.
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=2e-2 * expected.abs().max().item())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(dim=16, dim_out=18, num_heads=4), ValueError, "dim_out must be divisible by num_heads"),
        (dict(dim=16, stride=3), ValueError, "stride"),
        (dict(dim=16, halo_size=-1), ValueError, "halo_size"),
        (dict(dim=16, block_size=0), ValueError, "block_size"),
        (dict(dim=16, num_heads=2.0), TypeError, "num_heads"),
        (dict(dim=16, dim_head=0), ValueError, "dim_head"),
        (dict(dim=16, qk_ratio=0.0), ValueError, "qk_ratio"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        HaloAttention(**kwargs)


def test_bad_input_raises():
    module = HaloAttention(16, num_heads=2, block_size=4, halo_size=1)
    with pytest.raises(ValueError, match=r"\(H, W\)=\(6, 8\).*block_size=4"):
        module(torch.randn(1, 16, 6, 8))
    with pytest.raises(ValueError, match="C=16"):
        module(torch.randn(1, 8, 8, 8))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        module(None)
    pooled = HaloAttention(4, num_heads=2, block_size=1, halo_size=0, stride=2)
    with pytest.raises(ValueError, match=r"\(H, W\)=\(1, 4\) is too small for stride 2"):
        pooled(torch.randn(1, 4, 1, 4))


def test_device_and_dtype_like_timm():
    """timm's ``device``/``dtype`` keywords: parameters created there, and outputs still equal to timm's."""
    kwargs = dict(dim=8, num_heads=2, block_size=2, halo_size=3, device="cpu", dtype=torch.float64)
    torch.manual_seed(5)
    theirs, ours = HaloAttn(**kwargs), HaloAttention(**kwargs)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    meta = HaloAttention(8, num_heads=2, device="meta")
    assert meta.q.weight.is_meta and meta(torch.empty(1, 8, 8, 8, device="meta")).shape == (1, 8, 8, 8)
