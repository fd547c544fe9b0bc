"""Mean attention distance (arXiv 2603.18541): identity attention -> 0, hand-computed grids, a naive double loop
over token pairs in float64 (1-3 dim grids, prefix tokens), gradients and bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens.metrics import grid_positions, mean_attention_distance

grids = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


def naive_distance(probs: torch.Tensor, grid: tuple[int, ...], prefix: int, renormalize: bool) -> torch.Tensor:
    coords = list(itertools.product(*[range(s) for s in grid]))
    n = len(coords)
    out = torch.zeros(probs.shape[:-2], dtype=probs.dtype)
    for lead in itertools.product(*[range(s) for s in probs.shape[:-2]]):
        total = 0.0
        for i in range(n):
            row = [float(probs[lead][prefix + i, prefix + j]) for j in range(n)]
            mass = sum(row)
            if renormalize:
                row = [a / mass for a in row] if mass > 0 else [0.0] * n
            total += sum(row[j] * math.dist(coords[i], coords[j]) for j in range(n))
        out[lead] = total / n
    return out


@settings(max_examples=30, deadline=None)
@given(grid=grids, prefix=st.integers(0, 3))
def test_identity_attention_has_distance_zero(grid, prefix):
    n = prefix + math.prod(grid)
    probs = torch.eye(n, dtype=torch.float64).expand(2, 3, n, n)
    assert torch.equal(mean_attention_distance(probs, grid, prefix), torch.zeros(2, 3, dtype=torch.float64))


def test_uniform_attention_on_a_two_by_two_grid():
    # from any corner the four keys lie at 0, 1, 1, sqrt(2)
    probs = torch.full((1, 4, 4), 0.25, dtype=torch.float64)
    torch.testing.assert_close(mean_attention_distance(probs, (2, 2)),
                               torch.tensor([(2 + math.sqrt(2)) / 4], dtype=torch.float64))


def test_attention_to_the_next_token_on_a_line_is_one_patch():
    n = 6
    probs = torch.zeros(n, n, dtype=torch.float64)
    probs[torch.arange(n), (torch.arange(n) + 1) % n] = 1.0
    # five rows at distance 1, the last wraps to distance 5: (5 + 5) / 6
    torch.testing.assert_close(mean_attention_distance(probs, (n,)), torch.tensor(10 / 6, dtype=torch.float64))


def test_prefix_mass_counts_zero_unless_renormalized():
    probs = torch.zeros(3, 3, dtype=torch.float64)
    probs[:, 0] = 0.5          # half of each row on the class token
    probs[1, 2] = 0.5          # grid token 0 -> grid token 1
    probs[2, 1] = 0.5          # grid token 1 -> grid token 0
    torch.testing.assert_close(mean_attention_distance(probs, (2,), num_prefix_tokens=1),
                               torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(mean_attention_distance(probs, (2,), num_prefix_tokens=1, renormalize=True),
                               torch.tensor(1.0, dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(grid=grids, prefix=st.integers(0, 2), renormalize=st.booleans(), seed=st.integers(0, 1000))
def test_distance_equals_a_naive_pair_loop(grid, prefix, renormalize, seed):
    n = prefix + math.prod(grid)
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(2, 2, n, n, generator=gen, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(mean_attention_distance(probs, grid, prefix, renormalize),
                               naive_distance(probs, grid, prefix, renormalize))


def test_grid_positions_are_row_major_patch_coordinates():
    expected = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]],
                            dtype=torch.float32)
    assert torch.equal(grid_positions((2, 2, 2)), expected)
    assert torch.equal(grid_positions(3), torch.tensor([[0.0], [1.0], [2.0]]))


def test_distance_gradient():
    logits = torch.randn(2, 7, 7, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: mean_attention_distance(torch.softmax(x, -1), (2, 3), 1), (logits,))


def test_float32_and_bfloat16_within_stated_tolerance():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 4, 50, 50, generator=gen, dtype=torch.float64), dim=-1)
    exact = mean_attention_distance(probs, (7, 7), 1)
    torch.testing.assert_close(mean_attention_distance(probs.float(), (7, 7), 1), exact.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean_attention_distance(probs.bfloat16(), (7, 7), 1).float(), exact.float(),
                               atol=5e-2, rtol=2e-2)


def test_bad_input_names_the_argument():
    probs = torch.full((2, 5, 5), 0.2)
    with pytest.raises(ValueError, match=r"probs has 5 tokens but num_prefix_tokens \+ prod\(grid\) = 0 \+ 4"):
        mean_attention_distance(probs, (2, 2))
    with pytest.raises(ValueError, match="num_prefix_tokens must be an int >= 0, got -1"):
        mean_attention_distance(probs, (2, 2), num_prefix_tokens=-1)
    with pytest.raises(ValueError, match=r"probs must end in a square \(N, N\) map"):
        mean_attention_distance(torch.ones(2, 5, 4), (2, 2), 1)
    with pytest.raises(ValueError, match="grid must contain positive sizes"):
        mean_attention_distance(probs, (0, 5))
    with pytest.raises(ValueError, match="grid must have at most 3 dimensions"):
        mean_attention_distance(probs, (1, 1, 1, 5))
    with pytest.raises(TypeError, match="probs must be a torch.Tensor"):
        mean_attention_distance(probs.numpy(), (5,))
