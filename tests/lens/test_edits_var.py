"""VAR (arXiv 2503.03321): equals a per-row loop written from the released code, preserves row sums, edits only the
selected layers / heads / rows, skips the last layer, and names what is missing."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens import STATE, AttentionCall, lens_attention
from visattn.lens.edits import VisualAttentionRedistribution

SINK_DIMS = (3, 7)


def run(call: AttentionCall, *edits) -> tuple[torch.Tensor, torch.Tensor]:
    STATE.edits[:] = list(edits)
    try:
        return lens_attention(call)
    finally:
        STATE.edits.clear()


def make_call(seed: int, batch: int = 2, heads: int = 4, image: tuple[int, int] = (1, 10), text_after: int = 5,
              sinks: tuple[int, ...] = (0, 4), layer: int = 2, channels: int = 64) -> AttentionCall:
    """BOS, image tokens [image[0], image[1]), then text; hidden states with massive activations at ``sinks``."""
    g = torch.Generator().manual_seed(seed)
    n = image[1] + text_after
    q, k, v = (torch.randn(batch, heads, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    hidden = torch.randn(batch, n, channels, generator=g, dtype=torch.float64)
    hidden[:, list(sinks), SINK_DIMS[0]] = 60.0
    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    return AttentionCall(layer=layer, name=f"layers.{layer}", q=q, k=k, v=v, scale=1.5, bias=causal, hidden=hidden,
                         image_tokens=torch.arange(*image))


def naive_var(probs: torch.Tensor, image: list[int], sinks: list[int], rho: float, mass: float, p: float,
              text_queries_only: bool = True) -> torch.Tensor:
    """Row by row, as VARProcessor/HeadFork of the released code (visual and text sinks scaled by p)."""
    out = probs.clone()
    visual_sinks = [j for j in sinks if j in image]
    others = [j for j in image if j not in sinks]
    if not visual_sinks:
        return out
    b_, h_, nq, nk = probs.shape
    for b in range(b_):
        for h in range(h_):
            for i in range(nq):
                row = probs[b, h, i]
                if text_queries_only and nk - nq + i <= max(image):
                    continue
                share = row[visual_sinks].sum() / (row[image] + 1e-6).sum()
                spare = row[others].sum()
                if share > rho or row[image].sum() < mass or spare == 0:
                    continue
                new = row.clone()
                new[sinks] *= p
                new[others] += (1 - p) * row[sinks].sum() * row[others] / spare
                out[b, h, i] = new
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), image_len=st.integers(2, 9), text_after=st.integers(1, 6),
       rho=st.floats(0.05, 1.0), p=st.floats(0.0, 1.0), text_only=st.booleans())
def test_matches_row_loop_and_keeps_row_sums(seed, image_len, text_after, rho, p, text_only):
    call = make_call(seed, image=(1, 1 + image_len), text_after=text_after, sinks=(0, 2))
    edit = VisualAttentionRedistribution(SINK_DIMS, tau=5.0, rho=rho, p=p, num_layers=4,
                                         text_queries_only=text_only)
    base_out, base = run(call)
    out, probs = run(call, edit)
    expected = naive_var(base, list(range(1, 1 + image_len)), [0, 2], rho, 0.2, p, text_only)
    torch.testing.assert_close(probs, expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(probs.sum(-1), base.sum(-1), atol=1e-12, rtol=0)
    torch.testing.assert_close(out, probs @ call.v, atol=1e-12, rtol=1e-10)


def test_changes_exactly_the_selected_rows_heads_and_layers():
    call = make_call(1, text_after=6, layer=0)
    edit = VisualAttentionRedistribution(SINK_DIMS, tau=5.0, rho=0.9, min_visual_mass=0.2, num_layers=3,
                                         skip_first_layers=0, heads=[1, 3], layers=[0, 1])
    _, base = run(call)
    _, probs = run(call, edit)
    selected = edit.selected[0]
    assert selected.any() and (~selected[:, [1, 3]]).any()
    changed = (probs - base).abs().amax(-1) > 1e-15
    assert torch.equal(changed, selected)
    assert not selected[:, [0, 2]].any()
    assert not selected[..., :10].any()
    other_layer = AttentionCall(**{**call.__dict__, "layer": 2, "name": "layers.2"})
    assert torch.equal(run(other_layer, edit)[1], run(other_layer)[1])


def test_neutral_p_one_and_last_layer_leave_attention_unchanged():
    call = make_call(2)
    base_out, base = run(call)
    out, probs = run(call, VisualAttentionRedistribution(SINK_DIMS, tau=5.0, p=1.0, num_layers=4))
    torch.testing.assert_close(probs, base, atol=1e-15, rtol=0)
    last = AttentionCall(**{**call.__dict__, "layer": 3})
    edit = VisualAttentionRedistribution(SINK_DIMS, tau=5.0, rho=1.0, p=0.0)
    edit.check(num_layers=4, num_heads=4)
    assert torch.equal(run(last, edit)[1], run(last)[1])
    assert not torch.equal(run(call, edit)[1], base)


def test_fixed_sink_tokens_need_no_hidden_state():
    call = make_call(3)
    no_hidden = AttentionCall(**{**call.__dict__, "hidden": None})
    by_dims = run(call, VisualAttentionRedistribution(SINK_DIMS, tau=5.0, num_layers=4))[1]
    by_tokens = run(no_hidden, VisualAttentionRedistribution(sink_tokens=[0, 4], num_layers=4))[1]
    torch.testing.assert_close(by_tokens, by_dims, atol=0, rtol=0)


def test_decoding_step_reuses_the_sinks_of_the_prefill():
    call = make_call(4)
    edit = VisualAttentionRedistribution(SINK_DIMS, tau=5.0, rho=1.0, num_layers=4)
    _, full = run(call, VisualAttentionRedistribution(SINK_DIMS, tau=5.0, rho=1.0, num_layers=4))
    prefill = AttentionCall(**{**call.__dict__, "q": call.q[:, :, :-1], "k": call.k[:, :, :-1],
                               "v": call.v[:, :, :-1], "bias": call.bias[:-1, :-1], "hidden": call.hidden[:, :-1]})
    run(prefill, edit)
    step = AttentionCall(**{**call.__dict__, "q": call.q[:, :, -1:], "bias": None, "hidden": call.hidden[:, -1:]})
    _, last = run(step, edit)
    torch.testing.assert_close(last, full[:, :, -1:], atol=1e-12, rtol=1e-10)
    assert edit.selected[2].any()


def test_layers_0_and_1_are_never_edited_by_default():
    """The released code looks for sinks from layer 2 on only (sink_select_layers = range(L)[2:])."""
    for layer, edited in ((0, False), (1, False), (2, True)):
        call = make_call(6, layer=layer)
        edit = VisualAttentionRedistribution(SINK_DIMS, tau=5.0, rho=1.0, num_layers=4)
        assert torch.equal(run(call, edit)[1], run(call)[1]) != edited
        every = VisualAttentionRedistribution(SINK_DIMS, tau=5.0, rho=1.0, num_layers=4, skip_first_layers=0)
        assert not torch.equal(run(call, every)[1], run(call)[1])


def test_a_generated_token_is_never_a_sink_unless_asked():
    """The released code looks for sinks in the prefill only; a generated token with a massive activation is not
    scaled while decoding (sinks_in_generated=True treats it as a sink)."""
    call = make_call(7, sinks=(0, 4, 14))
    prefill = AttentionCall(**{**call.__dict__, "q": call.q[:, :, :-1], "k": call.k[:, :, :-1],
                               "v": call.v[:, :, :-1], "bias": call.bias[:-1, :-1], "hidden": call.hidden[:, :-1]})
    step = AttentionCall(**{**call.__dict__, "q": call.q[:, :, -1:], "bias": None, "hidden": call.hidden[:, -1:]})
    _, base = run(step)
    found = {}
    for flag in (False, True):
        edit = VisualAttentionRedistribution(SINK_DIMS, tau=5.0, rho=1.0, num_layers=4, sinks_in_generated=flag)
        run(prefill, edit)
        _, found[flag] = run(step, edit)
        assert edit._sinks[2][:, -1].tolist() == [flag, flag]
    expected = naive_var(base, list(range(1, 10)), [0, 4], 1.0, 0.2, 0.6)
    torch.testing.assert_close(found[False], expected, atol=1e-12, rtol=1e-10)
    assert not torch.allclose(found[True], found[False])


def test_missing_inputs_raise_clear_errors():
    call = make_call(5)
    with pytest.raises(ValueError, match="hidden=None"):
        run(AttentionCall(**{**call.__dict__, "hidden": None}), VisualAttentionRedistribution(SINK_DIMS, num_layers=4))
    with pytest.raises(ValueError, match="image_tokens=None and grid=None"):
        run(AttentionCall(**{**call.__dict__, "image_tokens": None}),
            VisualAttentionRedistribution(SINK_DIMS, num_layers=4))
    with pytest.raises(ValueError, match="layer count"):
        run(call, VisualAttentionRedistribution(SINK_DIMS))
    with pytest.raises(ValueError, match=r"heads \[7\] out of range"):
        run(call, VisualAttentionRedistribution(SINK_DIMS, num_layers=4, heads=[7]))
    with pytest.raises(ValueError, match=r"heads \[7\] out of range; the model has 4 heads"):
        VisualAttentionRedistribution(SINK_DIMS, heads=[7]).check(num_layers=4, num_heads=4)
    with pytest.raises(ValueError, match="exactly one of sink_dims"):
        VisualAttentionRedistribution()
    with pytest.raises(ValueError, match=r"p must be in \[0.0, 1.0\]"):
        VisualAttentionRedistribution(SINK_DIMS, p=1.5)
