"""masked_attention: every backend (the reference too) equals a row-by-row oracle that shares no code with the
reference (``visattn.testing.rowwise_attention``); errors name the argument."""

from __future__ import annotations

import logging

import pytest
import torch

from visattn import masks as M
from visattn.ops import masked_attention
from visattn.ops.engines import flex
from visattn.ops.engines.dense import dense_mask
from visattn.testing import rowwise_attention

CASES = [
    (M.neighborhood_mask(3), (7, 5), 0),
    (M.neighborhood_mask((3, 2), stride=(2, 1), dilation=(2, 1), is_causal=(True, False)), (9, 6), 2),
    (M.window_mask(2), (4, 6), 1),
    (M.grid_mask(2), (4, 6), 0),
    (M.halo_mask(2, 1), (6, 4), 1),
    (M.axial_mask(0), (5, 3, 2), 0),
    (M.sliding_window_mask(4, is_causal=True), (23,), 0),
    (M.radial_mask(), (5, 2, 3), 1),
    (M.causal_mask(), (11,), 0),
    (M.full_mask(), (3, 3), 2),
    (M.neighborhood_mask(3) & M.causal_mask(), (6, 6), 0),
]


def qkv(n, b=2, h=2, d=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3)]


def expected(q, k, v, mask, shape, prefix):
    return rowwise_attention(q, k, v, M.materialize(mask, shape, prefix))


@pytest.mark.parametrize(("mask", "shape", "prefix"), CASES)
@pytest.mark.parametrize("backend", ["auto", "dense", "reference"])
def test_backends_equal_reference_float64(mask, shape, prefix, backend):
    n = prefix + torch.Size(shape).numel()
    q, k, v = qkv(n)
    out = masked_attention(q, k, v, mask, shape, prefix, backend=backend)
    assert torch.allclose(out, expected(q, k, v, mask, shape, prefix), atol=1e-12)


@pytest.mark.parametrize(("mask", "shape", "prefix"), CASES[:3] + CASES[7:8])
def test_flex_backend_equals_reference(mask, shape, prefix, monkeypatch):
    monkeypatch.setattr(flex, "_failed", {"cpu"})
    n = prefix + torch.Size(shape).numel()
    q, k, v = qkv(n)
    out = masked_attention(q, k, v, mask, shape, prefix, backend="flex")
    assert torch.allclose(out, expected(q, k, v, mask, shape, prefix), atol=1e-10)


def test_gradients_equal_the_oracle_for_every_backend():
    mask, shape, prefix = CASES[1]
    n = prefix + 54
    q, k, v = (t.requires_grad_() for t in qkv(n, seed=3))
    (expected(q, k, v, mask, shape, prefix) * torch.arange(5.0).double()).sum().backward()
    want = [t.grad for t in (q, k, v)]
    for backend in ("dense", "reference", "auto"):
        q, k, v = (t.requires_grad_() for t in qkv(n, seed=3))
        (masked_attention(q, k, v, mask, shape, prefix, backend=backend) * torch.arange(5.0).double()).sum().backward()
        for a, b in zip([t.grad for t in (q, k, v)], want, strict=True):
            assert torch.allclose(a, b, atol=1e-10), backend


def test_gradcheck_small():
    mask, shape = M.neighborhood_mask(3, is_causal=True), (4, 3)
    q, k, v = (t.requires_grad_() for t in qkv(12, b=1, h=1, d=3))
    assert torch.autograd.gradcheck(lambda a, b, c: masked_attention(a, b, c, mask, shape, backend="dense"), (q, k, v))


class OddQueriesOnly(M.Mask):
    """Even queries see no key at all; odd queries see the keys before them."""

    def _spatial_mod(self, shape):
        return lambda q, k: (q % 2 == 1) & (k <= q)


@pytest.mark.parametrize("backend", ["auto", "dense", "reference"])
def test_fully_masked_rows_give_zero_not_nan(backend):
    mask, shape = OddQueriesOnly(), (9,)
    empty = ~M.materialize(mask, shape).any(-1)
    assert empty.sum() == 5
    q, k, v = (t.requires_grad_() for t in qkv(9))
    out = masked_attention(q * 1e3, k, v, mask, shape, backend=backend)
    assert torch.isfinite(out).all() and torch.all(out[:, :, empty] == 0)
    assert torch.allclose(out[:, :, ~empty], expected(q * 1e3, k, v, mask, shape, 0)[:, :, ~empty])
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_float32_agrees_at_4096_tokens():
    mask, shape = M.neighborhood_mask(7), (64, 64)
    q, k, v = qkv(4096, b=1, h=2, d=16, dtype=torch.float32)
    ref = masked_attention(*(t.double() for t in (q, k, v)), mask, shape, backend="reference")  # fast at 4096
    for backend in ("auto", "dense"):
        out = masked_attention(q, k, v, mask, shape, backend=backend)
        assert torch.allclose(out.double(), ref, atol=2e-5)


