"""timm's ``forward_intermediates`` for models whose stages map channels-last feature maps ``(B, H, W, C)`` to the
same layout: NAT / DiNAT (Hassani et al., arXiv 2204.07143, 2209.15001; hierarchical levels) and their isotropic
variants (one block per stage). Stage ``i`` maps ``x_i`` to ``f_i``; the intermediates are the requested ``f_i``
(the last one through the final norm when ``norm``), and ``x_{i+1} = down_i(f_i)`` (``down_i`` the identity where
the stage has no downsampler)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from timm.models._features import feature_take_indices
from torch import Tensor

__all__ = ["CHANNELS_LAST_FORMATS", "channels_last_intermediates"]

CHANNELS_LAST_FORMATS = ("NCHW", "NHWC")
"""The layouts an intermediate map can be returned in."""

TensorMap = Callable[[Tensor], Tensor]


def channels_last_intermediates(x: Tensor, embed: TensorMap, stages: Sequence[TensorMap], final_norm: TensorMap,
                                indices: int | list[int] | None = None, norm: bool = False, stop_early: bool = False,
                                output_fmt: str = "NCHW", intermediates_only: bool = False,
                                downsamples: Sequence[TensorMap | None] | None = None,
                                ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
    """``embed(x)`` through ``stages`` (``downsamples[i]``, when given and not None, after stage ``i``), keeping the
    outputs of the stages ``indices`` selects (timm's ``feature_take_indices``) as ``output_fmt`` maps; the last
    stage's output normed with ``final_norm`` if ``norm``. ``stop_early`` runs no stage after the last one kept.

    Returns the intermediates if ``intermediates_only``, else ``(final_norm(x), intermediates)``. A ValueError
    names ``output_fmt`` when it is not one of :data:`CHANNELS_LAST_FORMATS` (checked before anything runs).
    """
    if output_fmt not in CHANNELS_LAST_FORMATS:
        raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
    take, max_index = feature_take_indices(len(stages), indices)
    intermediates = []
    x = embed(x)
    last = len(stages) - 1
    for i, stage in enumerate(stages[:max_index + 1] if stop_early else stages):
        x = stage(x)
        if i in take:
            y = final_norm(x) if norm and i == last else x
            intermediates.append(y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y)
        downsample = downsamples[i] if downsamples is not None else None
        if downsample is not None:
            x = downsample(x)
    if intermediates_only:
        return intermediates
    return final_norm(x), intermediates
