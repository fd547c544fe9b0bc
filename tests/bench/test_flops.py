"""Attended pairs and the useful-FLOP convention of the benchmark."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visattn
from visattn import masks
from visattn.bench import attended_pairs, gflops_per_second, useful_flops
from visattn.nn import TokenMixer


@settings(max_examples=30, deadline=None)
@given(pairs=st.integers(0, 10**9), heads=st.integers(1, 16), head_dim=st.integers(1, 256), batch=st.integers(1, 8))
def test_useful_flops_formula(pairs, heads, head_dim, batch):
    forward = useful_flops(pairs, heads, head_dim, batch)
    assert forward == 4 * pairs * head_dim * heads * batch
    assert useful_flops(pairs, heads, head_dim, batch, backward=True) == 3 * forward


def test_useful_flops_dense_attention_matches_two_matmuls():
    n, d, h, b = 64, 16, 3, 2
    # q @ k^T and p @ v: each (n x d) @ (d x n)-sized product costs 2 * n * n * d FLOPs per head and batch element
    assert useful_flops(n * n, h, d, b) == 2 * (2 * n * n * d) * h * b


@pytest.mark.parametrize("name, value", [("pairs", -1), ("heads", 1.5), ("head_dim", True), ("batch", "2")])
def test_useful_flops_rejects_bad_counts(name, value):
    args = {"pairs": 10, "heads": 1, "head_dim": 1, "batch": 1, name: value}
    with pytest.raises(ValueError, match=name):
        useful_flops(**args)


def test_gflops_per_second():
    assert gflops_per_second(2_000_000_000, 1000.0) == pytest.approx(2.0)
    assert gflops_per_second(3_000_000, 1.0) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="milliseconds"):
        gflops_per_second(1, 0.0)


@pytest.mark.parametrize("prefix", [0, 2])
def test_softmax_attends_every_pair(prefix):
    mixer = visattn.create_mixer("softmax")
    assert attended_pairs(mixer, (5, 7), prefix) == (prefix + 35) ** 2


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("neighborhood", {"kernel_size": 3}, (7, 9)),
        ("neighborhood", {"kernel_size": 5, "dilation": 2, "is_causal": True}, (11,)),
        ("window", {"window_size": 3}, (6, 9)),
        ("halo", {"block_size": 4, "halo_size": 1}, (8, 8)),
        ("sliding", {"window_size": 5}, (23,)),
        ("radial", {}, (4, 3, 3)),
    ],
)
@pytest.mark.parametrize("prefix", [0, 1])
def test_masked_mixer_pairs_equal_the_materialised_mask(name, kwargs, shape, prefix):
    mixer = visattn.create_mixer(name, **kwargs)
    dense = masks.materialize(mixer.mask, shape, prefix)
    assert attended_pairs(mixer, shape, prefix) == int(dense.sum())


class _CountingMixer(TokenMixer):
    def pair_count(self, shape, num_prefix_tokens):
        return 17 * len(shape) + num_prefix_tokens


class _NoPairsMixer(TokenMixer):
    pass


def test_mixer_own_pair_count_wins_and_unknown_work_is_none():
    assert attended_pairs(_CountingMixer(), (4, 4), 3) == 37
    assert attended_pairs(_NoPairsMixer(), (4, 4), 0) is None


def test_pairs_reject_a_grid_the_mask_cannot_use():
    mixer = visattn.create_mixer("window", window_size=3)
    with pytest.raises(ValueError, match="window_size"):
        attended_pairs(mixer, (8, 8), 0)
    assert torch.is_tensor(masks.materialize(mixer.mask, (6, 6)))
