"""materialize / pair_count / density / to_block_mask agree with each other and never need N x N at once."""

from __future__ import annotations

import pytest
import torch

from visattn import masks as M
from visattn.masks import base

MASKS = [
    (M.neighborhood_mask(5, dilation=2), (20, 21)),
    (M.window_mask(4), (16, 12)),
    (M.grid_mask(4), (16, 12)),
    (M.halo_mask(4, 2), (16, 12)),
    (M.axial_mask(0), (9, 11)),
    (M.sliding_window_mask(33, is_causal=True), (300,)),
    (M.radial_mask(), (6, 5, 5)),
    (M.neighborhood_mask(3) | M.axial_mask(1), (9, 9)),
]


@pytest.mark.parametrize(("mask", "shape"), MASKS)
@pytest.mark.parametrize("prefix", [0, 3])
def test_counts_rows_and_dense_agree(mask, shape, prefix):
    dense = M.materialize(mask, shape, prefix)
    n = dense.shape[0]
    assert M.pair_count(mask, shape, prefix) == int(dense.sum())
    assert M.density(mask, shape, prefix) == pytest.approx(int(dense.sum()) / n**2)
    assert torch.equal(mask.rows(shape, 5, 17, prefix), dense[5:17])


def test_density_of_large_grid_does_not_materialise(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("density must not build dense rows for a separable mask")

    monkeypatch.setattr(M.NeighborhoodMask, "_spatial_rows", refuse)
    shape = (256, 256)
    assert M.density(M.neighborhood_mask(7), shape) == pytest.approx(49 / 65536)


def test_generic_pair_count_works_row_chunk_by_row_chunk(monkeypatch):
    monkeypatch.setattr(base, "ROW_BUDGET", 64)
    mask = M.neighborhood_mask(3) | M.axial_mask(0)
    shape = (7, 9)
    assert mask.pair_count(shape) == int(M.materialize(mask, shape).sum())


@pytest.mark.parametrize(("mask", "shape"), MASKS[:4] + MASKS[6:7])
@pytest.mark.parametrize("block", [16, 64])
def test_block_mask_matches_dense(mask, shape, block):
    prefix = 2
    dense = M.materialize(mask, shape, prefix)
    n = dense.shape[0]
    bm = M.to_block_mask(mask, shape, prefix, block_size=block)
    assert bm.seq_lengths == (n, n)
    rebuilt = bm.to_dense()[0, 0].bool()
    blocks = -(-n // block)
    padded = torch.zeros(blocks * block, blocks * block, dtype=torch.bool)
    padded[:n, :n] = dense
    any_block = padded.view(blocks, block, blocks, block).any(dim=(1, 3))
    assert torch.equal(rebuilt, any_block)


def test_materialize_rejects_non_masks():
    with pytest.raises(TypeError, match="mask must be a visattn.masks.Mask"):
        M.materialize("neighborhood", (4, 4))


def test_unravel_is_row_major():
    idx = torch.arange(24)
    t, h, w = M.unravel(idx, (2, 3, 4))
    assert torch.equal(t * 12 + h * 4 + w, idx)
