"""PartitionAttention (MaxViT block / grid attention): timm parity, per-pair definition, masks, padding, grads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.maxxvit import (
    MaxxVitBlock,
    MaxxVitConvCfg,
    MaxxVitTransformerCfg,
    PartitionAttentionCl,
    grid_partition,
    grid_reverse,
    window_partition,
    window_reverse,
)

from visattn.masks import grid_mask, materialize, window_mask
from visattn.nn import PartitionAttention
from visattn.nn.partition import merge_partitions, partition, partition_coordinates
from visattn.ops import masked_attention

TYPES = ("block", "grid")


def _timm_cfg(size, grid=None, head_first=False, dim_head=8):
    return MaxxVitTransformerCfg(dim_head=dim_head, window_size=size, grid_size=grid or size,
                                 rel_pos_type="bias_tf", head_first=head_first)


def _per_pair(module: PartitionAttention, x: torch.Tensor) -> torch.Tensor:
    """The definition, query by query: keys are the real tokens of the query's partition of the padded map."""
    batch, height, width, dim = x.shape
    (ph, pw), d, heads = module.partition_size, module.dim_head, module.num_heads
    hp, wp = math.ceil(height / ph) * ph, math.ceil(width / pw) * pw
    qkv = F.linear(x, module.qkv.weight, module.qkv.bias)
    if module.head_first:
        per_head = [qkv[..., 3 * d * h:3 * d * (h + 1)] for h in range(heads)]
        q, k, v = ([t[..., s * d:(s + 1) * d] for t in per_head] for s in range(3))
    else:
        q, k, v = ([qkv[..., s * dim + h * d:s * dim + (h + 1) * d] for h in range(heads)] for s in range(3))

    def place(r: int, c: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(partition id, coordinate in the partition) of token (r, c) of the padded map."""
        if module.partition_type == "block":
            return (r // ph, c // pw), (r % ph, c % pw)
        sh, sw = hp // ph, wp // pw
        return (r % sh, c % sw), (r // sh, c // sw)

    tokens = [(r, c) for r in range(height) for c in range(width)]
    table = module.rel_pos.relative_position_bias_table
    out = x.new_zeros(batch, height, width, dim)
    for r, c in tokens:
        pid, (i, j) = place(r, c)
        keys = [(kr, kc) for kr, kc in tokens if place(kr, kc)[0] == pid]
        coords = [place(kr, kc)[1] for kr, kc in keys]
        rows, cols = [kr for kr, _ in keys], [kc for _, kc in keys]
        for h in range(heads):
            bias = torch.stack([table[h, xk - i + ph - 1, yk - j + pw - 1] for xk, yk in coords])
            logits = (k[h][:, rows, cols] @ q[h][:, r, c, :, None])[..., 0] * d**-0.5 + bias
            out[:, r, c, h * d:(h + 1) * d] = (logits.softmax(-1)[..., None] * v[h][:, rows, cols]).sum(1)
    return F.linear(out, module.proj.weight, module.proj.bias)


@settings(max_examples=30, deadline=None)
@given(ph=st.integers(1, 4), pw=st.integers(1, 4), nh=st.integers(1, 3), nw=st.integers(1, 3),
       partition_type=st.sampled_from(TYPES))
def test_partition_and_merge_equal_timm(ph, pw, nh, nw, partition_type):
    x = torch.randn(2, ph * nh, pw * nw, 3)
    size, img = [ph, pw], [ph * nh, pw * nw]
    windows = partition(x, partition_type, (ph, pw))
    if partition_type == "block":
        expected = window_partition(x, size)
        assert torch.equal(window_reverse(expected, size, img), merge_partitions(windows, "block", (ph, pw), img))
    else:
        expected = grid_partition(x, size)
        assert torch.equal(grid_reverse(expected, size, img), merge_partitions(windows, "grid", (ph, pw), img))
    assert torch.equal(windows, expected.reshape(-1, ph * pw, 3))
    assert torch.equal(merge_partitions(windows, partition_type, (ph, pw), tuple(img)), x)


@settings(max_examples=30, deadline=None)
@given(ph=st.integers(1, 4), pw=st.integers(1, 4), nh=st.integers(1, 3), nw=st.integers(1, 3),
       partition_type=st.sampled_from(TYPES))
def test_partitions_are_the_mask_classes_and_coordinates_match(ph, pw, nh, nw, partition_type):
    shape = (ph * nh, pw * nw)
    n = shape[0] * shape[1]
    ids = partition(torch.arange(n).reshape(1, *shape, 1), partition_type, (ph, pw))[..., 0]
    same = torch.zeros(n, n, dtype=torch.bool)
    for members in ids:
        same[members[:, None], members[None, :]] = True
    mask = window_mask((ph, pw)) if partition_type == "block" else grid_mask((ph, pw))
    assert torch.equal(same, materialize(mask, shape))
    coords = partition_coordinates(shape, partition_type, (ph, pw))
    in_window = torch.stack(torch.meshgrid(torch.arange(ph), torch.arange(pw), indexing="ij"), -1).reshape(-1, 2)
    for members in ids:
        assert torch.equal(coords[members], in_window)


@pytest.mark.parametrize("head_first", [False, True])
@pytest.mark.parametrize("partition_type", TYPES)
def test_equals_timm_partition_attention_cl(partition_type, head_first):
    torch.manual_seed(0)
    theirs = PartitionAttentionCl(32, partition_type, _timm_cfg((4, 4), (3, 3), head_first)).eval()
    size = 4 if partition_type == "block" else 3
    ours = PartitionAttention(32, partition_type, size, dim_head=8, head_first=head_first).eval()
    ours.load_state_dict(theirs.attn.state_dict(), strict=True)
    x = torch.randn(2, 12, 12, 32)
    torch.testing.assert_close(ours(x), theirs._partition_attn(x), rtol=0, atol=1e-5)
    block_out = x + ours(theirs.norm1(x))
    block_out = block_out + theirs.mlp(theirs.norm2(block_out))
    torch.testing.assert_close(block_out, theirs(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("head_first", [False, True])
def test_equals_timm_maxxvit_block(head_first):
    torch.manual_seed(1)
    cfg = _timm_cfg((4, 4), (2, 2), head_first)
    theirs = MaxxVitBlock(16, 32, stride=2, conv_cfg=MaxxVitConvCfg(), transformer_cfg=cfg).eval()
    block = PartitionAttention(32, "block", 4, dim_head=8, head_first=head_first).eval()
    grid = PartitionAttention(32, "grid", 2, dim_head=8, head_first=head_first).eval()
    block.load_state_dict(theirs.attn_block.attn.state_dict(), strict=True)
    grid.load_state_dict(theirs.attn_grid.attn.state_dict(), strict=True)
    x = torch.randn(2, 16, 16, 8)
    y = theirs.conv(x).permute(0, 2, 3, 1)
    for ours, stage in ((block, theirs.attn_block), (grid, theirs.attn_grid)):
        y = y + ours(stage.norm1(y))
        y = y + stage.mlp(stage.norm2(y))
    torch.testing.assert_close(y.permute(0, 3, 1, 2), theirs(x), rtol=0, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(partition_type=st.sampled_from(TYPES), ph=st.integers(1, 3), pw=st.integers(1, 3), height=st.integers(1, 7),
       width=st.integers(1, 7), heads=st.integers(1, 2), head_first=st.booleans(), batch=st.integers(1, 2))
def test_fast_and_reference_equal_per_pair_definition(partition_type, ph, pw, height, width, heads, head_first,
                                                      batch):
    module = PartitionAttention(3 * heads, partition_type, (ph, pw), dim_head=3, head_first=head_first, pad=True)
    module = module.double().eval()
    x = torch.randn(batch, height, width, 3 * heads, dtype=torch.float64)
    expected = _per_pair(module, x)
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)
    module.backend = "reference"
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("partition_type", TYPES)
def test_zero_bias_equals_masked_attention_reference(partition_type):
    torch.manual_seed(2)
    module = PartitionAttention(12, partition_type, (2, 3), dim_head=4).double().eval()
    torch.nn.init.zeros_(module.rel_pos.relative_position_bias_table)
    x = torch.randn(2, 6, 9, 12, dtype=torch.float64)
    q, k, v = F.linear(x, module.qkv.weight, module.qkv.bias).reshape(2, 54, 3, 3, 4).permute(2, 0, 3, 1, 4)
    out = masked_attention(q, k, v, module.mask, (6, 9), backend="reference")
    expected = F.linear(out.transpose(1, 2).reshape(2, 6, 9, 12), module.proj.weight, module.proj.bias)
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("partition_type", TYPES)
def test_padded_tokens_do_not_leak(partition_type):
    torch.manual_seed(3)
    module = PartitionAttention(8, partition_type, 3, dim_head=4, pad=True).double().eval()
    x = torch.randn(1, 5, 7, 8, dtype=torch.float64)
    out = module(x)
    assert out.shape == x.shape
    with torch.no_grad():
        module.qkv.bias.add_(torch.randn_like(module.qkv.bias))
    shifted = module(x)
    module.backend = "reference"
    torch.testing.assert_close(module(x), shifted, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, shifted)


@pytest.mark.parametrize("partition_type", TYPES)
@pytest.mark.parametrize("pad", [False, True])
def test_gradcheck(partition_type, pad):
    torch.manual_seed(4)
    module = PartitionAttention(4, partition_type, 2, dim_head=2, pad=pad, head_first=True).double()
    x = torch.randn(1, 3 if pad else 4, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


@pytest.mark.parametrize("partition_type", TYPES)
def test_parameter_gradients_fast_equal_reference(partition_type):
    torch.manual_seed(5)
    module = PartitionAttention(8, partition_type, 2, dim_head=4, pad=True).double()
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    grads = []
    for backend in ("fast", "reference"):
        module.backend = backend
        module.zero_grad()
        module(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("partition_type", TYPES)
def test_bfloat16(partition_type):
    torch.manual_seed(6)
    module = PartitionAttention(32, partition_type, 4, dim_head=8, pad=True).eval()
    x = torch.randn(2, 10, 8, 32)
    expected = module(x)
    got = module.bfloat16()(x.bfloat16())
    assert got.dtype == torch.bfloat16
    # bfloat16 keeps 8 mantissa bits: measured error about 0.6% of the output scale; allowed 2%.
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=2e-2 * expected.abs().max().item())


def test_attention_dropout_in_training_only():
    torch.manual_seed(7)
    module = PartitionAttention(8, "block", 2, dim_head=4, attn_drop=0.5)
    x = torch.randn(1, 4, 4, 8)
    train_out = module(x)
    module.eval()
    assert torch.equal(module(x), module(x))
    assert not torch.allclose(train_out, module(x))
    module.train()
    module.backend = "reference"
    with pytest.raises(ValueError, match="attn_drop"):
        module(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(dim=30, dim_head=8), "dim must be divisible by dim_head"),
        (dict(dim=32, partition_type="window"), "partition_type"),
        (dict(dim=32, partition_size=0), "partition_size"),
        (dict(dim=32, backend="flex"), "backend"),
        (dict(dim=0), "dim"),
        (dict(dim=32, attn_drop=1.0), "attn_drop"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PartitionAttention(**kwargs)


@pytest.mark.parametrize("partition_type", TYPES)
def test_not_divisible_without_padding_raises(partition_type):
    module = PartitionAttention(16, partition_type, 4, dim_head=8)
    with pytest.raises(ValueError, match=r"\(H, W\)=\(6, 8\).*partition_size=\(4, 4\).*pad=True"):
        module(torch.randn(1, 6, 8, 16))


def test_bad_input_raises():
    module = PartitionAttention(16, "block", 2, dim_head=8)
    with pytest.raises(ValueError, match="channels-last"):
        module(torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match="channels-last"):
        module(torch.randn(4, 4, 16))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        module([[0.0]])
