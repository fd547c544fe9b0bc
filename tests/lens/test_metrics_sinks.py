"""Massive activations and sink tokens (VAR, arXiv 2503.03321): phi by hand, the sqrt(C) bound, planted massive
activations found by discovery and detection, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens.metrics import SINK_TAU, massive_activation_dims, rms_ratio, sink_scores, sink_tokens


def hidden_with_planted(channels: int = 1024, tokens: int = 12, plants=((3, 77, 1000.0),), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, tokens, channels, generator=gen)
    for token, dim, value in plants:
        hidden[:, token, dim] = value
    return hidden


def test_phi_by_hand():
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    rms = math.sqrt((9 + 16) / 2 + 1e-6)
    torch.testing.assert_close(sink_scores(x, [1]), torch.tensor([4 / rms], dtype=torch.float64))
    torch.testing.assert_close(sink_scores(x, [0, 1]), torch.tensor([4 / rms], dtype=torch.float64))
    torch.testing.assert_close(sink_scores(x, [0]), torch.tensor([3 / rms], dtype=torch.float64))
    torch.testing.assert_close(rms_ratio(x), torch.tensor([[3 / rms, 4 / rms]], dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(channels=st.integers(1, 300), seed=st.integers(0, 1000))
def test_phi_never_exceeds_sqrt_of_the_channel_count(channels, seed):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 5, channels, generator=gen, dtype=torch.float64) ** 3
    assert float(sink_scores(hidden, list(range(channels))).max()) <= math.sqrt(channels) + 1e-9


def test_planted_massive_activation_is_found_and_its_token_is_the_only_sink():
    hidden = hidden_with_planted()
    dims = massive_activation_dims(hidden)
    assert dims.tolist() == [77]
    sinks = sink_tokens(hidden, dims)
    expected = torch.zeros(2, 12, dtype=torch.bool)
    expected[:, 3] = True
    assert torch.equal(sinks, expected)
    # phi of the planted token: 1000 / RMS, RMS dominated by the planted value
    phi = sink_scores(hidden, dims)[:, 3]
    rms = torch.sqrt(hidden[:, 3].square().mean(-1) + 1e-6)
    torch.testing.assert_close(phi, 1000.0 / rms)
    assert float(phi.min()) > SINK_TAU


def test_several_planted_dims_come_strongest_first_and_top_k_keeps_the_strongest():
    hidden = hidden_with_planted(plants=((3, 77, 800.0), (6, 500, 1500.0), (9, 77, 900.0)))
    assert massive_activation_dims(hidden).tolist() == [500, 77]
    assert massive_activation_dims(hidden, top_k=1).tolist() == [500]
    assert sink_tokens(hidden, [500, 77])[0].nonzero().flatten().tolist() == [3, 6, 9]
    assert sink_tokens(hidden, [500])[0].nonzero().flatten().tolist() == [6]


def test_no_massive_dims_in_gaussian_noise_and_no_sinks_below_tau():
    hidden = hidden_with_planted(plants=())
    assert massive_activation_dims(hidden).numel() == 0
    assert not sink_tokens(hidden, [0, 1, 2]).any()
    # a lower tau (small models: phi <= sqrt(C)) does flag the top tokens
    assert sink_tokens(hidden, list(range(1024)), tau=2.0).all()


def test_bfloat16_hidden_states_are_measured_in_float32():
    hidden = hidden_with_planted()
    assert rms_ratio(hidden.bfloat16()).dtype == torch.float32
    torch.testing.assert_close(sink_scores(hidden.bfloat16(), [77]), sink_scores(hidden, [77]), rtol=2e-2, atol=0.0)


def test_bad_input_names_the_argument():
    hidden = hidden_with_planted(channels=8, plants=())
    with pytest.raises(ValueError, match=r"dims \[8\] out of range for hidden states with 8 channels"):
        sink_scores(hidden, [1, 8])
    with pytest.raises(TypeError, match="dims must be a non-empty sequence"):
        sink_scores(hidden, [])
    with pytest.raises(TypeError, match="dims must be a non-empty sequence"):
        sink_scores(hidden, 3)
    with pytest.raises(TypeError, match="dims must contain ints"):
        sink_scores(hidden, [1.5])
    with pytest.raises(ValueError, match="top_k must be a positive int or None, got 0"):
        massive_activation_dims(hidden, top_k=0)
    with pytest.raises(ValueError, match="hidden must have at least 2 dims"):
        rms_ratio(torch.ones(8))
    with pytest.raises(TypeError, match="hidden must be a floating-point tensor"):
        sink_tokens(torch.ones(2, 8, dtype=torch.long), [0])
