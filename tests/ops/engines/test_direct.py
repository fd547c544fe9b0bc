"""The direct inference path of the progression kernels (visattn.ops.engines.direct): bit-identical to the custom
operator on every route, plans keyed by everything they depend on, a bounded cache, and the operator wherever
autograd, tracing, modes or bad input need it."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from visattn import _cache, clear_caches, masks
from visattn.ops import masked_attention, native
from visattn.ops.engines import direct
from visattn.ops.native import native_library
from visattn.testing import random_qkv

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(any(native_library(lib) is None for lib in ("tile_attention", "local_attention")),
                       reason="the C++ kernels are not built on this machine"),
]

OPS = torch.ops.visattn

CASES = [  # (mask, shape, prefix, batch, heads, head_dim, dv, dtype, contiguous)
    (masks.neighborhood_mask(7), (8, 8), 0, 1, 4, 32, 32, torch.float32, False),
    (masks.window_mask(8), (8, 8), 0, 1, 4, 32, 32, torch.float32, True),
    (masks.neighborhood_mask(3), (5, 7), 1, 2, 3, 5, 3, torch.float64, False),
    (masks.neighborhood_mask((3, 5), dilation=(2, 1)), (7, 11), 2, 1, 2, 8, 8, torch.float32, False),
    (masks.neighborhood_mask(3, is_causal=True), (4, 5, 3), 0, 2, 1, 4, 6, torch.float64, True),
    (masks.window_mask(3), (6, 9), 0, 1, 2, 7, 7, torch.float64, False),
    (masks.grid_mask(3), (9, 6), 1, 1, 2, 4, 4, torch.float32, True),
    (masks.halo_mask(4, 1), (8, 12), 0, 2, 2, 3, 3, torch.float64, False),
    (masks.axial_mask(0), (13, 3), 0, 1, 1, 4, 4, torch.float32, False),
    (masks.sliding_window_mask(5), (17,), 1, 1, 2, 4, 2, torch.float64, True),
]


def _qkv(prefix, shape, batch, heads, head_dim, dv, dtype, contiguous, seed=0):
    q, k, v = random_qkv(batch, heads, prefix + math.prod(shape), head_dim, dtype, seed, contiguous)
    if dv != head_dim:
        v = random_qkv(batch, heads, prefix + math.prod(shape), dv, dtype, seed + 1, contiguous)[2]
    return q, k, v


@pytest.mark.parametrize("engine", ["fused_tiles", "per_query"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_direct_path_equals_the_custom_operator_bit_for_bit(case, engine):
    mask, shape, prefix, batch, heads, head_dim, dv, dtype, contiguous = CASES[case]
    q, k, v = _qkv(prefix, shape, batch, heads, head_dim, dv, dtype, contiguous)
    scale = head_dim**-0.5
    out = direct.progression_forward(q, k, v, mask.key, shape, prefix, scale, engine)
    assert out is not None, "the direct path must take a plain inference call"
    op_out = OPS.progression_attention(q, k, v, mask.key, list(shape), prefix, scale, False, engine)[0]
    assert torch.equal(out, op_out)
    assert out.shape == op_out.shape and out.dtype == op_out.dtype and out.stride() == op_out.stride()
    with torch.no_grad():
        default = masked_attention(q, k, v, mask, shape, prefix, backend=engine)
        with direct.direct_calls(False):
            forced = masked_attention(q, k, v, mask, shape, prefix, backend=engine)
    assert torch.equal(default, forced)
    torch.testing.assert_close(default, masked_attention(q, k, v, mask, shape, prefix, backend="reference"),
                               rtol=1e-4 if dtype == torch.float32 else 1e-10,
                               atol=1e-5 if dtype == torch.float32 else 1e-10)


def test_plans_are_keyed_by_mask_grid_prefix_engine_and_dtype():
    """Calls that differ in one of them, interleaved, each get their own plan and the operator's result."""
    clear_caches()
    small, large = masks.neighborhood_mask(3), masks.neighborhood_mask(5)
    calls = [(small, (5, 7), 0, torch.float32), (large, (5, 7), 0, torch.float32), (small, (7, 5), 0, torch.float32),
             (small, (5, 7), 1, torch.float32), (small, (5, 7), 0, torch.float64), (large, (7, 5), 1, torch.float64)]
    plans = []
    for _ in range(2):
        for engine in ("fused_tiles", "per_query"):
            for seed, (mask, shape, prefix, dtype) in enumerate(calls):
                q, k, v = _qkv(prefix, shape, 1, 2, 4, 4, dtype, False, seed)
                out = direct.progression_forward(q, k, v, mask.key, shape, prefix, 0.5, engine)
                expected = OPS.progression_attention(q, k, v, mask.key, list(shape), prefix, 0.5, False, engine)[0]
                assert torch.equal(out, expected)
                plan = direct.forward_plan(mask.key, shape, prefix, engine, dtype)
                assert plan.dtype == dtype and plan.prefix == prefix and plan.tokens == prefix + math.prod(shape)
                plans.append(plan)
    first, second = plans[: len(plans) // 2], plans[len(plans) // 2 :]
    assert len({id(p) for p in first}) == len(first)  # one plan per kind of call
    assert all(a is b for a, b in zip(first, second, strict=True))  # found again, not rebuilt


def test_a_plan_never_serves_tensors_it_does_not_fit():
    """A tensor of another dtype or token count than the plan's is refused (None: the operator runs and raises)."""
    mask, shape = masks.neighborhood_mask(3), (5, 7)
    q, k, v = _qkv(0, shape, 1, 2, 4, 4, torch.float32, False)
    assert direct.progression_forward(q, k, v, mask.key, shape, 0, 0.5, "fused_tiles") is not None
    assert direct.progression_forward(q, k, v, mask.key, (7, 5), 1, 0.5, "fused_tiles") is None  # 36 != 35 tokens
    assert direct.progression_forward(q, k.double(), v, mask.key, shape, 0, 0.5, "fused_tiles") is None
    assert direct.progression_forward(q, k[:, :1], v, mask.key, shape, 0, 0.5, "fused_tiles") is None
    assert direct.progression_forward(q.half(), k.half(), v.half(), mask.key, shape, 0, 0.5, "fused_tiles") is None
    with pytest.raises(ValueError, match="tokens"):
        masked_attention(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1], mask, (5, 7), backend="fused_tiles")


