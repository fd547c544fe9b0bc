"""Layer dissimilarity and max-cut phases (Raptor, arXiv 2512.19941): closed forms of W, the exact max cut against
brute force over every bipartition, planted blocks recovered (contiguous and shuffled, exact and local search), the
eps stopping rule and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens.metrics import cut_value, layer_dissimilarity, layer_summary, max_cut, max_cut_phases

HIERARCHY = torch.tensor([[0.0, 0.3, 1.0, 1.0], [0.3, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.3], [1.0, 1.0, 0.3, 0.0]],
                         dtype=torch.float64)


def planted(sizes: list[int], distance: torch.Tensor | None = None, order: list[int] | None = None,
            noise: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, list[list[int]]]:
    """Layers in blocks: W = distance[block_l, block_m] + uniform noise in [0, noise), symmetric, zero diagonal
    (default distance: 1 between any two blocks); returns W and the blocks."""
    if distance is None:
        distance = 1.0 - torch.eye(len(sizes), dtype=torch.float64)
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    if order is not None:
        labels = labels[torch.tensor(order)]
    gen = torch.Generator().manual_seed(seed)
    weights = distance[labels][:, labels] + torch.rand(len(labels), len(labels), generator=gen,
                                                       dtype=torch.float64) * noise
    weights = (weights + weights.T) / 2
    weights.fill_diagonal_(0.0)
    blocks = [torch.nonzero(labels == b).flatten().tolist() for b in range(len(sizes))]
    return weights, sorted(blocks, key=lambda b: b[0])


def brute_force_max_cut(weights: torch.Tensor) -> float:
    n = weights.shape[0]
    best = 0.0
    for bits in itertools.product([False, True], repeat=n):
        crossing = sum(float(weights[i, j]) for i in range(n) for j in range(i + 1, n) if bits[i] != bits[j])
        best = max(best, crossing)
    return best


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 9), seed=st.integers(0, 1000))
def test_exact_max_cut_equals_brute_force(n, seed):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(n, n, generator=gen, dtype=torch.float64)
    weights = weights + weights.T
    value, side = max_cut(weights)
    assert value == pytest.approx(brute_force_max_cut(weights), abs=1e-9)
    assert value == pytest.approx(cut_value(weights, side), abs=1e-9)
    assert n < 1 or not side[0]


def test_local_search_reaches_the_optimum_on_planted_blocks():
    weights, _ = planted([4, 5, 3, 4], HIERARCHY)
    exact = max_cut(weights)
    local = max_cut(weights, exact_limit=0)
    assert local[0] == pytest.approx(exact[0], abs=1e-9)
    assert local[0] == pytest.approx(cut_value(weights, local[1]), abs=1e-9)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(2, 8), min_size=2, max_size=2), shuffle=st.booleans(), local=st.booleans(),
       seed=st.integers(0, 1000))
def test_phases_recover_two_planted_blocks(sizes, shuffle, local, seed):
    n = sum(sizes)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist() if shuffle else None
    weights, blocks = planted(sizes, order=order, seed=seed)
    assert max_cut_phases(weights, eps=0.05, min_size=1, exact_limit=0 if local else 20) == blocks


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(2, 4), min_size=4, max_size=4), shuffle=st.booleans(), local=st.booleans(),
       seed=st.integers(0, 1000))
def test_phases_recover_four_planted_blocks_in_two_groups(sizes, shuffle, local, seed):
    n = sum(sizes)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist() if shuffle else None
    weights, blocks = planted(sizes, HIERARCHY, order=order, seed=seed)
    assert max_cut_phases(weights, eps=0.02, min_size=1, exact_limit=0 if local else 20) == blocks


def test_eps_stops_the_bisection():
    weights, blocks = planted([3, 3, 3, 3], HIERARCHY)
    assert max_cut_phases(weights, eps=0.02, min_size=1) == blocks
    # the groups {0..5} and {6..11} cut at about 9 * 0.3 = 2.7 < 0.1 * total (about 4.3): they stay whole
    assert max_cut_phases(weights, eps=0.1, min_size=1) == [list(range(6)), list(range(6, 12))]
    # the whole matrix's best cut takes most of the total weight: a large eps keeps one phase
    assert max_cut_phases(weights, eps=1.0) == [list(range(12))]
    # groups smaller than 2 * min_size are not split
    assert max_cut_phases(weights, eps=0.0, min_size=7) == [list(range(12))]


def test_one_block_alone_is_split_because_eps_is_relative_to_its_own_noise():
    weights, _ = planted([6])
    assert len(max_cut_phases(weights, eps=0.05, min_size=1)) > 1


def test_a_matrix_of_zeros_is_one_phase():
    assert max_cut_phases(torch.zeros(5, 5)) == [[0, 1, 2, 3, 4]]


def test_layer_summary_is_the_class_token_and_the_mean_patch():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float64).view(2, 4, 3)
    summary = layer_summary(hidden, num_prefix_tokens=2)
    torch.testing.assert_close(summary[:, 0], hidden[:, 0])
    torch.testing.assert_close(summary[:, 1], hidden[:, 2:].mean(1))
    torch.testing.assert_close(layer_summary(hidden, num_prefix_tokens=0), hidden.mean(1, keepdim=True))


def test_layer_dissimilarity_closed_forms():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64)
    # scaled copies have cosine 1 (W = 0); negated copies cosine -1 (W = 2)
    w = layer_dissimilarity([base, 3.0 * base, -base])
    expected = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [2.0, 2.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(w, expected)
    # orthogonal class tokens and orthogonal mean patches: W = 1
    first = torch.zeros(1, 3, 4, dtype=torch.float64)
    second = torch.zeros(1, 3, 4, dtype=torch.float64)
    first[0, 0, 0] = first[0, 1:, 1] = 1.0
    second[0, 0, 2] = second[0, 1:, 3] = 1.0
    torch.testing.assert_close(layer_dissimilarity(torch.stack([first, second]))[0, 1],
                               torch.tensor(1.0, dtype=torch.float64))


@settings(max_examples=15, deadline=None)
@given(layers=st.integers(1, 5), b=st.integers(1, 3), prefix=st.integers(0, 2), seed=st.integers(0, 1000))
def test_layer_dissimilarity_equals_a_naive_loop(layers, b, prefix, seed):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(layers, b, prefix + 4, 6, generator=gen, dtype=torch.float64)
    got = layer_dissimilarity(hidden, num_prefix_tokens=prefix)
    for l, m in itertools.product(range(layers), repeat=2):
        terms = []
        for image in range(b):
            tokens = ([0] if prefix else []) + ["mean"]
            for token in tokens:
                u = hidden[l, image, prefix:].mean(0) if token == "mean" else hidden[l, image, 0]
                v = hidden[m, image, prefix:].mean(0) if token == "mean" else hidden[m, image, 0]
                terms.append(1.0 - float(u @ v / (u.norm() * v.norm())))
        expected = 0.0 if l == m else sum(terms) / len(terms)
        assert float(got[l, m]) == pytest.approx(expected, abs=1e-9)


def test_similarity_feeds_phases_end_to_end():
    gen = torch.Generator().manual_seed(1)
    directions = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64)).Q[:, :3].T
    layers = []
    for phase, count in enumerate([4, 3, 5]):
        for _ in range(count):
            noise = 0.05 * torch.randn(2, 9, 16, generator=gen, dtype=torch.float64)
            layers.append(directions[phase] + noise)
    phases = max_cut_phases(layer_dissimilarity(layers), eps=0.05, min_size=1)
    assert phases == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11]]


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match=r"weights must be a square \(n, n\) matrix"):
        max_cut(torch.ones(3, 4))
    with pytest.raises(ValueError, match="weights must be symmetric"):
        max_cut_phases(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="weights must be finite"):
        max_cut(torch.tensor([[0.0, float("nan")], [float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="eps must be a number >= 0, got -0.1"):
        max_cut_phases(torch.zeros(3, 3), eps=-0.1)
    with pytest.raises(ValueError, match="min_size must be an int >= 1, got 0"):
        max_cut_phases(torch.zeros(3, 3), min_size=0)
    with pytest.raises(ValueError, match=r"side must be a bool tensor of shape \(3,\)"):
        cut_value(torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="hidden has 2 tokens, none after num_prefix_tokens=2"):
        layer_dissimilarity(torch.ones(2, 1, 2, 4), num_prefix_tokens=2)
    with pytest.raises(ValueError, match=r"hidden must be \(layers, ...\) with 4 dims"):
        layer_dissimilarity(torch.ones(2, 3, 4))
