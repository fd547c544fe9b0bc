"""The naive reference equals SDPA, handles fully masked rows and large logits, and rejects bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.ops import reference


def qkv(b=2, h=3, n=17, d=8, m=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = n if m is None else m
    return (torch.randn(b, h, n, d, generator=g, dtype=dtype), torch.randn(b, h, m, d, generator=g, dtype=dtype),
            torch.randn(b, h, m, d + 1, generator=g, dtype=dtype))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 40), st.integers(1, 40), st.integers(1, 16))
def test_equals_sdpa_float64(b, h, n, m, d):
    q, k, v = qkv(b, h, n, d, m)
    assert torch.allclose(reference.attention(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=1e-12)


def test_bool_and_float_masks_equal_sdpa():
    q, k, v = qkv()
    mask = torch.rand(1, 1, 17, 17, generator=torch.Generator().manual_seed(1)) > 0.3
    mask |= torch.eye(17, dtype=torch.bool)
    assert torch.allclose(reference.attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, mask))
    bias = torch.randn(2, 3, 17, 17, dtype=torch.float64)
    assert torch.allclose(reference.attention(q, k, v, bias, scale=0.3),
                          F.scaled_dot_product_attention(q, k, v, bias, scale=0.3))


def test_weights_are_returned_and_sum_to_one():
    q, k, v = qkv()
    out, w = reference.attention(q, k, v, return_weights=True)
    assert w.shape == (2, 3, 17, 17)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3, 17, dtype=torch.float64))
    assert torch.allclose(out, w @ v)


def test_fully_masked_rows_give_zero_and_finite_gradients():
    q, k, v = (t.requires_grad_() for t in qkv(1, 1, 5, 4))
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[2] = False
    out = reference.attention(q, k, v, mask)
    assert torch.all(out[0, 0, 2] == 0)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_large_logits_stay_finite():
    q, k, v = qkv(n=9, d=4)
    out = reference.attention(q * 1e4, k * 1e4, v)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_any_float_dtype(dtype):
    q, k, v = qkv(dtype=dtype)
    out = reference.attention(q, k, v)
    assert out.dtype == dtype
    expected = reference.attention(*(t.double() for t in (q, k, v)))
    tol = {torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 5e-3}[dtype]
    assert torch.allclose(out.double(), expected, atol=tol)


def test_bad_inputs_raise_naming_the_argument():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="one dtype"):
        reference.attention(q, k.float(), v)
    with pytest.raises(ValueError, match="q must be shaped"):
        reference.attention(q[0], k, v)
    with pytest.raises(ValueError, match="k and v must agree"):
        reference.attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="head_dim"):
        reference.attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="mask of shape"):
        reference.attention(q, k, v, torch.ones(16, 17, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be bool"):
        reference.attention(q, k, v, torch.ones(17, 17, dtype=torch.long))
    with pytest.raises(TypeError, match="floating point"):
        reference.attention(q.long(), k.long(), v.long())
