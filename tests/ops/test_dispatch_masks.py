"""Masks travel to the kernels' custom operators by key (``Mask.key``): keys survive pickling into another process;
under ``torch.compile`` only masks known to have closed-form key sets are sent to the kernels without their grid."""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import dataclass

import torch

from visattn import masks
from visattn.masks import AxisRule, Mask, NeighborhoodAxis, SeparableMask
from visattn.ops import explain, masked_attention


def test_equal_masks_share_a_key_and_unequal_ones_do_not():
    assert masks.neighborhood_mask(5).key == masks.neighborhood_mask(5).key
    assert masks.neighborhood_mask(5).key != masks.neighborhood_mask(7).key
    assert Mask.from_key(masks.window_mask(4).key) == masks.window_mask(4)


def test_an_unpickled_mask_reaches_the_kernels_in_a_fresh_process():
    blob = pickle.dumps(masks.neighborhood_mask(5, dilation=2))
    code = (f"import pickle, torch\nfrom visattn.ops import masked_attention\nm = pickle.loads({blob!r})\n"
            "q = torch.randn(1, 1, 100, 8, dtype=torch.float64)\n"
            "out = masked_attention(q, q, q, m, (10, 10), backend='fused_tiles')\n"
            "ref = masked_attention(q, q, q, m, (10, 10), backend='reference')\n"
            "print(float((out - ref).abs().max()))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip().splitlines()[-1]) < 1e-10


@dataclass(frozen=True)
class _FirstHalfAxis(AxisRule):
    """Not a progression: a coordinate sees the first half of the axis and itself."""

    def allowed(self, xq, xk, length):
        return (xk < length // 2) | (xk == xq)


@dataclass(frozen=True)
class _UserMask(SeparableMask):
    def axis_rules(self, shape):
        return (_FirstHalfAxis(), NeighborhoodAxis(3))


def test_a_user_mask_without_closed_forms_compiles_on_its_concrete_grid():
    """Under torch.compile a user's separable mask is not sent to the kernels blindly (its rules may have no
    progressions): the engine is chosen on the grid, here SDPA tiles, and the result equals eager."""
    mask, shape = _UserMask(), (6, 5)
    q, k, v = torch.randn(3, 1, 2, 30, 8).unbind(0)
    assert explain(mask, shape).engine == "sdpa_tiles"

    def fn(q, k, v):
        return masked_attention(q, k, v, mask, shape)

    torch.testing.assert_close(torch.compile(fn, fullgraph=True, dynamic=False)(q, k, v), fn(q, k, v),
                               rtol=1e-5, atol=1e-5)
