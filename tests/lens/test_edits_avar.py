"""AVAR-style modulation (arXiv 2603.03825): image attention scaled up, system attention down, rows renormalised
to their old sums, as a per-row loop; factors 1 change nothing; only the chosen rows and heads move."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens import STATE, AttentionCall, lens_attention
from visattn.lens.edits import VisualSystemModulation

SYSTEM = [0, 1, 2]
IMAGE = [3, 4, 5, 6, 7]


def run(call: AttentionCall, *edits) -> torch.Tensor:
    STATE.edits[:] = list(edits)
    try:
        return lens_attention(call)[1]
    finally:
        STATE.edits.clear()


def make_call(seed: int, n: int = 12) -> AttentionCall:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    return AttentionCall(layer=1, name="m", q=q, k=k, v=v, scale=0.5, bias=causal, image_tokens=torch.tensor(IMAGE))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), visual=st.floats(0.0, 5.0), system=st.floats(0.0, 2.0))
def test_matches_a_row_loop_and_keeps_row_sums(seed, visual, system):
    call = make_call(seed)
    base = run(call)
    probs = run(call, VisualSystemModulation(SYSTEM, visual_factor=visual, system_factor=system))
    expected = base.clone()
    for index in torch.cartesian_prod(*(torch.arange(s) for s in base.shape[:3])).tolist():
        row = base[tuple(index)].clone()
        row[IMAGE] *= visual
        row[SYSTEM] *= system
        if row.sum() > 0:
            expected[tuple(index)] = row / row.sum()
    torch.testing.assert_close(probs, expected, atol=1e-12, rtol=1e-10)


def test_neutral_factors_and_unselected_rows_heads_layers_stay():
    call = make_call(1)
    base = run(call)
    assert torch.equal(run(call, VisualSystemModulation(SYSTEM, visual_factor=1.0, system_factor=1.0)), base)
    probs = run(call, VisualSystemModulation(SYSTEM, visual_factor=3.0, system_factor=0.2, rows=[9, 11], heads=[2]))
    changed = (probs != base).any(-1)
    expected = torch.zeros_like(changed)
    expected[:, 2, [9, 11]] = True
    assert torch.equal(changed, expected)
    other = AttentionCall(**{**call.__dict__, "layer": 0})
    edit = VisualSystemModulation(SYSTEM, visual_factor=3.0, system_factor=0.2, layers=[1])
    assert torch.equal(run(other, edit), run(other))


def test_bad_input_is_named():
    call = make_call(2)
    with pytest.raises(ValueError, match=r"system_tokens overlap the image tokens at \[3\]"):
        run(call, VisualSystemModulation([0, 3], visual_factor=2.0, system_factor=0.5))
    with pytest.raises(TypeError, match="missing 2 required keyword-only arguments"):
        VisualSystemModulation(SYSTEM)
    with pytest.raises(ValueError, match="image_tokens=None and grid=None"):
        run(AttentionCall(**{**call.__dict__, "image_tokens": None}),
            VisualSystemModulation(SYSTEM, visual_factor=2.0, system_factor=0.5))
    with pytest.raises(ValueError, match=r"visual_factor must be in \[0.0, None\]"):
        VisualSystemModulation(SYSTEM, visual_factor=-1.0, system_factor=0.5)


def test_gradients_pass_through_the_edit():
    call = make_call(3, n=9)
    q = call.q[:1, :1].clone().requires_grad_(True)
    edit = VisualSystemModulation(SYSTEM, visual_factor=2.0, system_factor=0.5)

    def attend(q):
        STATE.edits[:] = [edit]
        try:
            return lens_attention(AttentionCall(**{**call.__dict__, "q": q, "k": call.k[:1, :1],
                                                   "v": call.v[:1, :1], "bias": call.bias[:9, :9]}))[0]
        finally:
            STATE.edits.clear()

    assert torch.autograd.gradcheck(attend, (q,))