def test_the_cache_stays_within_its_byte_budget(monkeypatch):
    """Many kinds of call: plans are evicted least recently used first, and the cache never holds more bytes than
    its budget; the stride arrays are an LRU of bounded size."""
    clear_caches()
    budget = 200_000
    monkeypatch.setenv(_cache.ENV_VAR, str(budget))
    mask = masks.neighborhood_mask(3)
    kinds = 0
    for height in range(3, 23):
        for width in (3, 4):
            q, k, v = _qkv(0, (height, width), 1, 1, 2, 2, torch.float64, True)
            assert direct.progression_forward(q, k, v, mask.key, (height, width), 0, 0.5, "fused_tiles") is not None
            kinds += 1
            assert _cache.cache_bytes() <= budget
    plans = [key for key in _cache._ENTRIES if key[0] == "direct.forward_plan"]
    assert 0 < len(plans) < kinds
    assert ("direct.forward_plan", mask.key, (22, 4), 0, "fused_tiles", torch.float64) in plans  # the newest stays
    for rows in range(1, 400):
        arrays = native.stride_arrays((rows * 4, rows * 2, 4, 1), (rows, rows, 1, 1))
        assert [list(a) for a in arrays] == [[rows * 4, rows * 2, 4], [rows, rows, 1]]
    for cached in (native.stride_array, native.stride_arrays):
        info = cached.cache_info()
        assert info.maxsize is not None and info.currsize <= info.maxsize
    clear_caches()


class _CountingMode(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_operator_runs_where_autograd_modes_or_the_switch_need_it():
    mask, shape = masks.window_mask(2), (4, 4)
    q, k, v = _qkv(0, shape, 1, 2, 4, 4, torch.float64, False)
    call = (mask.key, shape, 0, 0.5, "fused_tiles")
    trainable = [t.detach().requires_grad_() for t in (q, k, v)]
    assert direct.progression_forward(*trainable, *call) is None
    with torch.no_grad():
        assert direct.progression_forward(*trainable, *call) is not None
    with direct.direct_calls(False):
        assert direct.progression_forward(q, k, v, *call) is None
        assert not direct.direct_enabled()
    assert direct.direct_enabled()
    with torch.device("cpu"):
        assert direct.progression_forward(q, k, v, *call) is None
    mode = _CountingMode()
    with mode:
        out = masked_attention(q, k, v, mask, shape, backend="fused_tiles")
    assert any("progression_attention" in op for op in mode.ops)
    assert torch.equal(out, direct.progression_forward(q, k, v, *call))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace` is deprecated")
def test_jit_trace_records_the_operator():
    """A trace must see the kernel as an op (a direct call would be baked into the trace as a constant)."""
    mask, shape = masks.window_mask(2), (4, 4)
    q, k, v = _qkv(0, shape, 1, 2, 4, 4, torch.float64, False)
    traced = torch.jit.trace(lambda q, k, v: masked_attention(q, k, v, mask, shape, backend="fused_tiles"),
                             (q, k, v), check_trace=False)
    assert "visattn::progression_attention" in str(traced.graph)
    q, k, v = _qkv(0, shape, 1, 2, 4, 4, torch.float64, False, seed=5)
    assert torch.equal(traced(q, k, v), direct.progression_forward(q, k, v, mask.key, shape, 0, 0.5, "fused_tiles"))


def test_training_still_runs_the_operator_and_its_backward():
    mask, shape = masks.neighborhood_mask(3), (5, 6)
    q, k, v = (t.detach().requires_grad_() for t in _qkv(1, shape, 1, 2, 4, 4, torch.float64, False))
    out = masked_attention(q, k, v, mask, shape, 1, backend="fused_tiles")
    assert out.grad_fn is not None
    out.square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))
