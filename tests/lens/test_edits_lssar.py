"""LSSAR re-weighting at inference (arXiv 2501.13428): equals the formula with n_i read from the call's mask, p = 1
with large offsets changes nothing, only chosen heads and layers move, decoding calls are refused by name."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens import STATE, AttentionCall, lens_attention
from visattn.lens.edits import AttentionReweighting


def run(call: AttentionCall, *edits) -> torch.Tensor:
    STATE.edits[:] = list(edits)
    try:
        return lens_attention(call)[1]
    finally:
        STATE.edits.clear()


def make_call(seed: int, n: int, causal: bool) -> AttentionCall:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 3, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    bias = None
    if causal:
        bias = torch.zeros(n, n, dtype=torch.float64).masked_fill(torch.ones(n, n).triu(1).bool(),
                                                                  torch.finfo(torch.float64).min)
    return AttentionCall(layer=0, name="m", q=q, k=k, v=v, scale=0.5, bias=bias)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 12), p=st.floats(1.0, 15.0), causal=st.booleans())
def test_equals_the_formula_row_by_row(seed, n, p, causal):
    call = make_call(seed, n, causal)
    base = run(call)
    probs = run(call, AttentionReweighting(p))
    for i in range(n):
        visible = i + 1 if causal else n
        offset = 0.0 if i < 3 else 1.0
        lifted = torch.relu(base[..., i, :] * visible - offset) ** p
        total = lifted.sum(-1, keepdim=True)
        expected = torch.where(total > 0, lifted / torch.where(total > 0, total, 1.0), 0.0)
        torch.testing.assert_close(probs[..., i, :], expected, atol=1e-10, rtol=1e-8)


def test_neutral_and_unselected_heads_and_layers_stay():
    call = make_call(0, 9, True)
    base = run(call)
    torch.testing.assert_close(run(call, AttentionReweighting(1.0, offset_rows=9)), base, atol=1e-15, rtol=0)
    probs = run(call, AttentionReweighting(3.0, heads=[1]))
    assert torch.equal(probs[:, [0, 2]], base[:, [0, 2]]) and not torch.equal(probs[:, 1], base[:, 1])
    counts = torch.arange(1, 10, dtype=torch.float64).view(9, 1)
    at_or_below_uniform = (base[:, 1] * counts <= 1)[:, 3:]
    assert at_or_below_uniform.any() and (probs[:, 1, 3:][at_or_below_uniform] == 0).all()
    other = AttentionCall(**{**call.__dict__, "layer": 1})
    assert torch.equal(run(other, AttentionReweighting(3.0, layers=[0])), run(other))


def test_bad_input_is_named():
    call = make_call(1, 6, True)
    decode = AttentionCall(**{**call.__dict__, "q": call.q[:, :, -1:], "bias": None})
    with pytest.raises(ValueError, match="1 queries for 6 keys"):
        run(decode, AttentionReweighting())
    with pytest.raises(ValueError, match="p must be a finite number >= 1"):
        AttentionReweighting(0.5)
    with pytest.raises(ValueError, match=r"heads \[3\] out of range"):
        run(call, AttentionReweighting(heads=[3]))
