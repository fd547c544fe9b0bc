"""Affine scaling at inference (arXiv 2602.23057): A' = alpha A + (alpha_ma - alpha) / n_i over visible keys, with
alpha fixed or phi(W_a x) from the hidden state (as visattn.nn's affine-scaled weights); alpha = 1 changes nothing."""

from __future__ import annotations

import pytest
import torch

from visattn.lens import STATE, AttentionCall, lens_attention
from visattn.lens.edits import AffineAttentionScaling
from visattn.nn.affine_scaled import linear_clip
from visattn.ops.affine_scaled import affine_scaled_weights


def run(call: AttentionCall, *edits) -> torch.Tensor:
    STATE.edits[:] = list(edits)
    try:
        return lens_attention(call)[1]
    finally:
        STATE.edits.clear()


def make_call(seed: int, n: int = 8, causal: bool = True) -> AttentionCall:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 4, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    hidden = torch.randn(2, n, 16, generator=g, dtype=torch.float64) * 20
    bias = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1) if causal else None
    return AttentionCall(layer=0, name="m", q=q, k=k, v=v, scale=8 ** -0.5, bias=bias, hidden=hidden)


def test_projection_alpha_matches_the_affine_scaled_weights():
    call = make_call(0)
    weight = torch.randn(4, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha_ma = torch.tensor([1.0, 0.8, 1.2, 0.5], dtype=torch.float64)
    probs = run(call, AffineAttentionScaling(weight=weight, alpha_ma=alpha_ma))
    alpha = linear_clip(call.hidden @ weight.T).transpose(1, 2).unsqueeze(-1)
    expected = affine_scaled_weights(call.q, call.k, alpha, alpha_ma, is_causal=True)
    torch.testing.assert_close(probs, expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(probs.sum(-1), alpha_ma.view(1, 4, 1).expand(2, 4, 8), atol=1e-12, rtol=0)


def test_fixed_alpha_neutral_and_selection():
    call = make_call(2, causal=False)
    base = run(call)
    assert torch.equal(run(call, AffineAttentionScaling(1.0)), base)
    probs = run(call, AffineAttentionScaling(0.5, heads=[3]))
    torch.testing.assert_close(probs[:, 3], 0.5 * base[:, 3] + 0.5 / 8, atol=1e-15, rtol=0)
    assert torch.equal(probs[:, :3], base[:, :3])
    per_head = run(call, AffineAttentionScaling(torch.tensor([1.0, 1.0, 1.0, 0.5], dtype=torch.float64)))
    torch.testing.assert_close(per_head, probs, atol=1e-15, rtol=0)


def test_bad_input_is_named():
    call = make_call(3)
    with pytest.raises(ValueError, match="has hidden=None"):
        run(AttentionCall(**{**call.__dict__, "hidden": None}), AffineAttentionScaling(weight=torch.zeros(4, 16)))
    with pytest.raises(ValueError, match=r"weight must be \(heads, C\) = \(4, 16\)"):
        run(call, AffineAttentionScaling(weight=torch.zeros(3, 16)))
    with pytest.raises(ValueError, match="alpha has 2 entries, the call has 4 heads"):
        run(call, AffineAttentionScaling(torch.ones(2)))
    with pytest.raises(TypeError, match="alpha must be a finite number"):
        AffineAttentionScaling(float("inf"))
