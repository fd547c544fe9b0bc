"""Work a mixer does: attended (query, key) pairs and the useful floating-point operations they cost.

Convention (as in FlashAttention, Dao et al., arXiv 2205.14135): each attended pair costs one multiply-add
per head dimension in ``q k^T`` and one in ``P v``, so the forward pass does ``4 * pairs * head_dim * heads *
batch`` useful FLOPs (a multiply-add counts 2). The backward pass needs four products of the same size
(``dV = P^T dO``, ``dP = dO V^T``, ``dQ = dS K``, ``dK = dS^T Q``), twice the forward, so forward + backward
counts ``3x`` the forward. Softmax, masking and any recomputation a kernel chooses to do are not counted:
these are the FLOPs the mechanism needs, not the FLOPs a kernel spends.
"""

from __future__ import annotations

import math

from ..masks import Mask, pair_count
from ..nn import SoftmaxMixer

FORWARD_FLOPS_PER_PAIR = 4
"""Useful forward FLOPs per attended pair, per head dimension, head and batch element."""

BACKWARD_MULTIPLIER = 3
"""Forward + backward useful FLOPs as a multiple of the forward FLOPs."""


def attended_pairs(mixer: object, shape: tuple[int, ...], num_prefix_tokens: int = 0) -> int | None:
    """The (query, key) pairs ``mixer`` attends on ``shape`` with ``num_prefix_tokens`` prefix tokens.

    Taken from the mixer's own ``pair_count(shape, num_prefix_tokens)`` when it has one, else from its
    ``mask`` (:func:`visattn.masks.pair_count`), else ``N^2`` for dense softmax. ``None`` for mixers whose
    work is not a set of attended token pairs (channel attention, linear attention, ...).
    """
    counter = getattr(mixer, "pair_count", None)
    if callable(counter):
        return int(counter(shape, num_prefix_tokens))
    mask = getattr(mixer, "mask", None)
    if isinstance(mask, Mask):
        return pair_count(mask, shape, num_prefix_tokens)
    if isinstance(mixer, SoftmaxMixer):
        n = num_prefix_tokens + math.prod(shape)
        return n * n
    return None


def useful_flops(pairs: int, heads: int, head_dim: int, batch: int, backward: bool = False) -> int:
    """``4 * pairs * head_dim * heads * batch``, times 3 with the backward pass (module docstring)."""
    for name, value in (("pairs", pairs), ("heads", heads), ("head_dim", head_dim), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    flops = FORWARD_FLOPS_PER_PAIR * pairs * head_dim * heads * batch
    return BACKWARD_MULTIPLIER * flops if backward else flops


def gflops_per_second(flops: int, milliseconds: float) -> float:
    """Achieved GFLOP/s: ``flops / (milliseconds * 1e-3) / 1e9``."""
    if not milliseconds > 0:
        raise ValueError(f"milliseconds must be > 0, got {milliseconds!r}")
    return flops / (milliseconds * 1e6)
