"""RST's dynamic radial embedding as a ``(channels, ...)``-first feature-map module.

Paper: Chen et al., "Spread Your Wings: A Radial Strip Transformer for Image Deblurring" (arXiv 2404.00358). An
ordinary convolution plus a deformable one whose sampling offsets are driven by the angle map about a centre:

    out = Conv_kxk(x) + DeformConv_kxk(x, offsets),   offsets = Conv_kxk([cos theta, sin theta]),
    theta(y, x) = atan2(y - cy, x - cx)                (torchvision.ops.deform_conv2d; offsets (dy, dx) per tap)

The definition lives in :class:`visattn.nn.DynamicRadialEmbedding` (the patch-embedding form, ``in_chans`` ->
``embed_dim``); this class only gives it the ``(channels, ...)`` signature of timm's attention layers, so it can
be placed in a CNN's blocks (``out_channels`` defaults to ``channels``). The released MDT code builds its offset
convolution afresh, with random weights, inside every forward pass and derives the offsets from the image rather
than the angle map; that is not reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..radial_strip import DynamicRadialEmbedding
from ._checks import positive_int

__all__ = ["RadialEmbedding2d"]


class RadialEmbedding2d(DynamicRadialEmbedding):
    """Dynamic radial embedding (RST, arXiv 2404.00358) from ``channels`` to ``out_channels`` (default: the same).

    Args:
        channels: input channels.
        out_channels: output channels; ``None`` keeps ``channels``.
        kernel_size: odd kernel of both convolutions.
        bias: biases on the two convolutions.
        center: ``(row, column)`` of the angle map's centre in pixels; ``None`` is the middle of the map.
        device, dtype: where and in which dtype the parameters live.
    """

    def __init__(self, channels: int, out_channels: int | None = None, kernel_size: int = 3, bias: bool = False,
                 center: Sequence[float] | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        positive_int(channels, "channels")
        out = channels if out_channels is None else positive_int(out_channels, "out_channels")
        super().__init__(channels, out, kernel_size=kernel_size, bias=bias, center=center)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)
        self.channels, self.out_channels = channels, out
