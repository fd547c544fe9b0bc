"""Double backward (``create_graph=True``, e.g. an R1 gradient penalty) through every engine equals naive attention's,
or raises a clear RuntimeError (an autograd Function marked ``once_differentiable``, a derivative torch does not
implement): never gradients silently detached from q, k or v. Naive attention here is
``visattn.testing.rowwise_attention`` (row by row, no code shared with the reference engine, which is tested too).

``ENGINES`` maps an engine name to ``fn(q, k, v, mask, shape, num_prefix_tokens) -> Tensor``;
the dispatch's engines are ``masked_attention(..., backend=name)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from visattn import masks
from visattn.masks import AxialMask, Mask, materialize
from visattn.ops import masked_attention
from visattn.ops.engines.block_sparse import block_tiles, default_blocks
from visattn.ops.engines.kernel_ops import tile_attention
from visattn.ops.native import native_library
from visattn.testing import random_qkv, rowwise_attention

pytestmark = pytest.mark.usefixtures("one_thread")

Engine = Callable[[Tensor, Tensor, Tensor, Mask, tuple[int, ...], int], Tensor | None]
NATIVE = native_library("tile_attention_backward") is not None and native_library("local_attention") is not None


def _backend(name: str) -> Engine:
    return lambda q, k, v, mask, shape, prefix: masked_attention(q, k, v, mask, shape, prefix, name)


ENGINES: dict[str, Engine] = {
    "reference": _backend("reference"),
    "auto": _backend("auto"),
    "dense": _backend("dense"),
    "fused_tiles": _backend("fused_tiles"),
    "fused_blocks": lambda q, k, v, mask, shape, prefix: tile_attention(
        q, k, v, block_tiles(mask, shape, prefix, *default_blocks(mask, shape)), prefix),
    "per_query": _backend("per_query"),
    "sdpa_tiles": _backend("sdpa_tiles"),
    "lines": _backend("sdpa_lines"),
    "block_sparse": _backend("block_sparse"),
}
NATIVE_ENGINES = ("fused_tiles", "fused_blocks", "per_query")
# What a clear refusal says: torch's once_differentiable message, or a derivative it does not implement.
REFUSALS = ("once_differentiable", "differentiate twice", "double backward", "not implemented")

CASES = [
    (masks.neighborhood_mask((3, 3)), (6, 6)),
    (masks.window_mask(3), (6, 6)),
    (masks.axial_mask(1), (5, 6)),
]


def penalty_gradients(out_fn: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor, k: Tensor, v: Tensor,
                      weight: Tensor) -> list[Tensor]:
    """d/d(q, k, v) of |d(weight . out)/dq|^2 (an R1-style penalty), zeros where the penalty does not reach."""
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    (grad_q,) = torch.autograd.grad((out_fn(*leaves) * weight).sum(), leaves[0], create_graph=True)
    grads = torch.autograd.grad(grad_q.square().sum(), leaves, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads, strict=True)]


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize(("mask", "shape"), CASES, ids=["neighborhood", "window", "axial"])
def test_double_backward_matches_naive_or_raises(engine, mask, shape, prefix):
    if engine == "lines" and not isinstance(mask, AxialMask):
        pytest.skip("lines is for axial masks")
    q, k, v = random_qkv(1, 2, prefix + math.prod(shape), 8, seed=5)
    weight = torch.randn(q.shape, generator=torch.Generator().manual_seed(6), dtype=q.dtype)
    allowed = materialize(mask, shape, prefix)
    want = penalty_gradients(lambda *x: rowwise_attention(*x, allowed), q, k, v, weight)

    def out_fn(*x: Tensor) -> Tensor:
        out = ENGINES[engine](*x, mask, shape, prefix)
        if out is None:
            if engine in NATIVE_ENGINES and not NATIVE:
                pytest.skip("the C++ kernels do not build here")
            pytest.fail(f"{engine} declined a differentiable call on {mask!r}")
        return out

    try:
        got = penalty_gradients(out_fn, q, k, v, weight)
    except RuntimeError as err:
        assert any(s in str(err) for s in REFUSALS), f"{engine} raised an unclear error: {err}"
        return
    for name, g, w in zip("qkv", got, want, strict=True):
        what = f"{engine}: d penalty / d{name} (|got| {g.norm():.4g}, |naive| {w.norm():.4g})"
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-9, msg=lambda m, what=what: f"{what}: {m}")
