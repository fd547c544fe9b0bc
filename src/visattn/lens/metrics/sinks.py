"""Massive activations and sink tokens in the residual stream (VAR).

Kang et al., "See What You Are Told: Visual Attention Sink in Large Multimodal Models", arXiv 2503.03321: a token
``x`` (the hidden state entering a layer) is a sink when ``phi(x) = max_{d in D_sink} |x[d] / RMS(x)| > tau``,
``RMS(x) = sqrt(mean_c x[c]^2 + 1e-6)``, ``tau = 20``. ``D_sink`` is fixed per model in the paper (LLaMA-2-7B /
LLaVA-1.5-7B: {1415, 2533}); :func:`massive_activation_dims` finds it from hidden states.

Note: ``|x[d]| / RMS(x) <= sqrt(C)`` for ``C`` channels, so ``tau = 20`` can only fire when ``C > 400``; for small
models pass a smaller ``tau``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._validate import tensor

RMS_EPS = 1e-6
SINK_TAU = 20.0


def rms_ratio(hidden: Tensor, eps: float = RMS_EPS) -> Tensor:
    """``|x[c]| / sqrt(mean_c x[c]^2 + eps)`` for every token and channel: ``(..., N, C) -> (..., N, C)``
    (computed in float32 or wider)."""
    hidden = tensor(hidden, "hidden", min_dim=2)
    x = hidden.to(torch.promote_types(hidden.dtype, torch.float32))
    return x.abs() * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)


def _dims(dims: Sequence[int] | Tensor, channels: int) -> Tensor:
    values = dims.reshape(-1).tolist() if isinstance(dims, Tensor) else dims
    if isinstance(values, int) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"dims must be a non-empty sequence of channel indices, got {dims!r}")
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in values):
        raise TypeError(f"dims must contain ints, got {dims!r}")
    bad = [d for d in values if not 0 <= d < channels]
    if bad:
        raise ValueError(f"dims {bad} out of range for hidden states with {channels} channels")
    return torch.as_tensor(values, dtype=torch.long)


def sink_scores(hidden: Tensor, dims: Sequence[int] | Tensor, eps: float = RMS_EPS) -> Tensor:
    """``phi(x) = max_{d in dims} |x[d] / RMS(x)|`` for every token: ``(..., N, C) -> (..., N)``."""
    ratio = rms_ratio(hidden, eps)
    return ratio[..., _dims(dims, ratio.shape[-1]).to(ratio.device)].amax(dim=-1)


def sink_tokens(hidden: Tensor, dims: Sequence[int] | Tensor, tau: float = SINK_TAU, eps: float = RMS_EPS) -> Tensor:
    """Bool mask ``(..., N)`` of the sink tokens: ``phi(x) > tau``."""
    return sink_scores(hidden, dims, eps) > tau


def massive_activation_dims(
    hidden: Tensor,
    threshold: float = SINK_TAU,
    top_k: int | None = None,
    eps: float = RMS_EPS,
) -> Tensor:
    """The channels that carry massive activations, strongest first.

    Rule: channel ``d`` scores ``s_d = max over every token (and leading index) of |x[d]| / RMS(x)``; the channels
    with ``s_d > threshold`` are returned in decreasing order of ``s_d``, at most ``top_k`` of them. With the
    default ``threshold = tau = 20`` every token that :func:`sink_tokens` flags has its maximum in a returned
    channel, so ``sink_tokens(h, massive_activation_dims(h))`` finds every token with some ``|x[d]|/RMS > 20``.

    Args:
        hidden: hidden states ``(..., N, C)`` (e.g. the residual stream entering one or several layers).
        threshold: the ratio a channel must exceed somewhere.
        top_k: keep at most this many channels (None: all above the threshold).

    Returns:
        int64 channel indices ``(D,)`` (empty when none exceeds the threshold).
    """
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    ratio = rms_ratio(hidden, eps)
    score = ratio.reshape(-1, ratio.shape[-1]).amax(dim=0)
    order = torch.argsort(score, descending=True, stable=True)
    chosen = order[score[order] > threshold]
    return chosen if top_k is None else chosen[:top_k]
