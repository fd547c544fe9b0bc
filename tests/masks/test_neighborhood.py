"""Neighborhood masks against a brute-force per-pair NATTEN definition written here with Python sets."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from visattn import masks as M


def natten_keys_1d(x: int, length: int, k: int, d: int, s: int, causal: bool) -> set[int]:
    """Keys of query x along one axis: NATTEN's rule spelled out on the explicit list of group members."""
    members = [y for y in range(length) if y % d == x % d]
    pos = members.index(x)
    n = len(members)
    if causal:
        last = min((pos // s) * s + s - 1, n - 1)
        window = [y for y in range(n) if y <= pos and last - y < k]
    else:
        left = k // 2
        right = k // 2 if k % 2 else k // 2 - 1
        leader = min((pos // s) * s + s // 2, n - 1)
        center = min(max(leader, left), n - 1 - right)
        window = list(range(center - left, center + right + 1))
    return {members[y] for y in window}


def brute_force(shape, kernel, dilation, stride, causal) -> torch.Tensor:
    coords = list(itertools.product(*[range(n) for n in shape]))
    out = torch.zeros(len(coords), len(coords), dtype=torch.bool)
    for i, cq in enumerate(coords):
        per_axis = [natten_keys_1d(c, n, k, d, s, ca)
                    for c, n, k, d, s, ca in zip(cq, shape, kernel, dilation, stride, causal, strict=True)]
        for j, ck in enumerate(coords):
            out[i, j] = all(c in keys for c, keys in zip(ck, per_axis, strict=True))
    return out


@st.composite
def neighborhood_case(draw, max_tokens=400):
    ndim = draw(st.integers(1, 3))
    shape, kernel, dilation, stride, causal = [], [], [], [], []
    for _ in range(ndim):
        length = draw(st.integers(1, 40 if ndim == 1 else 12 if ndim == 2 else 7))
        d = draw(st.integers(1, max(1, length)))
        k = draw(st.integers(1, max(1, length // d)))
        assume(k * d <= length)
        shape.append(length)
        kernel.append(k)
        dilation.append(d)
        stride.append(draw(st.integers(1, k)))
        causal.append(draw(st.booleans()))
    assume(math.prod(shape) <= max_tokens)
    return tuple(shape), tuple(kernel), tuple(dilation), tuple(stride), tuple(causal)


@settings(max_examples=60, deadline=None)
@given(neighborhood_case())
def test_neighborhood_equals_brute_force(case):
    shape, kernel, dilation, stride, causal = case
    mask = M.neighborhood_mask(kernel, stride, dilation, causal)
    dense = M.materialize(mask, shape)
    assert torch.equal(dense, brute_force(shape, kernel, dilation, stride, causal))
    n = math.prod(shape)
    idx = torch.arange(n)
    assert torch.equal(mask.mask_mod(shape)(0, 0, idx[:, None], idx[None, :]), dense)
    assert M.pair_count(mask, shape) == int(dense.sum())


@settings(max_examples=40, deadline=None)
@given(neighborhood_case())
def test_non_causal_sees_exactly_prod_kernel(case):
    shape, kernel, dilation, stride, _ = case
    dense = M.materialize(M.neighborhood_mask(kernel, stride, dilation, False), shape)
    assert torch.all(dense.sum(-1) == math.prod(kernel))


@settings(max_examples=40, deadline=None)
@given(neighborhood_case())
def test_causal_never_sees_the_future(case):
    shape, kernel, dilation, stride, _ = case
    causal = (True,) * len(shape)
    dense = M.materialize(M.neighborhood_mask(kernel, stride, dilation, causal), shape)
    coords = torch.tensor(list(itertools.product(*[range(n) for n in shape])))
    future = (coords[None, :, :] > coords[:, None, :]).any(-1)
    assert not (dense & future).any()
    assert dense.diagonal().all()


def test_even_kernel_has_one_fewer_key_on_the_right():
    dense = M.materialize(M.neighborhood_mask(4), (10,))
    assert dense[5].nonzero().flatten().tolist() == [3, 4, 5, 6]


def test_window_shifts_inward_at_borders():
    dense = M.materialize(M.neighborhood_mask(5), (9,))
    assert dense[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert dense[8].nonzero().flatten().tolist() == [4, 5, 6, 7, 8]


def test_stride_equal_kernel_is_blocked_window_attention():
    shape = (12, 9)
    na = M.materialize(M.neighborhood_mask((4, 3), stride=(4, 3)), shape)
    assert torch.equal(na, M.materialize(M.window_mask((4, 3)), shape))


def test_prefix_tokens_are_global_both_ways():
    mask = M.neighborhood_mask(3)
    dense = M.materialize(mask, (6, 5), num_prefix_tokens=2)
    assert dense[:2].all() and dense[:, :2].all()
    assert torch.equal(dense[2:, 2:], M.materialize(mask, (6, 5)))
    assert M.pair_count(mask, (6, 5), 2) == int(dense.sum())


@pytest.mark.parametrize(
    ("kwargs", "shape", "match"),
    [
        ({"kernel_size": 7}, (5, 5), "kernel_size \\* dilation"),
        ({"kernel_size": 3, "dilation": 3}, (8,), "kernel_size \\* dilation"),
        ({"kernel_size": 3, "stride": 4}, (9,), "stride must be <= kernel_size"),
        ({"kernel_size": (3, 3)}, (9,), "kernel_size must have one entry per spatial axis"),
        ({"kernel_size": 3}, (4, 4, 4, 4), "at most 3 dimensions"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        M.materialize(M.neighborhood_mask(**kwargs), shape)


@pytest.mark.parametrize("kwargs", [{"kernel_size": 0}, {"kernel_size": 3, "dilation": 0}, {"kernel_size": -1}])
def test_non_positive_arguments_raise(kwargs):
    with pytest.raises(ValueError, match="must be >= 1"):
        M.neighborhood_mask(**kwargs)


def test_non_integer_kernel_raises_type_error():
    with pytest.raises(TypeError, match="kernel_size"):
        M.neighborhood_mask(3.0)


NATTEN_CASES = [
    ((9, 7), (3, 3), (1, 2), (1, 1), (False, False)),
    ((10, 9), (4, 3), (2, 1), (2, 3), (True, False)),
    ((12,), (5,), (2,), (3,), (True,)),
    ((5, 6, 7), (3, 2, 3), (1, 2, 2), (2, 1, 3), (False, True, False)),
]


@pytest.mark.parametrize(("shape", "kernel", "dilation", "stride", "causal"), NATTEN_CASES)
def test_attention_through_the_mask_matches_natten(shape, kernel, dilation, stride, causal):
    """NATTEN itself (CPU path, pip package) as the oracle for the semantics."""
    import natten

    from visattn.ops import attention

    torch.manual_seed(0)
    b, h, d = 1, 2, 8
    n = math.prod(shape)
    q, k, v = (torch.randn(b, *shape, h, d) for _ in range(3))
    na = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(shape)]
    out = na(q, k, v, kernel_size=kernel, stride=stride, dilation=dilation, is_causal=causal)

    def heads_first(t):
        return t.reshape(b, n, h, d).transpose(1, 2)

    mask = M.materialize(M.neighborhood_mask(kernel, stride, dilation, causal), shape)
    expected = attention(heads_first(q), heads_first(k), heads_first(v), mask)
    assert torch.allclose(heads_first(out), expected, atol=1e-5)
