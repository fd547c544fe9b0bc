"""LSSA / LSSAR ops (arXiv 2501.13428): naive per-row formulas in float64, the re-weighting's paper properties,
chunked == dense, numerical stability at long lengths, gradients and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probes import check_causal
from visattn.ops import lssa_attention, lssa_weights, reweight_attention

FP64 = {"atol": 1e-12, "rtol": 1e-10}


def naive_lssa(q: torch.Tensor, k: torch.Tensor, is_causal: bool, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Row by row: q^, k^ unit rows; A_ij = softplus(ln d ln n_i q^_i.k^_j) over visible j, L1-normalised."""
    *lead, n, d = q.shape
    out = torch.zeros(*lead, n, n, dtype=q.dtype)
    qh = q / q.norm(dim=-1, keepdim=True)
    kh = k / k.norm(dim=-1, keepdim=True)
    for i in range(n):
        visible = torch.ones(n, dtype=torch.bool)
        if is_causal:
            visible[i + 1:] = False
        if allowed is not None:
            visible &= allowed[i]
        count = int(visible.sum())
        if count == 0:
            continue
        logits = math.log(d) * math.log(count) * (qh[..., i, :].unsqueeze(-2) * kh).sum(-1)
        row = torch.log1p(torch.exp(logits)) * visible
        out[..., i, :] = row / row.sum(-1, keepdim=True)
    return out


def naive_reweight(a: torch.Tensor, p: float, counts: list[int], offset_rows: int = 3) -> torch.Tensor:
    """relu(A_ij n_i - O_i)^p / sum_l relu(A_il n_i - O_i)^p with O_i = 0 for i <= offset_rows (1-based);
    a row with nothing above the offset (e.g. row 1 when it is not exempt) stays 0."""
    out = torch.zeros_like(a)
    for i, count in enumerate(counts):
        offset = 0.0 if i + 1 <= offset_rows else 1.0
        row = torch.clamp(a[..., i, :] * count - offset, min=0.0) ** p
        total = row.sum(-1, keepdim=True)
        out[..., i, :] = torch.where(total > 0, row / total, 0.0)
    return out


def qkv(b: int, h: int, n: int, d: int, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n, d, generator=gen, dtype=dtype) for _ in range(3))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 19).map(lambda x: 2 * x + 1), d=st.integers(2, 9), is_causal=st.booleans(),
       chunk=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_lssa_equals_naive(n, d, is_causal, chunk, seed):
    q, k, v = qkv(2, 3, n, d, seed)
    expected = naive_lssa(q, k, is_causal)
    torch.testing.assert_close(lssa_weights(q, k, is_causal), expected, **FP64)
    torch.testing.assert_close(lssa_attention(q, k, v, is_causal, chunk_size=chunk), expected @ v, **FP64)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 20).map(lambda x: 2 * x + 1), p=st.sampled_from([1, 2, 3, 7.5, 15]), is_causal=st.booleans(),
       chunk=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_lssar_equals_naive(n, p, is_causal, chunk, seed):
    q, k, v = qkv(2, 2, n, 6, seed)
    counts = list(range(1, n + 1)) if is_causal else [n] * n
    expected = naive_reweight(naive_lssa(q, k, is_causal), p, counts)
    torch.testing.assert_close(lssa_weights(q, k, is_causal, p=p), expected, **FP64)
    torch.testing.assert_close(lssa_attention(q, k, v, is_causal, p=p, chunk_size=chunk), expected @ v, **FP64)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 41), p=st.floats(1.0, 15.0), offset_rows=st.integers(0, 5), seed=st.integers(0, 10_000))
def test_reweight_attention_equals_naive_on_any_weights(n, p, offset_rows, seed):
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(3, n, n, generator=gen, dtype=torch.float64).tril()
    weights = weights / weights.sum(-1, keepdim=True)
    expected = naive_reweight(weights, p, list(range(1, n + 1)), offset_rows)
    got = reweight_attention(weights, p=p, offset_rows=offset_rows)
    rows = torch.arange(1, n + 1) > offset_rows
    torch.testing.assert_close(got[:, rows], expected[:, rows], **FP64)
    torch.testing.assert_close(got[:, ~rows], expected[:, ~rows], **FP64)


@pytest.mark.parametrize("is_causal", [True, False])
def test_lssar_zeroes_every_weight_at_or_below_uniform_and_rows_sum_to_one(is_causal):
    q, k, _ = qkv(2, 4, 57, 16, seed=3)
    before = lssa_weights(q, k, is_causal)
    after = lssa_weights(q, k, is_causal, p=3)
    n = q.shape[-2]
    counts = torch.arange(1, n + 1, dtype=torch.float64).unsqueeze(-1) if is_causal else torch.full((n, 1), float(n))
    past_offset = (torch.arange(1, n + 1) > 3).unsqueeze(-1)
    small = (before <= 1.0 / counts) & past_offset
    assert small.any()
    assert (after[small] == 0).all()
    assert (after[(before > 1.0 / counts) & past_offset] > 0).all()
    torch.testing.assert_close(after.sum(-1), torch.ones(2, 4, n, dtype=torch.float64), **FP64)


