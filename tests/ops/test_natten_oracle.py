"""NATTEN (``natten.functional.na1d/na2d/na3d``) as an outside oracle for neighborhood attention on every engine that
runs it, on drawn kernel sizes, strides, dilations, causal axes and odd grids (forward; NATTEN has no CPU backward).

Paper: Hassani et al., "Neighborhood Attention Transformer" (arXiv 2204.07143), "Dilated Neighborhood Attention
Transformer" (arXiv 2209.15001). NATTEN takes ``(B, *grid, heads, head_dim)``; visattn ``(B, heads, N, head_dim)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.ops import masked_attention

natten_functional = pytest.importorskip("natten.functional")

ENGINES = ("fused_tiles", "per_query", "sdpa_tiles", "dense")


def to_visattn(x: torch.Tensor) -> torch.Tensor:
    """``(B, *grid, heads, d)`` as ``(B, heads, N, d)``."""
    return x.flatten(1, -3).transpose(1, 2)


@pytest.mark.parametrize("ndim", [1, 2, 3])
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_every_engine_equals_natten(ndim, data, neighborhood_case_strategy):
    """Kernels from 2 and grids longer than ``kernel * dilation``: where the window covers a whole axis NATTEN
    hands over to full attention, which has no causal CPU backend."""
    mask, shape = data.draw(neighborhood_case_strategy(ndim, min_kernel=2, min_extra=1))
    kernel, dilation, stride, causal = mask.kernel_size, mask.dilation, mask.stride, mask.is_causal
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    q, k, v = (torch.randn(1, *shape, 2, 8, generator=gen) for _ in range(3))
    natten_fn = getattr(natten_functional, f"na{ndim}d")
    expected = natten_fn(q, k, v, kernel_size=kernel, stride=stride, dilation=dilation, is_causal=causal)
    expected = to_visattn(expected)
    for engine in ENGINES:
        out = masked_attention(to_visattn(q), to_visattn(k), to_visattn(v), mask, shape, backend=engine)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5,
                                   msg=lambda m, e=engine: f"{e} vs NATTEN, kernel={kernel}, dilation={dilation}, "
                                                           f"stride={stride}, causal={causal}, shape={shape}: {m}")
    assert math.prod(shape) == expected.shape[2]
