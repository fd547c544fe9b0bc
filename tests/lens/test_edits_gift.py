"""GIFT (arXiv 2510.22067): saliency and amplification equal loops written from the official code (amazon-science/
GIFT ``inference.py`` and its patched ``eager_attention_forward``); the earlier choices stay available as options;
a constant sink gets no saliency while a token gaining attention gets the most; rows keep their sums."""

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
CONTENT = [9, 11]


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


def official_saliency(layers: list[torch.Tensor], rows: list[int], alpha: float) -> torch.Tensor:
    """inference.py, batch element by batch element: shifts of the whole query span against the token before,
    content rows picked, top H/2 heads by summed shifts per layer, mean, 3-sigma clip, min-max, exp."""
    out = []
    qs, qe, vs, ve = min(QUERY), max(QUERY), min(IMAGE), max(IMAGE)
    for b in range(layers[0].shape[0]):
        attn = torch.stack([p[b] for p in layers])
        attn = attn[:, :, qs:qe + 1, vs:ve + 1] - attn[:, :, qs - 1:qe, vs:ve + 1]
        attn[attn < 0.0] = 0.0
        attn = attn[:, :, [r - qs for r in rows]]
        k = attn.size(1) // 2
        top = torch.topk(attn.sum(dim=(2, 3)), k=k, dim=-1).indices
        top = top[..., None, None].expand(-1, -1, attn.size(-2), attn.size(-1))
        heat = attn.gather(dim=1, index=top).mean((0, 1, 2))
        mean, std = heat.mean(), heat.std()
        heat = torch.clamp(heat, min=(mean - 3 * std).item(), max=(mean + 3 * std).item())
        out.append(torch.exp((heat - heat.min()) / (heat.max() - heat.min()) * alpha))
    return torch.stack(out)


def official_amplify(probs: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """The patched eager_attention_forward on the last row of every batch element."""
    out = probs.clone()
    vs, ve, qs, qe = min(IMAGE), max(IMAGE), min(QUERY), max(QUERY)
    for b in range(probs.shape[0]):
        vision_attn = out[b, :, -1, vs:ve + 1]
        query_attn = out[b, :, -1, qs:qe + 1]
        k = out.size(1) // 2
        vision_heads = torch.topk(vision_attn.sum(dim=-1), k).indices
        chosen = vision_attn[vision_heads]
        original = chosen.sum()
        chosen *= factors
        query_scale = chosen.sum() / original
        vision_attn[vision_heads] = chosen
        query_heads = torch.topk(query_attn.sum(dim=-1), k).indices
        query_attn[query_heads] *= query_scale
        out[b, :, -1] = out[b, :, -1] / out[b, :, -1].sum(dim=-1, keepdim=True)
    return out


def old_saliency(probs: torch.Tensor, rows: list[int], alpha: float) -> torch.Tensor:
    """The earlier reading: shifts between consecutive content words, heads by attention, divided by the max."""
    b_, h_ = probs.shape[:2]
    out = torch.zeros(b_, len(IMAGE), dtype=probs.dtype)
    for b in range(b_):
        a = probs[b][:, rows][:, :, IMAGE]
        for h in a.sum(dim=(1, 2)).topk(h_ // 2).indices.tolist():
            for t in range(1, len(rows)):
                out[b] += torch.relu(a[h, t] - a[h, t - 1])
        out[b] /= out[b].max()
    return torch.exp(alpha * out)


def per_head_amplify(probs: torch.Tensor, factors: torch.Tensor, ratio: float | None) -> torch.Tensor:
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
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.5, 5.0), two_layers=st.booleans())
def test_saliency_and_amplification_match_the_official_code(seed, alpha, two_layers):
    call = make_call(seed)
    base = run(call)
    layers = [base, run(make_call(seed + 1))] if two_layers else [base]
    factors = gaze_shift_saliency(layers if two_layers else base, CONTENT, IMAGE, alpha=alpha)
    torch.testing.assert_close(factors, official_saliency(layers, CONTENT, alpha), atol=1e-12, rtol=1e-10)
    probs = run(call, GazeShiftAmplification(factors[0], QUERY))
    torch.testing.assert_close(probs, official_amplify(base, factors[0]), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(probs.sum(-1), base.sum(-1), atol=1e-12, rtol=0)


def test_query_ratio_is_one_scalar_over_the_vision_heads():
    """Query heads get the pooled gain of the top vision heads, not their own row's gain (the earlier choice)."""
    call = make_call(3)
    base = run(call)
    factors = torch.linspace(1.0, 20.0, len(IMAGE), dtype=torch.float64)
    official = run(call, GazeShiftAmplification(factors, QUERY))
    torch.testing.assert_close(official, official_amplify(base, factors), atol=1e-12, rtol=1e-10)
    assert not torch.allclose(official, per_head_amplify(base, factors, None))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.5, 5.0), ratio=st.one_of(st.none(), st.floats(0.5, 3.0)))
def test_earlier_choices_remain_as_options(seed, alpha, ratio):
    call = make_call(seed)
    base = run(call)
    factors = gaze_shift_saliency(base, QUERY, IMAGE, alpha=alpha, shift="previous_content",
                                  rank_heads="attention", scaling="max")
    torch.testing.assert_close(factors, old_saliency(base, QUERY, alpha), atol=1e-12, rtol=1e-10)
    probs = run(call, GazeShiftAmplification(factors[0], QUERY, query_ratio="per_head" if ratio is None else ratio))
    torch.testing.assert_close(probs, per_head_amplify(base, factors[0], ratio), atol=1e-12, rtol=1e-10)


def test_constant_sink_gets_no_saliency_and_a_rising_token_the_most():
    n = 12
    probs = torch.full((1, 2, n, n), 0.01, dtype=torch.float64)
    probs[..., 1] = 0.5
    for t in range(n):
        probs[:, :, t, 4] = 0.05 * (t + 1)
    factors = gaze_shift_saliency(probs, QUERY, IMAGE, alpha=4.0, head_fraction=1.0)
    assert factors[0, 0] == 1.0
    assert factors[0].argmax() == 3
    assert factors[0, 3] == pytest.approx(math.exp(4.0))


def test_constant_saliency_gives_neutral_factors():
    probs = torch.full((1, 2, 12, 12), 1 / 12, dtype=torch.float64)
    assert torch.equal(gaze_shift_saliency(probs, QUERY, IMAGE), torch.ones(1, len(IMAGE), dtype=torch.float64))


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
        gaze_shift_saliency(torch.rand(1, 2, 5, 5), [3], [0, 1], shift="previous_content")
    with pytest.raises(ValueError, match="content_rows must be >= 1"):
        gaze_shift_saliency(torch.rand(1, 2, 5, 5), [0, 3], [1, 2])
    with pytest.raises(ValueError, match="scaling must be one of"):
        gaze_shift_saliency(torch.rand(1, 2, 5, 5), [3], [0, 1], scaling="minmax")
    with pytest.raises(ValueError, match="query_ratio must be one of"):
        GazeShiftAmplification(torch.ones(6), QUERY, query_ratio="mean")
    with pytest.raises(ValueError, match=r"query_tokens \[40\] out of range for 14 keys"):
        run(call, GazeShiftAmplification(torch.ones(6, dtype=torch.float64), [40]))
    with pytest.raises(ValueError, match="factors must be finite and non-negative"):
        GazeShiftAmplification(-torch.ones(6), QUERY)
