"""Radial masks against per-pair definitions written here: the paper's equation pair by pair, and the released
code's block rule transcribed step by step (dense frame-pair masks, padding, float column densities)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn import masks as M
from visattn.masks.radial import RELEASES


def paper_pair(i: int, k: int, j: int, l: int, s: int) -> bool:
    """The paper's equation for one (query, key) pair, in real arithmetic."""
    dt = abs(i - j)
    b = 2 ** math.floor(math.log2(max(dt, 1)))
    band = b <= s and abs(k - l) + 1 <= s / b
    diagonal = dt % math.ceil(b / s) == 0 and k == l
    return band or diagonal


def paper_brute(frames: int, s: int) -> torch.Tensor:
    n = frames * s
    out = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for kv in range(n):
            out[q, kv] = paper_pair(q // s, q % s, kv // s, kv % s, s)
    return out


def release_frame_pair(i: int, j: int, s: int, block: int, decay: float, model_type: str, threshold: int,
                       release: str = "2025-11"):
    """Dense [s, s] mask of frame pair (i, j) as the official code builds it (window, then decimation, or sink),
    in each published version: 2025-06 sink on frame 0 for every model; 2025-07 sink for Wan only; 2025-11 Wan's
    window at frame distance 1 is the whole frame instead of s // 2."""
    dist = abs(i - j)
    sink = model_type == "wan" if release != "2025-06" else True
    if sink and j == 0:
        return torch.ones(s, s, dtype=torch.bool)
    if (model_type == "wan" and dist == 0) or (model_type == "hunyuan" and dist <= 1):
        width = s
    elif model_type == "wan" and dist == 1:
        width = s // 2 if release in ("2025-06", "2025-07") else s
    else:
        length = 2 ** s.bit_length() / 2 ** dist.bit_length() * decay
        width = length if length >= block else block
    idx = torch.arange(s)
    local = (idx[None, :] - idx[:, None]).abs() <= width
    length = 2 ** s.bit_length() / 2 ** dist.bit_length()
    if length < threshold and dist % int(threshold / length) != 0:
        local = torch.zeros(s, s, dtype=torch.bool)
    return local


def release_shrink(padded: torch.Tensor, block: int) -> torch.Tensor:
    """Blocks whose share of 'dense' columns (density > 1/3) among non-empty columns exceeds 0.6."""
    nb = padded.shape[0] // block
    tiles = padded[: nb * block, : nb * block].reshape(nb, block, nb, block)
    col_density = tiles.sum(dim=1) / block
    nonzero = col_density > 0
    dense = col_density > 1 / 3
    return dense.sum(-1) / (nonzero.sum(-1) + 1e-9) > 0.6


def release_blocks(frames: int, s: int, block: int, decay: float, model_type: str, threshold: int,
                   release: str = "2025-11"):
    video = frames * s
    nb = -(-video // block)
    out = torch.zeros(nb, nb, dtype=torch.bool)
    per_frame = -(-s // block)
    for i in range(frames):
        for j in range(frames):
            local = release_frame_pair(i, j, s, block, decay, model_type, threshold, release)
            r_row, r_col = (i * s) % block, (j * s) % block
            padded = torch.zeros(r_row + per_frame * block, r_col + per_frame * block, dtype=torch.bool)
            padded[r_row : r_row + s, r_col : r_col + s] = local
            kept = release_shrink(padded, block)
            row0, col0 = i * s // block, j * s // block
            target = out[row0 : row0 + kept.shape[0], col0 : col0 + kept.shape[1]]
            target |= kept[: target.shape[0], : target.shape[1]]
    out[video // block :, :] = True
    out[:, video // block :] = True
    return out


def code_brute(frames, s, block, decay, model_type, threshold, prefix=0, release="2025-11") -> torch.Tensor:
    blocks = release_blocks(frames, s, block, decay, model_type, threshold, release)
    token_block = torch.arange(frames * s) // block
    spatial = blocks[token_block][:, token_block]
    n = prefix + frames * s
    out = torch.ones(n, n, dtype=torch.bool)
    out[prefix:, prefix:] = spatial
    return out


def with_prefix(spatial: torch.Tensor, prefix: int) -> torch.Tensor:
    n = prefix + spatial.shape[0]
    out = torch.ones(n, n, dtype=torch.bool)
    out[prefix:, prefix:] = spatial
    return out


def mod_matrix(mask: M.Mask, shape, prefix: int) -> torch.Tensor:
    n = prefix + math.prod(shape)
    idx = torch.arange(n)
    zero = torch.zeros((), dtype=torch.long)
    return mask.mask_mod(shape, prefix)(zero, zero, idx[:, None], idx[None, :])


spatial_shapes = st.one_of(st.tuples(st.integers(1, 24)), st.tuples(st.integers(1, 5), st.integers(1, 5)))


@settings(max_examples=30, deadline=None)
@given(frames=st.integers(1, 12), spatial=spatial_shapes, prefix=st.integers(0, 2))
def test_paper_rule_matches_equation(frames, spatial, prefix):
    shape = (frames, *spatial)
    s = math.prod(spatial)
    mask = M.radial_mask()
    expected = with_prefix(paper_brute(frames, s), prefix)
    dense = M.materialize(mask, shape, prefix)
    assert torch.equal(dense, expected)
    assert torch.equal(mod_matrix(mask, shape, prefix), expected)
    assert M.pair_count(mask, shape, prefix) == int(expected.sum())


@settings(max_examples=40, deadline=None)
@given(frames=st.integers(1, 12), spatial=spatial_shapes, block=st.integers(1, 16),
       decay=st.sampled_from([0.25, 0.5, 1.0, 1.5, 3.0]), model_type=st.sampled_from(["hunyuan", "wan"]),
       threshold=st.sampled_from([4, 16, 128]), prefix=st.integers(0, 2), release=st.sampled_from(RELEASES))
def test_code_rule_matches_release(frames, spatial, block, decay, model_type, threshold, prefix, release):
    shape = (frames, *spatial)
    s = math.prod(spatial)
    mask = M.radial_mask("code", block, decay, model_type, threshold, release)
    expected = code_brute(frames, s, block, decay, model_type, threshold, prefix, release)
    assert torch.equal(mask.code_blocks(shape),
                       release_blocks(frames, s, block, decay, model_type, threshold, release))
    assert torch.equal(M.materialize(mask, shape, prefix), expected)
    assert torch.equal(mod_matrix(mask, shape, prefix), expected)
    assert M.pair_count(mask, shape, prefix) == int(expected.sum())


@pytest.mark.parametrize(
    ("frames", "spatial", "model_type", "decay"),
    [(8, (10, 30), "hunyuan", 1.0), (6, (16, 16), "wan", 1.0), (9, (5, 40), "wan", 0.5), (5, (330,), "hunyuan", 2.0)],
)
@pytest.mark.parametrize("release", ["2025-06", "2025-07", "2025-11"])
def test_code_rule_release_block_size(frames, spatial, model_type, decay, release):
    """The code's own setting: 128-token blocks, threshold 128, frame sizes that straddle blocks."""
    s = math.prod(spatial)
    mask = M.radial_mask("code", 128, decay, model_type, release=release)
    blocks = mask.code_blocks((frames, *spatial))
    assert torch.equal(blocks, release_blocks(frames, s, 128, decay, model_type, 128, release))
    assert not bool(blocks.all()) or frames * s <= 3 * 128


def test_releases_differ_where_the_code_changed():
    """Default = the current code; each change shows on a case built to expose it (8 frames of 16 x 16 tokens)."""
    shape, s = (8, 16, 16), 256
    assert M.radial_mask("code").release == RELEASES[-1] == "2025-11"
    hunyuan = {r: M.radial_mask("code", 16, model_type="hunyuan", release=r).code_blocks(shape)
               for r in RELEASES}
    wan = {r: M.radial_mask("code", 16, model_type="wan", release=r).code_blocks(shape) for r in RELEASES}
    per_frame = s // 16
    last_frame_rows, first_frame_cols = slice(7 * per_frame, 8 * per_frame), slice(0, per_frame)
    # the first release's HunyuanVideo sink: the last frame sees all of frame 0; later releases do not
    assert hunyuan["2025-06"][last_frame_rows, first_frame_cols].all()
    assert not hunyuan["2025-07"][last_frame_rows, first_frame_cols].all()
    assert torch.equal(hunyuan["2025-07"], hunyuan["2025-11"])
    # Wan at frame distance 1: half band (s // 2) until 2025-11, the whole frame since
    near = (slice(2 * per_frame, 3 * per_frame), slice(3 * per_frame, 4 * per_frame))
    assert not wan["2025-07"][near].all() and wan["2025-11"][near].all()
    assert torch.equal(wan["2025-06"], wan["2025-07"])


@settings(max_examples=25, deadline=None)
@given(frames=st.integers(1, 12), spatial=spatial_shapes, rule=st.sampled_from(["paper", "code"]),
       start=st.integers(0, 400), length=st.integers(0, 60), prefix=st.integers(0, 2))
def test_rows_match_mask_mod(frames, spatial, rule, start, length, prefix):
    shape = (frames, *spatial)
    mask = M.radial_mask(rule, block_size=5)
    n = prefix + math.prod(shape)
    start = min(start, n)
    stop = min(n, start + length)
    assert torch.equal(mask.rows(shape, start, stop, prefix), mod_matrix(mask, shape, prefix)[start:stop])


@pytest.mark.parametrize("frames", [2, 3, 4, 7, 8, 16, 33, 64])
@pytest.mark.parametrize("s", [1, 3, 16, 50, 256, 1024])
def test_paper_nonzero_bound(frames, s):
    """Paper, Sec. 4: the mask has at most 4 s^2 f log2 f non-zeros."""
    count = M.pair_count(M.radial_mask(), (frames, s))
    assert count <= 4 * s * s * frames * math.log2(frames)


def test_paper_is_sparse_at_scale():
    """Density falls as the number of frames grows (O(n log n) pairs)."""
    densities = [M.density(M.radial_mask(), (f, 64)) for f in (8, 32, 128)]
    assert densities[0] > densities[1] > densities[2]


def test_code_rule_is_block_constant():
    mask = M.radial_mask("code", block_size=8, decay_factor=1.0)
    shape = (6, 5, 7)
    dense = M.materialize(mask, shape)
    n = dense.shape[0]
    padded = torch.zeros(-(-n // 8) * 8, -(-n // 8) * 8, dtype=torch.bool)
    padded[:n, :n] = dense
    tiles = padded.view(-1, 8, padded.shape[0] // 8, 8)
    assert torch.equal(tiles[:-1, :, :-1].any(dim=(1, 3)), tiles[:-1, :, :-1].all(dim=(1, 3)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rule": "fast"}, "rule"),
        ({"block_size": 0}, "block_size"),
        ({"block_size": 2.0}, "block_size"),
        ({"decay_factor": 0.0}, "decay_factor"),
        ({"decay_factor": float("nan")}, "decay_factor"),
        ({"model_type": "sora"}, "model_type"),
        ({"decimation_threshold": 0}, "decimation_threshold"),
        ({"release": "2025-08"}, "release"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M.radial_mask(**kwargs)


@pytest.mark.parametrize("rule", ["paper", "code"])
def test_one_dimensional_shape_rejected(rule):
    with pytest.raises(ValueError, match="shape"):
        M.materialize(M.radial_mask(rule), (16,))
