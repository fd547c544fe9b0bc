"""Every neighborhood API takes NATTEN 0.21's arguments in NATTEN's order and names: ``kernel_size, stride,
dilation, is_causal`` (issue 13: ``neighborhood_mask(7, 2)`` used to mean dilation 2 here and stride 2 in NATTEN).

Calls are written positionally on purpose, as NATTEN documents them, so that a swap of stride and dilation changes
the module and the outputs differ. NATTEN is an outside oracle (``natten`` is a dev dependency; skipped without it).
"""

from __future__ import annotations

import inspect

import pytest
import torch

import visattn
from visattn import masks
from visattn.nn import NeighborhoodAttention1d, NeighborhoodAttention2d, NeighborhoodAttention3d
from visattn.nn.mixers import neighborhood as neighborhood_factory
from visattn.ops import masked_attention

MODULES = {1: NeighborhoodAttention1d, 2: NeighborhoodAttention2d, 3: NeighborhoodAttention3d}
NATTEN_ORDER = ["kernel_size", "stride", "dilation", "is_causal"]

# (ndim, grid, kernel_size, stride, dilation, is_causal): stride and dilation differ on some axis in each case, so
# reading one for the other builds another neighborhood (or an invalid one).
CASES = [
    (1, (11,), 3, 2, 1, False),
    (1, (13,), 3, 1, 2, True),
    (2, (7, 9), 3, (2, 1), (1, 2), (False, True)),
    (2, (9, 8), (3, 2), 1, (2, 3), False),
    (3, (4, 7, 6), (2, 3, 2), (1, 3, 2), (1, 2, 1), (True, False, False)),
]


def _parameters(callable_) -> list[inspect.Parameter]:
    return list(inspect.signature(callable_).parameters.values())


def test_neighborhood_mask_takes_natten_order():
    names = [p.name for p in _parameters(masks.neighborhood_mask)]
    assert names == NATTEN_ORDER
    mask = masks.neighborhood_mask(7, 2)
    assert (mask.stride, mask.dilation) == (2, 1)
    axis = masks.NeighborhoodAxis(7, 2, 3, True)
    assert (axis.kernel_size, axis.stride, axis.dilation, axis.is_causal) == (7, 2, 3, True)


def test_registry_entry_takes_natten_order():
    names = [p.name for p in _parameters(neighborhood_factory)]
    assert names[:4] == NATTEN_ORDER
    mixer = neighborhood_factory(5, 2, 3)
    assert mixer.mask == masks.neighborhood_mask(5, stride=2, dilation=3)
    assert visattn.create_mixer("neighborhood", kernel_size=5, stride=2, dilation=3).mask == mixer.mask


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_module_signature_is_nattens_parameter_for_parameter(ndim):
    natten = pytest.importorskip("natten")
    theirs = _parameters(getattr(natten, f"NeighborhoodAttention{ndim}D"))
    ours = _parameters(MODULES[ndim])
    assert [(p.name, p.kind, p.default) for p in ours[:len(theirs)]] == [
        (p.name, p.kind, p.default) for p in theirs
    ]
    extras = ours[len(theirs):]
    assert extras and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extras)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_functional_order_is_nattens(ndim):
    natten_functional = pytest.importorskip("natten.functional")
    names = [p.name for p in _parameters(getattr(natten_functional, f"na{ndim}d"))]
    assert names[3:7] == NATTEN_ORDER


@pytest.mark.parametrize(("ndim", "grid", "kernel", "stride", "dilation", "causal"), CASES)
def test_module_called_positionally_equals_natten(ndim, grid, kernel, stride, dilation, causal):
    natten = pytest.importorskip("natten")
    torch.manual_seed(0)
    args = (16, 2, kernel, stride, dilation, causal, False, 0.3, 0.0)
    ours = MODULES[ndim](*args).eval()
    theirs = getattr(natten, f"NeighborhoodAttention{ndim}D")(*args).eval()
    assert ours.stride == tuple(stride if isinstance(stride, tuple) else (stride,) * ndim)
    assert ours.dilation == tuple(dilation if isinstance(dilation, tuple) else (dilation,) * ndim)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, *grid, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("ndim", "grid", "kernel", "stride", "dilation", "causal"), CASES)
def test_mask_and_mixer_called_positionally_equal_natten_functional(ndim, grid, kernel, stride, dilation, causal):
    natten_functional = pytest.importorskip("natten.functional")
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, *grid, 2, 8) for _ in range(3))
    expected = getattr(natten_functional, f"na{ndim}d")(q, k, v, kernel, stride, dilation, causal)
    expected = expected.flatten(1, -3).transpose(1, 2)
    qh, kh, vh = (t.flatten(1, -3).transpose(1, 2) for t in (q, k, v))
    out = masked_attention(qh, kh, vh, masks.neighborhood_mask(kernel, stride, dilation, causal), grid)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    mixer = neighborhood_factory(kernel, stride, dilation, causal)
    torch.testing.assert_close(mixer(qh, kh, vh, grid), expected, rtol=1e-5, atol=1e-5)
