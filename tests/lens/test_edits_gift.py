"""GIFT (arXiv 2510.22067): gaze-shift saliency and the amplification equal per-row loops, a constant sink gets
no saliency while a token gaining attention gets the most, rows keep their sums, only the chosen rows move."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens import STATE, AttentionCall, lens_attention
from visattn.lens.edits import GazeShiftAmplification, gaze_shift_saliency

IMAGE = list(range(1, 7))
QUERY = [8, 9, 10, 11]


def run(call: AttentionCall, *edits) -> torch.Tensor:
    STATE.edits[:] = list(edits)
    try:
        return lens_attention(call)[1]
    finally:
        STATE.edits.clear()


def make_call(seed: int, n: int = 14, heads: int = 4) -> AttentionCall:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, heads, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    return AttentionCall(layer=0, name="m", q=q, k=k, v=v, scale=0.7, bias=causal, image_tokens=torch.tensor(IMAGE))


def naive_saliency(probs: torch.Tensor, rows: list[int], alpha: float) -> torch.Tensor:
    b_, h_ = probs.shape[:2]
    out = torch.zeros(b_, len(IMAGE), dtype=probs.dtype)
    for b in range(b_):
        a = probs[b][:, rows][:, :, IMAGE]
        top = a.sum(dim=(1, 2)).topk(h_ // 2).indices.tolist()
        for h in top:
            for t in range(1, len(rows)):
                out[b] += torch.relu(a[h, t] - a[h, t - 1])
        out[b] /= out[b].max()
    return torch.exp(alpha * out)


def naive_amplify(probs: torch.Tensor, factors: torch.Tensor, ratio: float | None) -> torch.Tensor:
    out = probs.clone()
    b_, h_, n, _ = probs.shape
    i = n - 1
    for b in range(b_):
        vision = (probs[b, :, i][:, IMAGE]).sum(-1).topk(h_ // 2).indices.tolist()
        query = (probs[b, :, i][:, QUERY]).sum(-1).topk(h_ // 2).indices.tolist()
        for h in range(h_):
            row = probs[b, h, i].clone()
            vis = row[IMAGE]
            r = (vis * factors).sum() / vis.sum() if ratio is None else ratio
            if h in vision:
                row[IMAGE] = vis * factors
            if h in query:
                row[QUERY] = row[QUERY] * r
            out[b, h, i] = row / row.sum() * probs[b, h, i].sum()
    return out


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.5, 5.0), ratio=st.one_of(st.none(), st.floats(0.5, 3.0)))
def test_saliency_and_amplification_match_row_loops(seed, alpha, ratio):
    call = make_call(seed)
    base = run(call)
    factors = gaze_shift_saliency(base, QUERY, IMAGE, alpha=alpha)
    torch.testing.assert_close(factors, naive_saliency(base, QUERY, alpha), atol=1e-12, rtol=1e-10)
    probs = run(call, GazeShiftAmplification(factors[0], QUERY, query_ratio=ratio))
    expected = naive_amplify(base, factors[0], ratio)
    torch.testing.assert_close(probs, expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(probs.sum(-1), base.sum(-1), atol=1e-12, rtol=0)


def test_constant_sink_gets_no_saliency_and_a_rising_token_the_most():
    n = 12
    probs = torch.full((1, 2, n, n), 0.01, dtype=torch.float64)
    probs[..., 1] = 0.5
    for t, row in enumerate(QUERY):
        probs[:, :, row, 4] = 0.05 * (t + 1)
    factors = gaze_shift_saliency(probs, QUERY, IMAGE, alpha=4.0, head_fraction=1.0)
    assert factors[0, 0] == 1.0
    assert factors[0].argmax() == 3
    assert factors[0, 3] == pytest.approx(math.exp(4.0))


def test_neutral_factors_change_nothing_and_only_last_rows_move():
    call = make_call(1)
    base = run(call)
    ones = torch.ones(len(IMAGE), dtype=torch.float64)
    assert torch.equal(run(call, GazeShiftAmplification(ones, QUERY, query_ratio=1.0, rows="all")), base)
    factors = torch.linspace(1, 30, len(IMAGE), dtype=torch.float64)
    probs = run(call, GazeShiftAmplification(factors, QUERY, heads=[0, 1]))
    changed = (probs != base).any(-1)
    assert changed[:, :, -1].any()
    assert not changed[:, :, :-1].any() and not changed[:, 2:].any()


def test_bad_input_is_named():
    call = make_call(2)
    with pytest.raises(ValueError, match="factors cover 3 image tokens, layer 0 has 6"):
        run(call, GazeShiftAmplification(torch.ones(3, dtype=torch.float64), QUERY))
    with pytest.raises(ValueError, match="at least two content-word positions"):
        gaze_shift_saliency(torch.rand(1, 2, 5, 5), [3], [0, 1])
    with pytest.raises(ValueError, match=r"query_tokens \[40\] out of range for 14 keys"):
        run(call, GazeShiftAmplification(torch.ones(6, dtype=torch.float64), [40]))
    with pytest.raises(ValueError, match="factors must be finite and non-negative"):
        GazeShiftAmplification(-torch.ones(6), QUERY)
