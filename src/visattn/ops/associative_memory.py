"""Linear attention as a Hebbian associative memory: store key/value pairs, retrieve by query, measure crosstalk.

Paper: "Understanding Transformers through the Lens of Pavlovian Conditioning" (arXiv 2508.08289). Unnormalised
linear attention writes each pair as an outer product into one matrix and reads it with the query:

    M = sum_j v_j k_j^T   (d_v x d_k),     o = M q = sum_j (k_j . q) v_j,

so ``o = sum_j (q . k_j) v_j`` is exactly linear attention without normalisation and with the identity feature
map. Recalling stored pair ``i`` with ``q = k_i`` gives ``o = v_i ||k_i||^2 + sum_{j != i} (k_j . k_i) v_j``: the
signal plus crosstalk from every other stored pair. With unit-norm random keys (``k_j . k_i`` of mean 0 and
variance ``1 / d_k`` for ``j != i``) and values of i.i.d. unit-variance entries, each output entry's error
``o - v_i`` has mean 0 and variance ``(N - 1) / d_k``: retrieval degrades as pairs are added and improves with
``d_k`` (the paper's capacity argument: average-case fidelity ``O(d_k)`` pairs).

An analysis tool, not a token mixer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RetrievalResult", "hebbian_memory", "random_associations", "retrieval_accuracy", "retrieve"]


def hebbian_memory(keys: Tensor, values: Tensor) -> Tensor:
    """``M = sum_j v_j k_j^T``: keys ``(..., N, d_k)``, values ``(..., N, d_v)`` -> ``(..., d_v, d_k)``."""
    if not isinstance(keys, Tensor) or not isinstance(values, Tensor):
        raise TypeError(f"keys and values must be torch.Tensor, got {type(keys).__name__}, {type(values).__name__}")
    if keys.dim() < 2 or values.dim() < 2 or keys.shape[:-1] != values.shape[:-1]:
        raise ValueError(f"keys (..., N, d_k) and values (..., N, d_v) must agree on (..., N), got keys "
                         f"{tuple(keys.shape)} and values {tuple(values.shape)}")
    return values.transpose(-2, -1) @ keys


def retrieve(memory: Tensor, queries: Tensor) -> Tensor:
    """``o = M q`` for each query: memory ``(..., d_v, d_k)``, queries ``(..., Q, d_k)`` -> ``(..., Q, d_v)``."""
    if memory.dim() < 2 or queries.dim() < 2 or memory.shape[-1] != queries.shape[-1]:
        raise ValueError(f"memory (..., d_v, d_k) and queries (..., Q, d_k) must share d_k, got memory "
                         f"{tuple(memory.shape)} and queries {tuple(queries.shape)}")
    return queries @ memory.transpose(-2, -1)


def random_associations(trials: int, num_pairs: int, d_k: int, d_v: int, generator: torch.Generator | None = None,
                        dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """``trials`` independent sets of ``num_pairs`` pairs: unit-norm Gaussian-direction keys ``(trials, N, d_k)``
    and standard normal values ``(trials, N, d_v)``."""
    keys = torch.randn(trials, num_pairs, d_k, generator=generator, dtype=dtype)
    keys = keys / torch.linalg.vector_norm(keys, dim=-1, keepdim=True)
    values = torch.randn(trials, num_pairs, d_v, generator=generator, dtype=dtype)
    return keys, values


@dataclass(frozen=True)
class RetrievalResult:
    """Measured retrieval of stored pairs from a Hebbian memory.

    ``mean_squared_error``: mean over entries of ``(o - v_i)^2`` when recalling with ``q = k_i``;
    ``predicted_error``: the crosstalk prediction ``(N - 1) / d_k`` for it; ``accuracy``: fraction of recalls whose
    output is closer (cosine) to ``v_i`` than to every other stored value; ``cosine``: mean cosine of ``o`` and
    ``v_i``.
    """

    num_pairs: int
    d_k: int
    d_v: int
    trials: int
    mean_squared_error: float
    predicted_error: float
    accuracy: float
    cosine: float


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def retrieval_accuracy(num_pairs: int, d_k: int, d_v: int = 64, trials: int = 100, seed: int = 0) -> RetrievalResult:
    """Store ``num_pairs`` random pairs (:func:`random_associations`) ``trials`` times, recall each with its own
    key, and measure the error, the nearest-value accuracy and the cosine (float64, seeded)."""
    for name, value in (("num_pairs", num_pairs), ("d_k", d_k), ("d_v", d_v), ("trials", trials)):
        _positive_int(value, name)
    generator = torch.Generator().manual_seed(seed)
    keys, values = random_associations(trials, num_pairs, d_k, d_v, generator)
    recalled = retrieve(hebbian_memory(keys, values), keys)
    error = ((recalled - values) ** 2).mean().item()
    unit_out = recalled / torch.linalg.vector_norm(recalled, dim=-1, keepdim=True).clamp_min(1e-300)
    unit_values = values / torch.linalg.vector_norm(values, dim=-1, keepdim=True)
    cosines = unit_out @ unit_values.transpose(-2, -1)
    hits = cosines.argmax(dim=-1) == torch.arange(num_pairs)
    return RetrievalResult(
        num_pairs=num_pairs,
        d_k=d_k,
        d_v=d_v,
        trials=trials,
        mean_squared_error=error,
        predicted_error=(num_pairs - 1) / d_k,
        accuracy=hits.double().mean().item(),
        cosine=cosines.diagonal(dim1=-2, dim2=-1).mean().item(),
    )
