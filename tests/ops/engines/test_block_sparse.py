"""Block-sparse execution equals masked attention on the naive dense reference (radial masks, both rules), computes
only the blocks that hold allowed pairs, and handles prefix tokens, batches, rows that see nothing and gradients."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn import masks
from visattn._checks import Shape
from visattn.masks import Mask
from visattn.ops import block_sparse_attention, block_sparse_plan, explain, masked_attention
from visattn.ops.engines import block_sparse
from visattn.ops.engines.block_sparse import block_tiles, default_blocks
from visattn.ops.engines.kernel_ops import tile_attention
from visattn.ops.native import native_library

pytestmark = pytest.mark.usefixtures("one_thread")


def qkv(batch, heads, n, dim, dim_v=None, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, n, d, generator=gen, dtype=dtype) for d in (dim, dim, dim_v or dim))


def reference(q, k, v, mask, shape, prefix=0):
    return masked_attention(q, k, v, mask, shape, prefix, backend="reference")


def plan_coverage(plan) -> torch.Tensor:
    """The grid x (prefix + grid) pairs the plan computes as allowed, rebuilt from its groups and tiles."""
    bq, bk, nq, nk = plan.query_block, plan.key_block, plan.num_query_blocks, plan.num_key_blocks
    prefix_blocks = -(-plan.num_prefix_tokens // bk)
    out = torch.zeros(nq * bq, (nk + prefix_blocks) * bk, dtype=torch.bool)
    for group in plan.groups:
        size = group.query_blocks.shape[0]
        full = group.full_keys.view(size, group.num_full)
        masked = group.masked_keys.view(size, group.num_masked)
        for row, qb in enumerate(group.query_blocks.tolist()):
            rows = slice(qb * bq, (qb + 1) * bq)
            for kb in full[row].tolist():
                out[rows, kb * bk : (kb + 1) * bk] |= True
            for slot, kb in enumerate(masked[row].tolist()):
                out[rows, kb * bk : (kb + 1) * bk] |= plan.tiles[group.masked_tiles[row, slot]]
    grid = plan.grid_tokens
    prefix_cols = out[:grid, nk * bk : nk * bk + plan.num_prefix_tokens]
    return torch.cat([prefix_cols, out[:grid, :grid]], dim=1)


radial_cases = st.fixed_dictionaries({
    "rule": st.sampled_from(["paper", "code"]),
    "frames": st.integers(1, 8),
    "spatial": st.one_of(st.tuples(st.integers(1, 12)), st.tuples(st.integers(1, 4), st.integers(1, 5))),
    "mask_block": st.integers(1, 9),
    "model_type": st.sampled_from(["hunyuan", "wan"]),
    "query_block": st.integers(1, 12),
    "key_block": st.integers(1, 12),
    "prefix": st.integers(0, 3),
})


@settings(max_examples=40, deadline=None)
@given(case=radial_cases, batch=st.integers(1, 2), heads=st.integers(1, 2))
def test_equals_reference(case, batch, heads):
    mask = masks.radial_mask(case["rule"], block_size=case["mask_block"], model_type=case["model_type"],
                             decimation_threshold=8)
    shape = (case["frames"], *case["spatial"])
    prefix = case["prefix"]
    q, k, v = qkv(batch, heads, prefix + math.prod(shape), 4, dim_v=3)
    out = block_sparse_attention(q, k, v, mask, shape, prefix, query_block=case["query_block"],
                                 key_block=case["key_block"])
    torch.testing.assert_close(out, reference(q, k, v, mask, shape, prefix), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(native_library("tile_attention") is None, reason="no native tile kernel on this machine")
@settings(max_examples=40, deadline=None)
@given(case=radial_cases, batch=st.integers(1, 2), heads=st.integers(1, 2))
def test_block_tiles_on_the_fused_kernel_equal_reference(case, batch, heads):
    mask = masks.radial_mask(case["rule"], block_size=case["mask_block"], model_type=case["model_type"],
                             decimation_threshold=8)
    shape = (case["frames"], *case["spatial"])
    prefix = case["prefix"]
    q, k, v = qkv(batch, heads, prefix + math.prod(shape), 4, dim_v=3)
    tiles = block_tiles(mask, shape, prefix, case["query_block"], case["key_block"])
    torch.testing.assert_close(tile_attention(q, k, v, tiles, prefix), reference(q, k, v, mask, shape, prefix),
                               rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(case=radial_cases)
def test_plan_computes_exactly_the_mask(case):
    """The union of the computed tiles is the mask (prefix keys included), and every computed block holds an
    allowed pair or is padding inside a group."""
    mask = masks.radial_mask(case["rule"], block_size=case["mask_block"], model_type=case["model_type"])
    shape = (case["frames"], *case["spatial"])
    prefix = case["prefix"]
    plan = block_sparse_plan(mask, shape, prefix, case["query_block"], case["key_block"])
    dense = masks.materialize(mask, shape, prefix)[prefix:]
    assert torch.equal(plan_coverage(plan), dense)
    nq, nk = plan.num_query_blocks, plan.num_key_blocks
    grid = math.prod(shape)
    padded = torch.zeros(nq * plan.query_block, nk * plan.key_block, dtype=torch.bool)
    padded[:grid, :grid] = dense[:, prefix:]
    occupied = int(padded.view(nq, plan.query_block, nk, plan.key_block).any(dim=(1, 3)).sum())
    prefix_blocks = -(-prefix // plan.key_block)
    assert occupied + nq * prefix_blocks <= plan.attended_blocks <= (occupied + nq * prefix_blocks) * 9 / 8 + nq


def test_code_rule_on_its_own_blocks_computes_only_kept_blocks():
    mask = masks.radial_mask("code", block_size=16, model_type="wan")
    shape = (12, 8, 8)
    plan = block_sparse_plan(mask, shape, 0, *default_blocks(mask, shape))
    kept = mask.code_blocks(shape)
    assert plan.attended_blocks == int(kept.sum())
    assert all(group.num_masked == 0 for group in plan.groups)
    assert plan.score_elements == masks.pair_count(mask, shape)


@pytest.mark.parametrize(("rule", "shape", "prefix"), [("paper", (5, 3, 4), 2), ("code", (6, 7), 1),
                                                       ("paper", (3, 10), 0)])
def test_gradients_equal_reference(rule, shape, prefix):
    mask = masks.radial_mask(rule, block_size=5)
    leaves = [t.requires_grad_() for t in qkv(2, 2, prefix + math.prod(shape), 3, seed=1)]
    out = block_sparse_attention(*leaves, mask, shape, prefix, query_block=4, key_block=3)
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    expected = reference(*ref_leaves, mask, shape, prefix)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    for name, got, want in zip("qkv", torch.autograd.grad(out, leaves, grad),
                               torch.autograd.grad(expected, ref_leaves, grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"grad {name}: {m}")


def test_gradcheck():
    mask = masks.radial_mask()
    leaves = [t.requires_grad_() for t in qkv(1, 1, 1 + 4 * 3, 2, seed=3)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: block_sparse_attention(q, k, v, mask, (4, 3), 1, query_block=2, key_block=3), leaves)


@dataclass(frozen=True)
class GappedMask(Mask):
    """A test mask where every third grid query sees no grid key, the others see the keys up to themselves."""

    def _spatial_mod(self, shape: Shape):
        return lambda q_idx, kv_idx: (q_idx % 3 != 0) & (kv_idx <= q_idx)


@pytest.mark.parametrize("prefix", [0, 2])
def test_rows_that_see_nothing_give_zero(prefix):
    shape = (4, 5)
    q, k, v = qkv(2, 2, prefix + 20, 4, seed=4)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = block_sparse_attention(*leaves, GappedMask(), shape, prefix, query_block=4, key_block=4)
    expected = reference(q, k, v, GappedMask(), shape, prefix)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    if prefix == 0:
        assert torch.equal(out[:, :, ::3], torch.zeros_like(out[:, :, ::3]))
    grads = torch.autograd.grad(out.sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)


def test_block_sparse_engine_is_chosen_for_radial_masks():
    mask = masks.radial_mask("code", block_size=8)
    shape = (12, 5, 5)
    assert explain(mask, shape, 1).engine == "block_sparse"
    q, k, v = qkv(2, 2, 1 + 300, 4, seed=5)
    fast = masked_attention(q, k, v, mask, shape, 1, backend="fast")
    torch.testing.assert_close(fast, reference(q, k, v, mask, shape, 1), rtol=1e-12, atol=1e-12)


def test_fast_path_declines_where_blocks_are_dense():
    mask = masks.radial_mask()
    q, k, v = qkv(1, 1, 4 * 6, 4)
    assert explain(mask, (4, 6)).engine == "dense"
    torch.testing.assert_close(masked_attention(q, k, v, mask, (4, 6)), reference(q, k, v, mask, (4, 6)))


def test_paper_rule_default_blocks_float32():
    """Default blocks on 16 frames of 256 tokens: float32 within 1e-5 of the float64 reference."""
    mask = masks.radial_mask()
    shape = (16, 16, 16)
    q, k, v = qkv(1, 2, 1 + 4096, 8, seed=6)
    assert explain(mask, shape, 1).engine == "block_sparse"
    expected = reference(q, k, v, mask, shape, 1)
    got = masked_attention(q.float(), k.float(), v.float(), mask, shape, 1, backend="fast")
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_runs_within_tolerance():
    mask = masks.radial_mask("code", block_size=8)
    shape = (12, 5, 5)
    q, k, v = qkv(1, 2, 300, 8, seed=7)
    expected = reference(q, k, v, mask, shape)
    got = block_sparse_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, shape)
    torch.testing.assert_close(got.double(), expected, rtol=3e-2, atol=3e-2)


def test_bad_input():
    q, k, v = qkv(1, 1, 24, 4)
    mask = masks.radial_mask()
    with pytest.raises(ValueError, match="query_block"):
        block_sparse_attention(q, k, v, mask, (4, 6), query_block=0)
    with pytest.raises(ValueError, match="key_block"):
        block_sparse_attention(q, k, v, mask, (4, 6), key_block=True)
    with pytest.raises(TypeError, match="mask"):
        block_sparse_attention(q, k, v, "radial", (4, 6))
    with pytest.raises(ValueError, match="N=24"):
        block_sparse_attention(q, k, v, mask, (5, 6))
    with pytest.raises(ValueError, match="shape"):
        block_sparse_attention(q, k, v, mask, (24,))


@pytest.mark.parametrize(("mask", "shape", "prefix", "blocks"), [
    (masks.radial_mask(), (8, 6, 6), 0, (8, 4)),
    (masks.radial_mask(), (6, 24), 1, (8, 8)),
    (GappedMask(), (4, 6), 4, (4, 4)),
])
def test_two_part_merge(mask, shape, prefix, blocks, monkeypatch):
    """Groups with full and masked slots: the log-sum-exp merge of two flash runs equals the reference, forward
    and backward, and equals the single masked SDPA call it replaces."""
    plan = block_sparse_plan(mask, shape, prefix, *blocks)
    assert any(g.num_full and g.num_masked for g in plan.groups)
    leaves = [t.requires_grad_() for t in qkv(2, 2, prefix + math.prod(shape), 4, seed=8)]
    out = block_sparse_attention(*leaves, mask, shape, prefix, None, *blocks)
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    expected = reference(*ref_leaves, mask, shape, prefix)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
    for got, want in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(expected, ref_leaves, grad),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    monkeypatch.setattr(block_sparse, "_two_part_ok", lambda q, v: False)
    single = block_sparse_attention(*leaves, mask, shape, prefix, None, *blocks)
    torch.testing.assert_close(single, out, rtol=1e-12, atol=1e-12)


def test_gapped_rows_use_the_empty_row_merge():
    plan = block_sparse_plan(GappedMask(), (4, 6), 4, 4, 4)
    assert any(g.masked_row_empty is not None for g in plan.groups)


def test_query_blocks_that_see_no_key_keep_the_graph():
    """The radial 'code' rule on 4 tokens in blocks of 4 leaves a query block with no key: its zero output must still
    carry gradients (zeros, as the dense reference's fully masked rows do), found by hypothesis in the entry-point
    gradient test."""
    mask = masks.radial_mask(rule="code", block_size=4, model_type="hunyuan")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 4, 1, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = masked_attention(q, k, v, mask, (4, 1, 1), 0, backend="block_sparse")
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    reference = torch.autograd.grad(masked_attention(q, k, v, mask, (4, 1, 1), 0, backend="reference").sum(), (q, k, v))
    for got, want in zip(grads, reference, strict=True):
        torch.testing.assert_close(got, want)