def test_reweight_boundary_weight_exactly_uniform_becomes_zero():
    weights = torch.tensor([[0.25, 0.25, 0.5, 0.0], [0.2, 0.3, 0.25, 0.25]], dtype=torch.float64)
    got = reweight_attention(weights.repeat(2, 1), p=2, is_causal=False, offset_rows=0)
    assert got[0, 0] == 0 and got[0, 1] == 0 and got[0, 2] == 1
    assert (got[1] == torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)).all()


def test_reweight_uniform_row_past_offset_gives_zeros_not_nan():
    weights = torch.full((5, 5), 0.2, dtype=torch.float64)
    got = reweight_attention(weights, p=3, is_causal=False)
    assert torch.isfinite(got).all()
    assert (got[3:] == 0).all()
    torch.testing.assert_close(got[:3], weights[:3], **FP64)


def test_reweight_num_visible_overrides_causal_count():
    gen = torch.Generator().manual_seed(1)
    weights = torch.softmax(torch.randn(9, 9, generator=gen, dtype=torch.float64), -1)
    counts = [4, 6, 9, 2, 7, 5, 3, 8, 9]
    expected = naive_reweight(weights, 3, counts)
    got = reweight_attention(weights, p=3, num_visible=torch.tensor(counts).unsqueeze(-1))
    torch.testing.assert_close(got, expected, **FP64)


@pytest.mark.parametrize("p", [3, 15])
def test_lssar_is_stable_at_long_lengths_in_float32(p):
    q, k, v = qkv(1, 2, 1024, 32, seed=5, dtype=torch.float32)
    got = lssa_attention(q, k, v, p=p, chunk_size=512)
    assert torch.isfinite(got).all()
    expected = lssa_attention(q.double(), k.double(), v.double(), p=p, chunk_size=512)
    torch.testing.assert_close(got.double(), expected, atol=2e-4, rtol=2e-4)
    weights = lssa_weights(q, k, p=p)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 1024), atol=1e-5, rtol=0)


def test_bool_attn_mask_counts_visible_keys():
    q, k, v = qkv(2, 2, 15, 8, seed=7)
    gen = torch.Generator().manual_seed(8)
    allowed = torch.rand(15, 15, generator=gen) > 0.4
    allowed[4] = False
    for is_causal in (False, True):
        expected = naive_lssa(q, k, is_causal, allowed)
        torch.testing.assert_close(lssa_weights(q, k, is_causal, attn_mask=allowed), expected, **FP64)
        torch.testing.assert_close(lssa_attention(q, k, v, is_causal, attn_mask=allowed, chunk_size=4),
                                   expected @ v, **FP64)
    assert (lssa_attention(q, k, v, False, attn_mask=allowed)[..., 4, :] == 0).all()


def test_causal_never_sees_a_later_token():
    q, k, v = qkv(1, 2, 21, 8, seed=9)
    check_causal(lambda a, b, c: lssa_attention(a, b, c, p=3, chunk_size=5), q, k, v, 11)


@pytest.mark.parametrize("p", [None, 3])
def test_gradcheck(p):
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 7, 4, seed=11))
    assert torch.autograd.gradcheck(lambda a, b, c: lssa_attention(a, b, c, p=p, chunk_size=3), (q, k, v))


def test_bad_input():
    q, k, v = qkv(1, 1, 5, 4)
    weights = lssa_weights(q, k)
    with pytest.raises(ValueError, match="p must be a finite number >= 1.*0.5"):
        reweight_attention(weights, p=0.5)
    with pytest.raises(ValueError, match="p must be"):
        lssa_attention(q, k, v, p=0)
    with pytest.raises(ValueError, match="p must be"):
        reweight_attention(weights, p=True)
    with pytest.raises(ValueError, match=r"weights must be shaped \(\.\.\., N, N\)"):
        reweight_attention(weights[..., :3])
    with pytest.raises(ValueError, match="offset_rows must be an int >= 0"):
        reweight_attention(weights, offset_rows=-1)
    with pytest.raises(TypeError, match="attn_mask must be a bool tensor"):
        lssa_attention(q, k, v, attn_mask=torch.zeros(5, 5))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        lssa_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="head_dim >= 2"):
        lssa_weights(q[..., :1], k[..., :1])
