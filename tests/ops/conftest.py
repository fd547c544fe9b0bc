"""Hypothesis strategies shared by the kernel tests, handed out as session fixtures (tests are not a package)."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from visattn import masks


@st.composite
def _neighborhood_cases(draw, ndim: int | None = None, min_kernel: int = 1, min_extra: int = 0):
    """(mask, shape); ``min_extra``: each axis at least that much longer than its ``kernel * dilation``."""
    ndim = draw(st.integers(1, 3)) if ndim is None else ndim
    kernel, dilation, stride, causal, shape = [], [], [], [], []
    for _ in range(ndim):
        k = draw(st.integers(min_kernel, 5))
        d = draw(st.integers(1, 2))
        kernel.append(k)
        dilation.append(d)
        stride.append(draw(st.integers(1, k)))
        causal.append(draw(st.booleans()))
        shape.append(draw(st.integers(k * d + min_extra, k * d + 4)))
    return masks.neighborhood_mask(tuple(kernel), tuple(stride), tuple(dilation), tuple(causal)), tuple(shape)


@pytest.fixture(scope="session")
def neighborhood_cases() -> st.SearchStrategy:
    """(mask, shape): a 1-3-D neighborhood mask with random kernel, dilation, stride and causal flags per axis, on
    a grid at most 4 larger than kernel * dilation along each axis."""
    return _neighborhood_cases()


@pytest.fixture(scope="session")
def neighborhood_case_strategy():
    """``_neighborhood_cases`` itself, for tests that fix the number of axes or need longer grids."""
    return _neighborhood_cases
