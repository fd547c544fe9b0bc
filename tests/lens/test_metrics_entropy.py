"""Attention entropy (CARVE, arXiv 2509.06461): closed forms (uniform -> ln N, one-hot -> 0), a naive per-row loop
in float64, CARVE's layer mean by hand, gradients and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens.metrics import attention_entropy, visual_attention_entropy


def random_probs(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=gen, dtype=torch.float64) * 2, dim=-1)


def naive_entropy(probs: torch.Tensor, keys: list[int], renormalize: bool) -> torch.Tensor:
    out = torch.zeros(probs.shape[:-1], dtype=probs.dtype)
    for index in torch.cartesian_prod(*[torch.arange(s) for s in probs.shape[:-1]]).reshape(-1, probs.dim() - 1):
        row = [float(probs[tuple(index)][k]) for k in keys]
        total = sum(row)
        if renormalize:
            row = [a / total for a in row] if total > 0 else [0.0] * len(row)
        out[tuple(index)] = -sum(a * math.log(a) for a in row if a > 0)
    return out


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), rows=st.integers(1, 5))
def test_uniform_attention_has_entropy_ln_n(n, rows):
    probs = torch.full((2, rows, n), 1.0 / n, dtype=torch.float64)
    torch.testing.assert_close(attention_entropy(probs), torch.full((2, rows), math.log(n), dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 30), data=st.data())
def test_uniform_over_the_selected_keys_has_entropy_ln_of_their_count(n, data):
    keys = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    probs = torch.zeros(3, n, dtype=torch.float64)
    probs[:, keys] = 1.0 / n
    expected = torch.full((3,), math.log(len(keys)), dtype=torch.float64)
    torch.testing.assert_close(attention_entropy(probs, keys=keys), expected)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[keys] = True
    torch.testing.assert_close(attention_entropy(probs, keys=mask), expected)


def test_one_hot_attention_has_entropy_zero():
    probs = torch.eye(7, dtype=torch.float64).expand(2, 3, 7, 7)
    assert torch.equal(attention_entropy(probs), torch.zeros(2, 3, 7, dtype=torch.float64))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 12), q=st.integers(1, 6), renormalize=st.booleans(), seed=st.integers(0, 1000),
       data=st.data())
def test_entropy_equals_a_naive_row_loop(n, q, renormalize, seed, data):
    keys = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    probs = random_probs(2, q, n, seed=seed)
    torch.testing.assert_close(attention_entropy(probs, keys=keys, renormalize=renormalize),
                               naive_entropy(probs, sorted(keys), renormalize))


def test_hand_computed_rows():
    probs = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor([1.5 * math.log(2), 0.0], dtype=torch.float64)
    torch.testing.assert_close(attention_entropy(probs), expected)
    # keys 1, 2 renormalised: (1/2, 1/2) -> ln 2; the second row has no mass there -> 0, not NaN
    torch.testing.assert_close(attention_entropy(probs, keys=slice(1, 3)),
                               torch.tensor([math.log(2), 0.0], dtype=torch.float64))
    # raw terms over keys 1, 2: -2 * 0.25 ln 0.25 = ln 2
    torch.testing.assert_close(attention_entropy(probs, keys=[1, 2], renormalize=False),
                               torch.tensor([math.log(2), 0.0], dtype=torch.float64))


def test_visual_attention_entropy_is_the_layer_mean_of_the_head_mean_last_row():
    # layer 0: both heads' last row uniform over visual keys 1..2 -> ln 2; layer 1: heads one-hot on keys 1 and 2,
    # mean (1/2, 1/2) -> ln 2 as well; layer 2: both heads on key 1 -> 0. Mean = 2 ln 2 / 3.
    probs = torch.zeros(3, 1, 2, 2, 4, dtype=torch.float64)
    probs[..., 0, 0] = 1.0
    probs[0, :, :, 1, 1:3] = 0.5
    probs[1, :, 0, 1, 1] = 1.0
    probs[1, :, 1, 1, 2] = 1.0
    probs[2, :, :, 1, 1] = 1.0
    expected = torch.tensor([2 * math.log(2) / 3], dtype=torch.float64)
    torch.testing.assert_close(visual_attention_entropy(probs, visual=[1, 2]), expected)
    torch.testing.assert_close(visual_attention_entropy(list(probs), visual=slice(1, 3)), expected)
    # query 0 looks only at key 0, outside the visual keys: entropy 0
    assert float(visual_attention_entropy(probs, visual=[1, 2], query=0)) == 0.0


def test_entropy_gradient():
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: attention_entropy(torch.softmax(x, -1), keys=[0, 2, 3]), (logits,))


def test_float32_and_bfloat16_within_stated_tolerance():
    probs = random_probs(2, 4, 9, 9)
    exact = attention_entropy(probs)
    torch.testing.assert_close(attention_entropy(probs.float()), exact.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention_entropy(probs.bfloat16()).float(), exact.float(), atol=5e-2, rtol=2e-2)


def test_bad_input_names_the_argument():
    probs = random_probs(2, 3, 4)
    with pytest.raises(TypeError, match="probs must be a torch.Tensor"):
        attention_entropy(probs.tolist())
    with pytest.raises(TypeError, match="probs must be a floating-point"):
        attention_entropy(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="probs must have at least 2 dims"):
        attention_entropy(torch.ones(4))
    with pytest.raises(ValueError, match=r"keys indices \[4\] out of range for 4 tokens"):
        attention_entropy(probs, keys=[0, 4])
    with pytest.raises(ValueError, match=r"keys as a bool mask must have shape \(4,\)"):
        attention_entropy(probs, keys=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="keys must be None, a slice"):
        attention_entropy(probs, keys="visual")
    with pytest.raises(ValueError, match="query 5 out of range for 3 query rows"):
        visual_attention_entropy(random_probs(2, 1, 2, 3, 4), visual=[1], query=5)
    with pytest.raises(ValueError, match=r"probs\[1\] has shape"):
        visual_attention_entropy([random_probs(1, 2, 3, 4), random_probs(1, 2, 3, 5)], visual=[1])
    with pytest.raises(ValueError, match=r"probs\[0\] must have at least 4 dims"):
        visual_attention_entropy([random_probs(2, 3, 4)], visual=[1])