@pytest.mark.slow
def test_compiled_flex_agrees_at_4096_tokens():
    mask, shape = M.neighborhood_mask(7), (64, 64)
    q, k, v = qkv(4096, b=1, h=2, d=16, dtype=torch.float32)
    out = masked_attention(q, k, v, mask, shape, backend="flex")
    ref = masked_attention(*(t.double() for t in (q, k, v)), mask, shape, backend="dense")
    assert torch.allclose(out.double(), ref, atol=2e-5)


def test_flex_falls_back_to_eager_with_one_log_message(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(flex, "_failed", set())
    monkeypatch.setattr(flex, "_compiled", {"cpu": broken})
    mask, shape = M.window_mask(2), (4, 4)
    q, k, v = qkv(16)
    with caplog.at_level(logging.WARNING, logger="visattn"):
        a = masked_attention(q, k, v, mask, shape, backend="flex")
        b = masked_attention(q, k, v, mask, shape, backend="flex")
    assert sum("compiling FlexAttention" in r.message for r in caplog.records) == 1
    assert torch.allclose(a, expected(q, k, v, mask, shape, 0)) and torch.equal(a, b)


def test_dropout_runs_on_the_fast_path_not_dense(monkeypatch):
    from visattn.ops.engines import dense as masked_module

    def refuse(*args, **kwargs):
        raise AssertionError("dropout on a separable mask must not fall back to dense attention")

    mask, shape = M.neighborhood_mask(3), (9, 9)
    q, k, v = qkv(81)
    monkeypatch.setattr(masked_module, "sdpa_bool_mask", refuse)
    torch.manual_seed(0)
    dropped = masked_attention(q, k, v, mask, shape, dropout_p=0.5)
    assert dropped.shape == q.shape and torch.isfinite(dropped).all()
    assert not torch.allclose(dropped, masked_attention(q, k, v, mask, shape))
    monkeypatch.undo()
    out = masked_attention(q, k, v, mask, shape, backend="dense", dropout_p=0.5)
    assert out.shape == q.shape
    with pytest.raises(ValueError, match="dropout_p"):
        masked_attention(q, k, v, mask, shape, backend="flex", dropout_p=0.1)
    with pytest.raises(ValueError, match="dropout_p"):
        masked_attention(q, k, v, mask, shape, dropout_p=1.5)


def test_dense_mask_is_cached():
    mask = M.neighborhood_mask(3)
    a = dense_mask(mask, (5, 5), 0, torch.device("cpu"))
    assert dense_mask(M.neighborhood_mask(3), (5, 5), 0, torch.device("cpu")) is a


def test_bad_inputs_raise():
    mask, shape = M.neighborhood_mask(3), (5, 5)
    q, k, v = qkv(25)
    with pytest.raises(ValueError, match=r"N=25 tokens but shape=\(5, 6\)"):
        masked_attention(q, k, v, mask, (5, 6))
    with pytest.raises(ValueError, match="num_prefix_tokens=1"):
        masked_attention(q, k, v, mask, shape, num_prefix_tokens=1)
    with pytest.raises(ValueError, match="backend must be one of"):
        masked_attention(q, k, v, mask, shape, backend="cuda")
    with pytest.raises(TypeError, match="mask must be a visattn.masks.Mask"):
        masked_attention(q, k, v, torch.ones(25, 25, dtype=torch.bool), shape)
    with pytest.raises(TypeError, match="one dtype"):
        masked_attention(q, k.float(), v, mask, shape)
    with pytest.raises(ValueError, match="kernel_size \\* dilation"):
        masked_attention(q, k, v, M.neighborhood_mask(7), shape)
    with pytest.raises(ValueError, match="no fast path"):
        masked_attention(q, k, v, M.neighborhood_mask(3) | M.axial_mask(0), shape, backend="fast")
