"""FasterNet's partial convolution (PConv) and the FasterNet block built on it.

Paper: Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks" (arXiv 2303.03667), the
PConv that "Partial Convolution Meets Visual Attention" (arXiv 2503.03148) builds PAT on. With ``c_p = c / n_div``:

    PConv(x) = concat(Conv3x3(x[:, :c_p]), x[:, c_p:])                       (n_div = 4 by default)
    FasterNetBlock(x) = x + DropPath(PW_{2c -> c}(act(BN(PW_{c -> 2c}(PConv(x))))))

The 3x3 convolution sees ``c_p`` channels in and out, so it costs ``1 / n_div^2`` of the full 3x3 convolution's
FLOPs. Two forms compute the same values: ``"split_cat"`` (split, convolve, concatenate) and ``"slicing"`` (copy
the input, overwrite its first ``c_p`` channels with the convolution). The released code keeps ``slicing`` for
inference only; here both are differentiable (the copy is what autograd differentiates through).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import choice, divisible, feature_map, positive_int

__all__ = ["FasterNetBlock", "PartialConv2d"]

FORWARDS = ("split_cat", "slicing")


class PartialConv2d(nn.Module):
    """FasterNet PConv (Chen et al., arXiv 2303.03667): a 3x3 convolution on the first ``channels / n_div``
    channels, the rest passed through; ``(B, C, H, W)`` in and out.

    Args:
        channels: ``c``; ``n_div`` must divide it.
        n_div: the fraction ``1 / n_div`` of channels convolved (paper: 4).
        forward_type: ``"split_cat"`` or ``"slicing"`` (same values).
        kernel_size: odd kernel of the partial convolution (paper: 3).
        device, dtype: factory arguments.
    """

    def __init__(self, channels: int, n_div: int = 4, forward_type: str = "split_cat", kernel_size: int = 3,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        positive_int(channels, "channels")
        positive_int(n_div, "n_div")
        divisible(channels, n_div, "channels", "n_div")
        if positive_int(kernel_size, "kernel_size") % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the output keeps the input size), got {kernel_size}")
        self.forward_type = choice(forward_type, "forward_type", FORWARDS)
        self.channels, self.n_div = channels, n_div
        self.dim_conv = channels // n_div
        self.partial_conv3 = nn.Conv2d(self.dim_conv, self.dim_conv, kernel_size, padding=kernel_size // 2,
                                       bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        feature_map(x, self.channels)
        if self.forward_type == "slicing":
            out = x.clone()
            out[:, : self.dim_conv] = self.partial_conv3(x[:, : self.dim_conv])
            return out
        head, tail = torch.split(x, [self.dim_conv, self.channels - self.dim_conv], dim=1)
        return torch.cat((self.partial_conv3(head), tail), dim=1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, n_div={self.n_div}, forward_type={self.forward_type!r}"


class FasterNetBlock(nn.Module):
    """FasterNet block (arXiv 2303.03667): ``x + DropPath(PW(act(BN(PW(PConv(x))))))``, expansion ``mlp_ratio``.

    Args:
        channels: ``c``.
        n_div: PConv's divisor.
        mlp_ratio: hidden width ``c * mlp_ratio`` of the two pointwise convolutions (paper: 2).
        drop_path: stochastic depth rate of the residual branch.
        act_layer, norm_layer: the released defaults are GELU (T0) or ReLU (T1, T2) and BatchNorm.
        forward_type: PConv's form.
    """

    def __init__(self, channels: int, n_div: int = 4, mlp_ratio: float = 2.0, drop_path: float = 0.0,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer: type[nn.Module] = nn.BatchNorm2d,
                 forward_type: str = "split_cat", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        from timm.layers import DropPath

        super().__init__()
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio!r}")
        dd = {"device": device, "dtype": dtype}
        hidden = int(channels * mlp_ratio)
        self.spatial_mixing = PartialConv2d(channels, n_div, forward_type, **dd)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False, **dd),
            norm_layer(hidden, **dd),
            act_layer(),
            nn.Conv2d(hidden, channels, 1, bias=False, **dd),
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.mlp(self.spatial_mixing(x)))
