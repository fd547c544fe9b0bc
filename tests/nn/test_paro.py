"""ParoMixer (PAROAttention, arXiv 2506.16054): calibration, the mixer against the masked reference, packed-bit
masks, per-timestep masks, fake quantisation in the mixer, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import visattn
from visattn.nn.paro import ParoMixer
from visattn.ops.paro_attention import paro_block_sparse_attention
from visattn.ops.paro_bitmap import pack_bitmap
from visattn.ops.paro_reorder import block_bitmap, block_metrics


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


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
    with pytest.raises(ValueError, match="timestep must be an int in >= 0, got -1"):
        mixer(q, k, v, (4, 4), timestep=-1)


def test_mask_is_stored_as_packed_bits_and_gives_the_results_of_the_boolean_mask() -> None:
    """The buffer is uint8 with 8 key blocks a byte (8x fewer bytes than the bool bitmap it encodes), and the mixer's
    output equals block-sparse attention on the unpacked booleans and the dense reference on the token mask."""
    mixer, (q, k, v) = calibrated(2, (4, 4, 4), block=4, density=0.3, qk_bits=None, p_bits=None)
    packed, bitmap = mixer.packed_bitmap, mixer.bitmap
    assert packed.dtype == torch.uint8 and bitmap.shape == (2, 16, 16) and packed.shape == (2, 16, 2)
    assert packed.nbytes * 8 == bitmap.nbytes and "packed_bitmap" in mixer.state_dict()
    assert torch.equal(pack_bitmap(bitmap), packed) and 0 < bitmap.float().mean() < 1
    reordered = [t.gather(2, mixer.perm[None, :, :, None].expand(2, -1, -1, 8)) for t in (q, k, v)]
    unpacked_out = paro_block_sparse_attention(*reordered, bitmap, 4)
    expected = unpacked_out.gather(2, mixer.inverse[None, :, :, None].expand(2, -1, -1, 8))
    torch.testing.assert_close(mixer(q, k, v, (4, 4, 4)), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(mixer(q, k, v, (4, 4, 4)),
                               visattn.ops.reference.attention(q, k, v, mask=mixer.token_mask()))


def timestep_maps(shape, heads=2, steps=3):
    """Maps that change with the step: step 0 attends within a frame, step 1 across frames at one (h, w), step 2
    within a row; every head alike."""
    n = math.prod(shape)
    coords = torch.stack(torch.unravel_index(torch.arange(n), shape), -1)
    rules = [coords[:, None, 0] == coords[None, :, 0], (coords[:, None, 1:] == coords[None, :, 1:]).all(-1),
             (coords[:, None, :2] == coords[None, :, :2]).all(-1)]
    maps = [(r.double() / r.sum(-1, keepdim=True)).expand(heads, n, n) for r in rules[:steps]]
    return torch.stack(maps)


def test_per_timestep_masks_select_by_timestep_and_match_their_own_reference() -> None:
    shape = (4, 2, 4)
    maps = timestep_maps(shape)
    mixer = ParoMixer(num_heads=2, block=4, density=0.25, qk_bits=None, p_bits=None)
    cal = mixer.calibrate_timesteps(maps, shape)
    assert mixer.num_timesteps == 3 and mixer.packed_bitmap.shape == (3, 2, 8, 1) and len(cal.orders) == 2
    masks = [mixer.token_mask(t) for t in range(3)]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    q, k, v = (rand(1, 2, 32, 4, seed=i) for i in range(3))
    for t in range(3):
        expected = visattn.ops.reference.attention(q, k, v, mask=masks[t])
        torch.testing.assert_close(mixer(q, k, v, shape, timestep=t), expected)
        mixer.set_timestep(t)
        torch.testing.assert_close(mixer(q, k, v, shape), expected)
        for head in range(2):  # each step's mask keeps the blocks of that step's own (reordered) map
            perm = mixer.perm[head]
            reordered = maps[t, head][perm][:, perm]
            assert torch.equal(mixer.step_bitmap(t)[head], block_bitmap(reordered, 4, 0.25))


def test_per_timestep_errors() -> None:
    mixer = ParoMixer(num_heads=2, block=4, density=0.5)
    mixer.calibrate_timesteps(timestep_maps((4, 2, 4)), (4, 2, 4))
    q = rand(1, 2, 32, 4)
    with pytest.raises(ValueError, match="timestep is required: this ParoMixer holds a mask for each of 3"):
        mixer(q, q, q, (4, 2, 4))
    with pytest.raises(ValueError, match=r"timestep must be an int in 0 \.\. 2, got 3"):
        mixer(q, q, q, (4, 2, 4), timestep=3)
    with pytest.raises(ValueError, match="timestep must be an int"):
        mixer.set_timestep(1.5)
    with pytest.raises(ValueError, match="attn_maps must have num_heads=2"):
        mixer.calibrate_timesteps(torch.rand(2, 32, 32), (4, 2, 4))


def test_forward_reads_no_count_back_from_the_bitmap(monkeypatch):
    """The tiles per row come from calibration (a Python int), so forward never copies the bitmap to the host."""
    import visattn.ops.paro_attention as paro_ops

    torch.manual_seed(0)
    mixer = visattn.create_mixer("paro", num_heads=2, block=4, density=0.5)
    q, k, v = (torch.randn(1, 2, 64, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mixer.calibrate_qk(q.detach(), k.detach(), (8, 8))
    seen = []
    real = paro_ops.paro_block_sparse_attention
    monkeypatch.setattr("visattn.nn.paro.paro_block_sparse_attention",
                        lambda *a, **kw: seen.append(kw.get("kept_blocks")) or real(*a, **kw))
    out = mixer(q, k, v, (8, 8))
    bitmap = mixer.step_bitmap()
    assert seen == [int(bitmap.sum(-1).max())]
    reordered = [mixer._reorder(t, mixer.perm) for t in (q, k, v)]
    mixer.kept_blocks = None  # as after loading a state dict: the count is read from the bitmap
    torch.testing.assert_close(mixer(q, k, v, (8, 8)), out)
    assert seen[-1] is None
    torch.testing.assert_close(real(*reordered, bitmap, 4, kept_blocks=seen[0]), real(*reordered, bitmap, 4))
    with pytest.raises(ValueError, match="kept_blocks"):
        real(*reordered, bitmap, 4, kept_blocks=bitmap.shape[-1] + 1)
