"""Token layouts: positions of windows, received attention and mean distance against written-out loops (float64)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.swin_transformer import SwinTransformerBlock

from visattn.lens.layout import (
    TokenLayout,
    flatten_hidden,
    grid_layout,
    mean_distance,
    partition_layout,
    probed_layout,
    received_attention,
)
from visattn.nn.partition import partition


def random_probs(images: int, layout: TokenLayout, heads: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    prefix = layout.num_prefix_tokens
    logits = torch.randn(images * layout.windows, heads, prefix + layout.queries.shape[1],
                         prefix + layout.keys.shape[1], generator=g, dtype=torch.float64)
    return logits.softmax(dim=-1)


def on_map_pairs(layout: TokenLayout):
    """Every (window, query row, query position, key row, key position) with both tokens on the map, and the number
    of queries on the map, written out token by token."""
    pairs, queries = [], 0
    for w in range(layout.windows):
        for qi, query in enumerate(layout.queries[w].tolist()):
            if query[0] < 0:
                continue
            queries += 1
            pairs += [(w, qi, query, ki, key) for ki, key in enumerate(layout.keys[w].tolist()) if key[0] >= 0]
    return pairs, queries


def naive_received(probs: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    images, heads, prefix = probs.shape[0] // layout.windows, probs.shape[1], layout.num_prefix_tokens
    out = torch.zeros(images, heads, *layout.grid, dtype=torch.float64)
    pairs, queries = on_map_pairs(layout)
    for w, qi, _, ki, (ky, kx) in pairs:
        for b in range(images):
            out[b, :, ky, kx] += probs[b * layout.windows + w, :, prefix + qi, prefix + ki]
    return out / queries


def naive_distance(probs: torch.Tensor, layout: TokenLayout, scale: tuple[float, float]) -> torch.Tensor:
    images, heads, prefix = probs.shape[0] // layout.windows, probs.shape[1], layout.num_prefix_tokens
    total = torch.zeros(images, heads, dtype=torch.float64)
    pairs, queries = on_map_pairs(layout)
    for w, qi, (qy, qx), ki, (ky, kx) in pairs:
        d = math.hypot((qy - ky) * scale[0], (qx - kx) * scale[1])
        for b in range(images):
            total[b] += probs[b * layout.windows + w, :, prefix + qi, prefix + ki] * d
    return total / queries


def halo_like(grid: tuple[int, int], block: int, halo: int) -> TokenLayout:
    """Query blocks and halo windows written out token by token (keys past the border off the map)."""
    queries, keys = [], []
    for by in range(0, grid[0], block):
        for bx in range(0, grid[1], block):
            queries.append([(by + i, bx + j) for i in range(block) for j in range(block)])
            row = []
            for i in range(-halo, block + halo):
                for j in range(-halo, block + halo):
                    y, x = by + i, bx + j
                    row.append((y, x) if 0 <= y < grid[0] and 0 <= x < grid[1] else (-1, -1))
            keys.append(row)
    return TokenLayout(torch.tensor(queries), torch.tensor(keys), grid)


@settings(max_examples=12, deadline=None)
@given(h=st.integers(1, 5), w=st.integers(1, 5), prefix=st.integers(0, 2), images=st.integers(1, 2),
       seed=st.integers(0, 99))
def test_whole_grid_matches_loops(h, w, prefix, images, seed):
    layout = grid_layout((h, w), prefix)
    probs = random_probs(images, layout, 2, seed)
    torch.testing.assert_close(received_attention(probs, layout), naive_received(probs, layout))
    torch.testing.assert_close(mean_distance(probs, layout, (2.0, 3.0)), naive_distance(probs, layout, (2.0, 3.0)))


@pytest.mark.parametrize("grid, block, halo", [((4, 4), 2, 1), ((6, 4), 2, 2), ((3, 3), 3, 1)])
def test_halo_windows_match_loops(grid, block, halo):
    layout = halo_like(grid, block, halo)
    probs = random_probs(2, layout, 3, 0)
    received = received_attention(probs, layout)
    torch.testing.assert_close(received, naive_received(probs, layout))
    torch.testing.assert_close(mean_distance(probs, layout), naive_distance(probs, layout, (1.0, 1.0)))
    assert bool((received.sum(dim=(-1, -2)) < 1).all()), "mass on padded keys is off the map"


def test_received_attention_of_uniform_rows_over_the_whole_map_is_uniform():
    layout = grid_layout((3, 5))
    probs = torch.full((1, 1, 15, 15), 1 / 15, dtype=torch.float64)
    torch.testing.assert_close(received_attention(probs, layout), torch.full((1, 1, 3, 5), 1 / 15,
                                                                             dtype=torch.float64))
    assert float(mean_distance(torch.eye(15, dtype=torch.float64)[None, None], layout)) == 0.0


@pytest.mark.parametrize("kind", ["block", "grid"])
def test_partition_layout_follows_the_partition_formula(kind):
    grid, size = (6, 4), (3, 2)
    layout = partition_layout(lambda c: partition(c, kind, size), grid)
    h1, w1 = grid[0] // size[0], grid[1] // size[1]
    for window in range(layout.windows):
        a, c = divmod(window, w1)
        for token, (y, x) in enumerate(layout.queries[window].tolist()):
            i, j = divmod(token, size[1])
            expected = (a * size[0] + i, c * size[1] + j) if kind == "block" else (i * h1 + a, j * w1 + c)
            assert (y, x) == expected


def test_probed_swin_layout_is_the_rolled_windows():
    block = SwinTransformerBlock(8, (8, 8), num_heads=2, window_size=4, shift_size=2)
    layout = probed_layout(block, "_attn", "attn", (8, 8))
    assert layout.windows == 4 and layout.queries.shape[1] == 16
    for window in range(4):
        a, c = divmod(window, 2)
        for token, (y, x) in enumerate(layout.queries[window].tolist()):
            i, j = divmod(token, 4)
            assert (y, x) == ((a * 4 + i + 2) % 8, (c * 4 + j + 2) % 8)
    assert isinstance(block.attn, torch.nn.Module) and type(block.attn).__name__ == "WindowAttention"


def test_padded_tokens_are_off_the_map():
    def pad_and_cut(c: torch.Tensor) -> torch.Tensor:
        return partition(torch.nn.functional.pad(c, (0, 0, 0, 1, 0, 1)), "block", (2, 2))

    layout = partition_layout(pad_and_cut, (3, 3))
    assert layout.windows == 4
    assert int((~layout.key_inside()).sum()) == 16 - 9
    assert int((~layout.query_inside()).sum()) == 16 - 9


def test_flatten_hidden_tells_the_channel_axis_apart():
    nhwc, nchw = torch.randn(2, 3, 4, 5), torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(flatten_hidden(nhwc, (3, 4)), nhwc.reshape(2, 12, 5))
    torch.testing.assert_close(flatten_hidden(nchw, (3, 4)), nchw.flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="matches the layer's grid"):
        flatten_hidden(nchw, (7, 7))


def test_bad_layouts_and_probs_are_refused():
    with pytest.raises(ValueError, match="queries must be"):
        TokenLayout(torch.zeros(4, 2, dtype=torch.long), torch.zeros(1, 4, 2, dtype=torch.long), (2, 2))
    with pytest.raises(ValueError, match="same number of windows"):
        TokenLayout(torch.zeros(2, 4, 2, dtype=torch.long), torch.zeros(1, 4, 2, dtype=torch.long), (2, 2))
    with pytest.raises(ValueError, match="probs must be"):
        received_attention(torch.rand(1, 1, 5, 5), grid_layout((2, 2)))
