"""Under ``torch.use_deterministic_algorithms(True)`` the fused kernels' backward is bit-reproducible: the tile kernel
over a neighborhood (tiles share keys: per-thread dK, dV copies summed after) and the per-query kernel (one thread
per key row), on two threads so that the work is split."""

from __future__ import annotations

import math

import pytest
import torch

from visattn import masks
from visattn.ops import masked_attention
from visattn.ops.engines.fused_tiles import progression_tiles
from visattn.ops.engines.kernel_ops import tile_attention
from visattn.ops.engines.layout import local_layout
from visattn.ops.native import native_library
from visattn.testing import random_qkv

pytestmark = pytest.mark.skipif(
    native_library("tile_attention_backward") is None or native_library("local_attention") is None,
    reason="the C++ kernels do not build here")

MASK, SHAPE, PREFIX = masks.neighborhood_mask((3, 3)), (16, 16), 1


def _tiles(q, k, v):
    tiles = progression_tiles(local_layout(MASK, SHAPE), PREFIX, (4, 4))
    assert not tiles.keys_disjoint  # the case under test: tiles share keys
    return tile_attention(q, k, v, tiles, PREFIX)


ENGINES = {
    "explicit_shared_tiles": _tiles,
    "fused_tiles": lambda q, k, v: masked_attention(q, k, v, MASK, SHAPE, PREFIX, backend="fused_tiles"),
    "per_query": lambda q, k, v: masked_attention(q, k, v, MASK, SHAPE, PREFIX, backend="per_query"),
}


@pytest.fixture
def deterministic_two_threads():
    threads, before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("deterministic_two_threads")
@pytest.mark.parametrize("engine", list(ENGINES))
def test_backward_is_bit_reproducible(engine):
    q, k, v = random_qkv(2, 2, PREFIX + math.prod(SHAPE), 16, dtype=torch.float32, seed=7)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(8))
    runs = []
    for _ in range(6):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = ENGINES[engine](*leaves)
        assert out is not None, f"{engine} declined"
        runs.append(torch.autograd.grad(out, leaves, grad))
    for run in runs[1:]:
        for name, first, again in zip("qkv", runs[0], run, strict=True):
            assert torch.equal(first, again), (
                f"{engine}: d{name} differs between backward passes by up to {(first - again).abs().max():.3g}")
