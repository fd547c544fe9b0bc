"""RTNet's HybridBlock: a residual bottleneck whose 3x3 stage runs in the tanh-polar and tanh-Cartesian frames.

Paper: Lin et al., "RoI Tanh-polar Transformer Network for Face Parsing in the Wild" (arXiv 2102.02717). The input
is a feature map in the RoI tanh-polar frame (rows = angle, columns = radius). With ``g = planes / 2``:

    a = ReLU(BN(Conv3x3_pad(ReLU(BN(Conv1x1_{in -> g}(x))))))        pad: circular over angle (rows), replicate
                                                                      over radius (columns), as published
    b = ReLU(P(BN(Conv3x3(C(ReLU(BN(Conv1x1_{in -> g}(x))))))))      C: tanh-polar -> tanh-Cartesian resampling
                                                                      of the RoI, zero padding; P: back to polar
    out = ReLU(BN(Conv1x1_{2g -> 4 planes}([a | b])) + shortcut(x))

``hybrid=False`` keeps ``b`` in the polar frame with zero padding (the released non-hybrid stages). ``shortcut``
is the identity or the given ``downsample``. ``C`` and ``P`` are
:func:`visattn.transforms.tanh_polar.tanh_polar_to_tanh_cartesian` and its inverse (bilinear, zeros outside, the
released ``roi_tanh_polar_to_roi_tanh`` / ``roi_tanh_to_roi_tanh_polar``); they need each image's RoI ``(x1, y1,
x2, y2)`` (its aspect ratio only), so ``forward`` takes ``rois``. RTNet uses ``keep_aspect_ratio=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...transforms.tanh_polar import tanh_cartesian_to_tanh_polar, tanh_polar_to_tanh_cartesian
from ._checks import feature_map, positive_int

__all__ = ["HybridBlock", "MixedPad2d"]


class MixedPad2d(nn.Module):
    """Pad rows (angle) by wrapping and columns (radius) by edge replication, ``padding`` pixels each side.

    Rows are padded first, so the corner pixels replicate the wrapped rows, as in the released ``MixPad2d``.
    """

    def __init__(self, padding: int) -> None:
        super().__init__()
        self.padding = positive_int(padding, "padding", 0)

    def forward(self, x: Tensor) -> Tensor:
        p = self.padding
        return F.pad(F.pad(x, (0, 0, p, p), mode="circular"), (p, p, 0, 0), mode="replicate")


class HybridBlock(nn.Module):
    """RTNet HybridBlock (arXiv 2102.02717) on a tanh-polar feature map; ``forward(x, rois)``.

    Args:
        inplanes: input channels.
        planes: bottleneck planes; the output has ``4 planes`` channels and each branch ``planes // 2``.
            Defaults to ``inplanes // 4`` (identity shortcut).
        stride, dilation: of both 3x3 convolutions.
        downsample: shortcut module, required when the shape changes.
        hybrid: run the second branch in the tanh-Cartesian frame (the published hybrid stages).
        keep_aspect_ratio: the warps' elliptical radius (RTNet's setting, True).
        norm_layer: normalisation (BatchNorm).
        device, dtype: factory arguments.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int | None = None, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, hybrid: bool = True, keep_aspect_ratio: bool = True,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        positive_int(inplanes, "inplanes")
        planes = inplanes // self.expansion if planes is None else planes
        positive_int(planes, "planes", 2)
        positive_int(stride, "stride")
        positive_int(dilation, "dilation")
        width = planes // 2
        if downsample is None and (stride != 1 or inplanes != planes * self.expansion):
            raise ValueError(f"downsample is required when stride != 1 or inplanes ({inplanes}) != 4 planes "
                             f"({planes * self.expansion}); got stride={stride}")
        dd = {"device": device, "dtype": dtype}
        self.inplanes, self.planes, self.hybrid, self.keep_aspect_ratio = inplanes, planes, hybrid, keep_aspect_ratio
        self.conv1_a = nn.Conv2d(inplanes, width, 1, bias=False, **dd)
        self.bn1_a = norm_layer(width, **dd)
        self.conv1_b = nn.Conv2d(inplanes, width, 1, bias=False, **dd)
        self.bn1_b = norm_layer(width, **dd)
        self.conv_polar = nn.Sequential(
            MixedPad2d(dilation),
            nn.Conv2d(width, width, 3, stride=stride, dilation=dilation, bias=False, **dd),
            norm_layer(width, **dd),
        )
        self.conv_cart = nn.Sequential(
            nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False, **dd),
            norm_layer(width, **dd),
        )
        self.conv3 = nn.Conv2d(2 * width, planes * self.expansion, 1, bias=False, **dd)
        self.bn3 = norm_layer(planes * self.expansion, **dd)
        self.downsample = downsample

    def forward(self, x: Tensor, rois: Tensor) -> Tensor:
        feature_map(x, self.inplanes)
        a = F.relu(self.bn1_a(self.conv1_a(x)))
        b = F.relu(self.bn1_b(self.conv1_b(x)))
        a = F.relu(self.conv_polar(a))
        if self.hybrid:
            b = tanh_polar_to_tanh_cartesian(b, rois, b.shape[-2:], keep_aspect_ratio=self.keep_aspect_ratio)
            b = self.conv_cart(b)
            b = tanh_cartesian_to_tanh_polar(b, rois, b.shape[-2:], keep_aspect_ratio=self.keep_aspect_ratio)
        else:
            b = self.conv_cart(b)
        out = self.bn3(self.conv3(torch.cat((a, F.relu(b)), dim=1)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)
