"""ops.scaled_cosine (Swin-V2, arXiv 2111.09883 eq. 2): cosine logits times the clamped learned scale plus a bias,
against the formula entry by entry; the clamp at log 100; gradients."""

from __future__ import annotations

import math

import torch

from visattn.ops.scaled_cosine import LOGIT_SCALE_MAX, cosine_logit_scale, scaled_cosine_attention

FP64 = {"atol": 1e-12, "rtol": 1e-10}


def naive(q, k, v, logit_scale, bias):
    b, h, n, _ = q.shape
    logits = torch.zeros(b, h, n, n, dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            tau_inv = math.exp(min(float(logit_scale[hi]), math.log(100.0)))
            for i in range(n):
                for j in range(n):
                    cos = q[bi, hi, i] @ k[bi, hi, j] / (q[bi, hi, i].norm() * k[bi, hi, j].norm())
                    logits[bi, hi, i, j] = cos * tau_inv + bias[hi, i, j]
    return torch.softmax(logits, -1) @ v


def test_equals_the_formula_with_the_clamp():
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 3, 5, 4, generator=gen, dtype=torch.float64)
    logit_scale = torch.tensor([0.5, math.log(10.0), 7.0], dtype=torch.float64).view(3, 1, 1)
    bias = torch.randn(3, 5, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(scaled_cosine_attention(q, k, v, logit_scale, bias), naive(q, k, v, logit_scale, bias),
                               **FP64)
    assert math.isclose(LOGIT_SCALE_MAX, math.log(100.0))
    assert math.isclose(float(cosine_logit_scale(torch.tensor(7.0, dtype=torch.float64))), 100.0)
    assert math.isclose(float(cosine_logit_scale(torch.tensor(1.0, dtype=torch.float64))), math.e)


def test_gradcheck():
    gen = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 1, 2, 4, 3, generator=gen, dtype=torch.float64)
    logit_scale = torch.full((2, 1, 1), 1.0, dtype=torch.float64)
    args = tuple(t.requires_grad_() for t in (q, k, v, logit_scale))
    assert torch.autograd.gradcheck(lambda *a: scaled_cosine_attention(*a), args)
