"""PAINT (arXiv 2501.12206): the logit boost on the last row equals the released code's in-place update, only the
chosen rows / heads / layers / image tokens move, masked logits stay masked, the token sets follow the IQR rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens import STATE, AttentionCall, lens_attention
from visattn.lens.edits import ImbalancedAttentionBoost, paint_token_sets


def logits_of(call: AttentionCall, *edits) -> torch.Tensor:
    seen = []
    STATE.recorders[:] = [lambda c, t: seen.append(t["logits"])]
    STATE.edits[:] = list(edits)
    try:
        lens_attention(call)
    finally:
        STATE.edits.clear()
        STATE.recorders.clear()
    return seen[0]


def make_call(seed: int, n: int = 12, image: tuple[int, int] = (2, 8), layer: int = 3) -> AttentionCall:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 4, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    return AttentionCall(layer=layer, name="m", q=q, k=k, v=v, scale=0.5, bias=causal,
                         image_tokens=torch.arange(*image))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0, 2), beta=st.floats(0, 2),
       local=st.lists(st.integers(0, 5), max_size=4, unique=True),
       summary=st.lists(st.integers(0, 5), max_size=3, unique=True))
def test_matches_the_released_in_place_update(seed, alpha, beta, local, summary):
    call = make_call(seed)
    base = logits_of(call)
    edited = logits_of(call, ImbalancedAttentionBoost(local, summary, alpha=alpha, beta=beta))
    expected = base.clone()
    top, bottom = torch.tensor(local, dtype=torch.long) + 2, torch.tensor(summary, dtype=torch.long) + 2
    expected[:, :, -1, top] = expected[:, :, -1, top].abs() * alpha + expected[:, :, -1, top]
    expected[:, :, -1, bottom] = expected[:, :, -1, bottom].abs() * beta + expected[:, :, -1, bottom]
    torch.testing.assert_close(edited, expected, atol=0, rtol=0)


def test_only_chosen_heads_rows_and_layers_change_and_masks_stay():
    call = make_call(1)
    edit = ImbalancedAttentionBoost([0, 3], [5], rows=[6, 11], heads=[2], layers=[3])
    base, edited = logits_of(call), logits_of(call, edit)
    changed = edited != base
    assert changed[:, 2, 6].any() and changed[:, 2, 11].any()
    assert not changed[:, [0, 1, 3]].any()
    assert torch.equal(changed.any(-1)[:, 2].nonzero()[:, 1].unique(), torch.tensor([6, 11]))
    assert set(changed.nonzero()[:, -1].tolist()) <= {2, 5, 7}
    assert torch.isneginf(edited[:, :, 6, 7:]).all()
    other = AttentionCall(**{**call.__dict__, "layer": 0})
    assert torch.equal(logits_of(other, edit), logits_of(other))


def test_neutral_parameters_leave_logits_unchanged():
    call = make_call(2)
    assert torch.equal(logits_of(call, ImbalancedAttentionBoost([0, 1, 2], [3], alpha=0.0, beta=0.0, rows="all")),
                       logits_of(call))


def test_huggingface_finfo_min_masks_are_not_unmasked():
    call = make_call(3)
    hf_mask = torch.zeros(12, 12, dtype=torch.float64).masked_fill(torch.ones(12, 12).triu(1).bool(),
                                                                   torch.finfo(torch.float64).min)
    call = AttentionCall(**{**call.__dict__, "bias": hf_mask})
    edited = logits_of(call, ImbalancedAttentionBoost([0, 1, 2, 3, 4, 5], alpha=0.7, rows="all"))
    probs = torch.softmax(edited, -1)
    assert (probs[:, :, 3, 4:] == 0).all()


def test_token_sets_follow_top_quarter_and_iqr_outliers():
    g = torch.Generator().manual_seed(0)
    first = torch.rand(3, 40, generator=g)
    last = torch.rand(3, 40, generator=g)
    last[:, [5, 17, 33]] += 5.0
    local, summary = paint_token_sets(first, last)
    summed = last.sum(0).numpy()
    q1, q3 = np.percentile(summed, 25), np.percentile(summed, 75)
    count = int((summed > q3 + 1.5 * (q3 - q1)).sum())
    assert sorted(summary.tolist()) == [5, 17, 33] and count == 3
    top = set(torch.topk(first.sum(0), 10).indices.tolist())
    assert set(local.tolist()) == top - {5, 17, 33}


def test_bad_input_is_named():
    call = make_call(4)
    with pytest.raises(ValueError, match=r"local_tokens \[6\] out of range for the 6 image tokens"):
        logits_of(call, ImbalancedAttentionBoost([6]))
    with pytest.raises(ValueError, match="image_tokens=None and grid=None"):
        logits_of(AttentionCall(**{**call.__dict__, "image_tokens": None}), ImbalancedAttentionBoost([0]))
    with pytest.raises(ValueError, match=r"heads \[4\] out of range"):
        logits_of(call, ImbalancedAttentionBoost([0], heads=[4]))
    with pytest.raises(ValueError, match="rows must be 'all', 'last'"):
        ImbalancedAttentionBoost([0], rows="first")
    with pytest.raises(TypeError, match="local_tokens must contain ints"):
        ImbalancedAttentionBoost([0.5])
