"""ops.recurrent_state: one protocol over every linear-state mixer in the registry, each checked against its
formula; a mixer linear in N must report its state or be listed as having none; the KV-cache comparison."""

from __future__ import annotations

import pytest
import torch

import visattn
from visattn.ops.recurrent_state import RecurrentState, kv_cache_bytes, layout, state_bytes
from visattn.registry import create_mixer_for_layer

B, HEADS, D, DV = 2, 3, 4, 5

# elements per head of each linear-state mixer's state, as its ops module documents it (d = head_dim here)
FORMULAS = {
    "linear": D * (DV + 1),
    "hedgehog": 2 * D * (DV + 2),
    "taylor": (1 + 16 + 16 ** 2) * (DV + 1),
    "inline": D * (DV + 1) + DV,
    "elementwise_qk": DV + 2,
    "l2vit_linear": D * (DV + 1),
    "channel": D * DV,
}
NO_RECURRENT_STATE = {"linear_infsa": "its pooled query needs every query before any key is read"}


def _build(name):
    return create_mixer_for_layer(name, dim=HEADS * D, num_heads=HEADS, head_dim=D)


@pytest.mark.parametrize("name", sorted(FORMULAS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_linear_state_mixer_reports_its_formula(name, dtype):
    mixer = _build(name)
    assert isinstance(mixer, RecurrentState)
    assert mixer.state_bytes(B, HEADS, D, DV, dtype) == B * HEADS * FORMULAS[name] * dtype.itemsize


def test_every_mixer_linear_in_n_reports_a_state_or_says_why_not():
    """A registered mixer whose cost is O(N ...) without a quadratic or sparse term needs state_bytes (or an entry
    in NO_RECURRENT_STATE): a new linear mixer without it fails here."""
    linear = [n for n in visattn.list_mixers() if visattn.get_mixer_spec(n).complexity.replace(" ", "")
              in ("O(Nd)", "O(Nd^2)", "O(Nf^2d)")]
    assert set(FORMULAS) | set(NO_RECURRENT_STATE) >= set(linear) and "linear" in linear
    for name in linear:
        assert isinstance(_build(name), RecurrentState) != (name in NO_RECURRENT_STATE), name


def test_value_dim_defaults_to_head_dim_and_layout_errors():
    assert _build("linear").state_bytes(1, 2, 8) == 2 * 8 * 9 * 4
    assert layout(None, None, None, default_heads=2, default_head_dim=3) == (2, 3, 3)
    with pytest.raises(ValueError, match="state_bytes needs num_heads and head_dim"):
        layout(4, None, None)
    with pytest.raises(ValueError, match="value_dim must be a positive int, got 0"):
        layout(4, 2, 0)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        state_bytes(1, 1, 1, "float32")


def test_kv_cache_bytes():
    assert kv_cache_bytes(2, 3, 64, 2048) == 2 * 3 * 2048 * 128 * 4
    assert kv_cache_bytes(1, 1, 64, 10, torch.float16, value_dim=32) == 10 * 96 * 2
    with pytest.raises(ValueError, match="num_tokens must be a positive int"):
        kv_cache_bytes(1, 1, 64, 0)
