"""Peak memory: the running maximum of allocations, and the profiler-based CPU measurement."""

import pytest
import torch
import torch.nn.functional as F

from visattn.bench import peak_memory_bytes
from visattn.bench.memory import peak_of_allocations

MIB = 1 << 20


def test_peak_of_allocations():
    assert peak_of_allocations([]) == 0
    assert peak_of_allocations([4, 4, -4, 4, -8]) == 8
    assert peak_of_allocations([-5, 3]) == 0
    assert peak_of_allocations([10, -10, 3]) == 10


def test_cpu_peak_sees_intermediates_that_are_freed():
    def two_then_one():
        a = torch.ones(MIB)  # 4 MiB
        b = a * 2  # another 4 MiB while a lives
        del a
        return (b + 1).sum()

    peak = peak_memory_bytes(two_then_one, "cpu")
    assert 8 * MIB <= peak < 9 * MIB


def test_cpu_peak_does_not_count_inputs():
    x = torch.ones(4 * MIB)
    peak = peak_memory_bytes(lambda: x.sum(), "cpu")
    assert peak < MIB


def test_sdpa_peak_stays_below_the_dense_score_matrix():
    q = torch.randn(1, 2, 1024, 16)
    peak = peak_memory_bytes(lambda: F.scaled_dot_product_attention(q, q, q), "cpu")
    assert q.numel() * 4 <= peak < 2 * 1024 * 1024 * 4


def test_unsupported_device_gives_none():
    assert peak_memory_bytes(lambda: None, "meta") is None


def test_exceptions_propagate_and_the_profiler_stops():
    def fail():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        peak_memory_bytes(fail, "cpu")
    assert peak_memory_bytes(lambda: torch.ones(MIB), "cpu") >= 4 * MIB


@pytest.mark.parametrize("backward", [False, True])
def test_sdpa_estimate_covers_the_measured_peak_and_inputs(backward):
    from visattn.bench.budget import sdpa_memory_bytes

    q, k, v = (torch.randn(1, 4, 4096, 32, requires_grad=backward) for _ in range(3))
    if backward:
        peak = peak_memory_bytes(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v).sum(), (q, k, v)))
    else:
        peak = peak_memory_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
    inputs = 3 * q.numel() * 4
    assert peak + inputs <= sdpa_memory_bytes(1, 4, 4096, 32, 4, backward)
