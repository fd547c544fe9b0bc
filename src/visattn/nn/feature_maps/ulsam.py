"""ULSAM: ultra-lightweight subspace attention.

Paper: Saini et al., "ULSAM: Ultra-Lightweight Subspace Attention Module for Compact Convolutional Neural Networks"
(arXiv 2006.15102, WACV 2020). The ``m`` channels of ``F`` (``m x h x w``) are split into ``g`` subspaces of
``G = m / g`` channels; each subspace ``F_n`` gets its own spatial attention map:

    A_n = softmax_hw(PW_{G->1}(maxpool_3x3,s1,p1(DW_1x1(F_n))))      (one 1 x h x w map per subspace)
    F^_n = F_n + A_n * F_n,       F^ = concat(F^_1, ..., F^_g)

``DW_1x1`` is a depthwise 1x1 convolution (one weight per channel) and ``PW_{G->1}`` a pointwise convolution to one
channel, so the module has ``m + m = 2m`` weights. ``variant="paper"`` is exactly that (no bias, no normalisation:
2m parameters). ``variant="official"`` is the released ``ULSAM`` (Nandan91/ULSAM): both convolutions carry a bias and
each is followed by BatchNorm (momentum 0.9, PyTorch's convention: the running statistics follow the batch closely)
and ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import choice, divisible, feature_map, positive_int

__all__ = ["SubspaceAttention"]

VARIANTS = ("paper", "official")
OFFICIAL_BN_MOMENTUM = 0.9


def _max_pool3x3(x: Tensor) -> Tensor:
    """``max_pool2d(x, 3, stride=1, padding=1)`` as the maximum over three rows, then three columns."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(padded[..., 0:h, :], padded[..., 1:h + 1, :]), padded[..., 2:h + 2, :])
    return torch.maximum(torch.maximum(rows[..., 0:w], rows[..., 1:w + 1]), rows[..., 2:w + 2])


class SubspaceAttention(nn.Module):
    """ULSAM subspace attention (Saini et al., arXiv 2006.15102) on ``(B, m, h, w)``; same shape out.

    Args:
        channels: ``m``.
        groups: ``g``, the number of subspaces; must divide ``channels``.
        variant: ``"paper"`` (2m weights, no bias, no BN) or ``"official"`` (bias, BN + ReLU after both convs).
        device, dtype: factory arguments (timm passes them to attention layers).

    The subspaces are computed together: the depthwise 1x1 convolution (parameters of a ``groups=m`` convolution)
    is a per-channel scale, the ``g`` pointwise ``G -> 1`` convolutions are one ``groups=g`` convolution from ``m``
    to ``g`` channels, and the 3x3 max-pool is the maximum of shifted views (on CPU ``max_pool2d`` at stride 1 took
    about 20x longer for the same values).
    """

    def __init__(self, channels: int, groups: int = 4, variant: str = "paper",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        positive_int(channels, "channels")
        positive_int(groups, "groups")
        divisible(channels, groups, "channels", "groups")
        self.variant = choice(variant, "variant", VARIANTS)
        self.channels, self.groups = channels, groups
        official = variant == "official"
        dd = {"device": device, "dtype": dtype}
        self.dw = nn.Conv2d(channels, channels, 1, groups=channels, bias=official, **dd)
        self.pw = nn.Conv2d(channels, groups, 1, groups=groups, bias=official, **dd)
        if official:
            self.dw_norm: nn.Module = nn.BatchNorm2d(channels, momentum=OFFICIAL_BN_MOMENTUM, **dd)
            self.pw_norm: nn.Module = nn.BatchNorm2d(groups, momentum=OFFICIAL_BN_MOMENTUM, **dd)
            self.act: nn.Module = nn.ReLU()
        else:
            self.dw_norm = self.pw_norm = self.act = nn.Identity()

    def attention_maps(self, x: Tensor) -> Tensor:
        """The ``g`` maps ``A_n``, shape ``(B, g, h, w)``; each sums to 1 over ``h, w``."""
        feature_map(x, self.channels)
        b, _, h, w = x.shape
        y = x * self.dw.weight.reshape(1, -1, 1, 1)
        if self.dw.bias is not None:
            y = y + self.dw.bias.reshape(1, -1, 1, 1)
        y = _max_pool3x3(self.act(self.dw_norm(y)))
        y = self.act(self.pw_norm(self.pw(y)))
        return torch.softmax(y.reshape(b, self.groups, h * w), dim=-1).reshape(b, self.groups, h, w)

    def forward(self, x: Tensor) -> Tensor:
        maps = self.attention_maps(x)
        b, _, h, w = x.shape
        grouped = x.reshape(b, self.groups, self.channels // self.groups, h, w)
        return (grouped * (1 + maps.unsqueeze(2))).reshape(b, self.channels, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}, variant={self.variant!r}"
