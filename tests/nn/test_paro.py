"""PAROAttention (arXiv 2506.16054): reordering, calibration, block-sparse execution and fake quantisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from visattn.nn.paro import ParoMixer
from visattn.ops.paro_attention import paro_block_sparse_attention
from visattn.ops.paro_quant import fake_quant_tiles, fake_quant_tokens
from visattn.ops.paro_reorder import axis_orders, block_metrics, inverse_permutation, reorder_permutation


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), prefix=st.integers(0, 2), data=st.data())
def test_every_order_round_trips_exactly(shape: list[int], prefix: int, data: st.DataObject) -> None:
    order = data.draw(st.sampled_from(axis_orders(len(shape))))
    perm = reorder_permutation(tuple(shape), order, prefix)
    inv = inverse_permutation(perm)
    n = prefix + math.prod(shape)
    assert torch.equal(perm[inv], torch.arange(n)) and torch.equal(inv[perm], torch.arange(n))
    x = rand(2, n, 3)
    assert torch.equal(x[:, perm][:, inv], x)
    # position p of the reordered grid holds the token whose coordinates, read in `order`, count up to p
    coords = torch.stack(torch.unravel_index(perm[prefix:] - prefix, tuple(shape)), -1)
    strides = [math.prod([shape[a] for a in order[i + 1:]]) for i in range(len(order))]
    assert torch.equal(sum(coords[:, a] * s for a, s in zip(order, strides, strict=True)), torch.arange(n - prefix))


def test_six_orders_for_a_video_grid() -> None:
    assert len(set(axis_orders(3))) == 6 and axis_orders(3)[0] == (0, 1, 2)


def naive_block_sparse(q, k, v, bitmap, block):
    n = q.shape[2]
    mask = torch.zeros(q.shape[1], n, n, dtype=torch.bool)
    for h in range(q.shape[1]):
        for i in range(n):
            for j in range(n):
                mask[h, i, j] = bool(bitmap[h, i // block, j // block])
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    empty = ~mask.any(-1, keepdim=True)
    return torch.softmax(scores.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0) @ v


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 29), block=st.integers(2, 8), density=st.floats(0.05, 1.0), seed=st.integers(0, 999))
def test_block_sparse_equals_masked_dense_reference(n: int, block: int, density: float, seed: int) -> None:
    q, k, v = (rand(2, 2, n, 4, seed=seed + i) for i in range(3))
    nb = -(-n // block)
    bitmap = torch.rand(2, nb, nb, generator=torch.Generator().manual_seed(seed)) < density
    expected = naive_block_sparse(q, k, v, bitmap, block)
    torch.testing.assert_close(paro_block_sparse_attention(q, k, v, bitmap, block), expected)
    quantless_explicit = paro_block_sparse_attention(q, k, v, bitmap, block, p_bits=8)
    assert (quantless_explicit - expected).abs().max() < 0.05  # INT8 P: close to, not equal to, the reference


def calibrated(heads: int, shape, prefix: int = 0, dim: int = 8, **kw) -> tuple[ParoMixer, list[torch.Tensor]]:
    n = prefix + math.prod(shape)
    q, k, v = (rand(2, heads, n, dim, seed=i) for i in range(3))
    mixer = ParoMixer(num_heads=heads, **kw)
    mixer.calibrate_qk(q, k, shape)
    return mixer, [q, k, v]


def test_full_bitmap_without_quantisation_equals_dense_attention() -> None:
    mixer, (q, k, v) = calibrated(3, (3, 4, 5), prefix=1, block=8, density=1.0, qk_bits=None, p_bits=None)
    assert mixer.bitmap.all()
    torch.testing.assert_close(mixer(q, k, v, (3, 4, 5)), F.scaled_dot_product_attention(q, k, v))


def test_mixer_equals_masked_reference_in_original_order_with_gradients() -> None:
    mixer, (q, k, v) = calibrated(2, (2, 3, 4), block=4, density=0.4, qk_bits=None, p_bits=None)
    mask = mixer.token_mask()
    assert 0 < mask.float().mean() < 1
    expected = visattn.ops.reference.attention(q, k, v, mask=mask)
    torch.testing.assert_close(mixer(q, k, v, (2, 3, 4)), expected)
    tiny, tensors = calibrated(2, (2, 2, 3), dim=2, block=4, density=0.5, qk_bits=None, p_bits=None)
    small = [t[:1].clone().requires_grad_() for t in tensors]
    assert torch.autograd.gradcheck(lambda a, b, c: tiny(a, b, c, (2, 2, 3)), small)


def test_calibration_picks_the_order_that_makes_temporal_attention_block_diagonal() -> None:
    shape, heads = (4, 3, 5), 1  # each token attends only to tokens at its (h, w) in other frames
    n = math.prod(shape)
    coords = torch.stack(torch.unravel_index(torch.arange(n), shape), -1)
    same_hw = (coords[:, None, 1:] == coords[None, :, 1:]).all(-1)
    maps = (same_hw.double() / same_hw.sum(-1, keepdim=True)).expand(heads, n, n)
    mixer = ParoMixer(num_heads=heads, block=4, density=0.1)
    cal = mixer.calibrate(maps, shape)
    assert cal.orders[0][-1] == 0  # time is the innermost axis: blocks of 4 consecutive tokens = one (h, w)
    sparse, _ = block_metrics(maps[0][mixer.perm[0]][:, mixer.perm[0]], 4)
    assert sparse > block_metrics(maps[0], 4)[0]


def test_fake_quant_error_is_bounded_and_int8_beats_int4() -> None:
    x = rand(2, 3, 37, 16)
    for bits in (8, 4):
        err = (fake_quant_tokens(x, 8, bits) - x).abs()
        blocks = torch.nn.functional.pad(x, (0, 0, 0, 3)).unflatten(-2, (-1, 8)).abs().amax((-2, -1))
        step = blocks / (2 ** (bits - 1) - 1)
        bound = step.repeat_interleave(8, -1)[..., :37, None] / 2
        assert (err <= bound + 1e-12).all()
    e8 = (fake_quant_tokens(x, 8, 8) - x).abs().mean()
    e4 = (fake_quant_tokens(x, 8, 4) - x).abs().mean()
    assert 0 < e8 < e4
    p = torch.softmax(rand(2, 16, 24), -1)
    p8, p4 = ((fake_quant_tiles(p, 8, 8, b) - p).abs().mean() for b in (8, 4))
    assert 0 < p8 < p4
    assert (fake_quant_tiles(p, 8, 8, 8) >= 0).all()


def test_quantised_mixer_output_error_int8_below_int4() -> None:
    mixer, (q, k, v) = calibrated(2, (2, 4, 4), block=8, density=1.0, qk_bits=None, p_bits=None)
    exact = mixer(q, k, v, (2, 4, 4))
    errors = []
    for bits in (8, 4):
        mixer.qk_bits = mixer.p_bits = bits
        errors.append((mixer(q, k, v, (2, 4, 4)) - exact).abs().mean())
    assert 0 < errors[0] < errors[1]


def test_registry_workflow_and_errors() -> None:
    mixer = visattn.create_mixer("paro", num_heads=2, block=4)
    q, k, v = (rand(1, 2, 16, 4, seed=i) for i in range(3))
    with pytest.raises(RuntimeError, match="calibrat"):
        mixer(q, k, v, (4, 4))
    mixer.calibrate_qk(q, k, (4, 4))
    assert mixer(q, k, v, (4, 4)).shape == q.shape
    with pytest.raises(ValueError, match="calibration"):
        mixer(*(rand(1, 2, 16, 4, seed=i) for i in range(3)), (2, 8))
    with pytest.raises(ValueError, match="density"):
        ParoMixer(density=0.0)
    with pytest.raises(ValueError, match="qk_bits"):
        ParoMixer(qk_bits=3)
    with pytest.raises(ValueError, match="num_heads=3"):
        ParoMixer(num_heads=3).calibrate(torch.rand(2, 16, 16), (4, 4))
    with pytest.raises(ValueError, match="attn_maps"):
        ParoMixer(num_heads=2).calibrate(torch.rand(2, 15, 15), (4, 4))
    with pytest.raises(ValueError, match="order"):
        reorder_permutation((2, 3), (0, 0))
    with pytest.raises(ValueError, match="bitmap"):
        paro_block_sparse_attention(q, k, v, torch.ones(2, 3, 3, dtype=torch.bool), 4)
