"""PAT: partial attention mixers and blocks of PATNet.

Paper: "Partial Convolution Meets Visual Attention" (arXiv 2503.03148; code haiduo/PartialNet). Each mixer keeps
FasterNet's partial 3x3 convolution on the first ``c_p = c / n_div`` channels and gives the other channels an
attention instead of an identity:

    PAT_ch  x2 -> BN(x2 * Hardsigmoid(BN(Conv_{(1,2)}([mean_hw(x2), std_hw(x2)]))))     channel gate from
            per-channel mean and (unbiased) standard deviation, a (1, 2) convolution over C' channels, no bias
    PAT_sf  x2 -> MHSA_rpe(LayerNorm2d(x2))                                               (last stage; the block's
            residual is taken around the mixer and around the MLP separately)
    PAT_sp  (after the MLP's 2nd pointwise conv, on the split [c - c/2 | c/2]):
            [BN(y1 * Hardsigmoid(Conv1x1_{->1}(y1))) | Conv1x1(BN(y2))]

PATBlock: ``x + DropPath(MLP(mixer(x)))`` (PAT_ch, plain PConv) or, for PAT_sf, ``x' = x + mixer(x)``,
``x' + DropPath(MLP(x'))``; the MLP is ``PW_{c->rc} -> BN -> act -> PW_{rc->c}`` with PAT_sp appended when
``spatial_attn`` is set.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import choice, divisible, feature_map, positive_int
from .partial_conv import PartialConv2d
from .pat_attention import RelativePositionMHSA

__all__ = ["PATBlock", "PartialChannelAttention", "PartialSelfAttention", "PartialSpatialAttention"]

MIXERS = ("pconv", "channel", "self")


class _PartialMixer(nn.Module):
    """3x3 convolution on the first ``channels / n_div`` channels, ``self.attend`` on the rest, concatenated."""

    def __init__(self, channels: int, n_div: int, device: torch.device | str | None,
                 dtype: torch.dtype | None) -> None:
        super().__init__()
        positive_int(channels, "channels")
        positive_int(n_div, "n_div", 2)
        divisible(channels, n_div, "channels", "n_div")
        self.channels = channels
        self.dim_conv = channels // n_div
        self.dim_untouched = channels - self.dim_conv
        self.partial_conv3 = nn.Conv2d(self.dim_conv, self.dim_conv, 3, padding=1, bias=False,
                                       device=device, dtype=dtype)

    def attend(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        feature_map(x, self.channels)
        head, tail = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        return torch.cat((self.partial_conv3(head), self.attend(tail)), dim=1)


class PartialChannelAttention(_PartialMixer):
    """PAT_ch mixer (arXiv 2503.03148): PConv on ``c / n_div`` channels, a mean/std channel gate on the rest."""

    def __init__(self, channels: int, n_div: int = 4, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(channels, n_div, device, dtype)
        c = self.dim_untouched
        dd = {"device": device, "dtype": dtype}
        self.gate_conv = nn.Conv2d(c, c, kernel_size=(1, 2), bias=False, **dd)
        self.gate_norm = nn.BatchNorm2d(c, **dd)
        self.norm = nn.BatchNorm2d(c, **dd)

    def gate(self, x: Tensor) -> Tensor:
        """``(B, C', 1, 1)`` channel gate in [0, 1]."""
        flat = x.flatten(2)
        stats = torch.stack((flat.mean(-1), flat.std(-1)), dim=-1).unsqueeze(2)
        return nn.functional.hardsigmoid(self.gate_norm(self.gate_conv(stats)))

    def attend(self, x: Tensor) -> Tensor:
        if x.shape[-1] * x.shape[-2] < 2:
            raise ValueError(f"x must have at least 2 pixels for PAT_ch's standard deviation, got {tuple(x.shape)}")
        return self.norm(x * self.gate(x))


class PartialSelfAttention(_PartialMixer):
    """PAT_sf mixer (arXiv 2503.03148): PConv on ``c / n_div`` channels, LayerNorm2d + iRPE MHSA on the rest."""

    def __init__(self, channels: int, n_div: int = 4, num_heads: int = 6, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        from timm.layers import LayerNorm2d

        super().__init__(channels, n_div, device, dtype)
        self.norm = LayerNorm2d(self.dim_untouched, device=device, dtype=dtype)
        self.attn = RelativePositionMHSA(self.dim_untouched, num_heads, attn_drop=attn_drop, proj_drop=proj_drop,
                                         device=device, dtype=dtype)

    def attend(self, x: Tensor) -> Tensor:
        return self.attn(self.norm(x))


class PartialSpatialAttention(nn.Module):
    """PAT_sp (arXiv 2503.03148): on ``[y1 | y2]`` (``y2`` has ``c / 2`` channels),
    ``[BN(y1 * Hardsigmoid(Conv1x1_{->1}(y1))) | Conv1x1(BN(y2))]``."""

    def __init__(self, channels: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        positive_int(channels, "channels", 2)
        self.channels = channels
        self.dim_conv = channels // 2
        self.dim_untouched = channels - self.dim_conv
        dd = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(self.dim_conv, self.dim_conv, 1, bias=False, **dd)
        self.conv_attn = nn.Conv2d(self.dim_untouched, 1, 1, bias=False, **dd)
        self.norm = nn.BatchNorm2d(self.dim_untouched, **dd)
        self.norm2 = nn.BatchNorm2d(self.dim_conv, **dd)

    def spatial_map(self, x: Tensor) -> Tensor:
        """``(B, 1, H, W)`` gate in [0, 1] from the first ``c - c/2`` channels."""
        return nn.functional.hardsigmoid(self.conv_attn(x[:, : self.dim_untouched]))

    def forward(self, x: Tensor) -> Tensor:
        feature_map(x, self.channels)
        y1, y2 = torch.split(x, [self.dim_untouched, self.dim_conv], dim=1)
        return torch.cat((self.norm(y1 * self.spatial_map(x)), self.conv(self.norm2(y2))), dim=1)


class PATBlock(nn.Module):
    """PATNet block (arXiv 2503.03148).

    Args:
        channels: ``c``.
        mixer: ``"channel"`` (PAT_ch), ``"self"`` (PAT_sf) or ``"pconv"`` (FasterNet's plain PConv).
        spatial_attn: append PAT_sp to the MLP (PATNet-T1 and up).
        n_div, mlp_ratio, drop_path: PConv divisor, MLP expansion (2), stochastic depth.
        num_heads: heads of PAT_sf (4 in T0, 6 otherwise).
        act_layer, norm_layer: MLP activation (GELU in T0) and normalisation (BatchNorm).
    """

    def __init__(self, channels: int, mixer: str = "channel", spatial_attn: bool = False, n_div: int = 4,
                 mlp_ratio: float = 2.0, drop_path: float = 0.0, num_heads: int = 6,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer: type[nn.Module] = nn.BatchNorm2d,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        from timm.layers import DropPath

        super().__init__()
        self.mixer_type = choice(mixer, "mixer", MIXERS)
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio!r}")
        dd = {"device": device, "dtype": dtype}
        if mixer == "channel":
            self.spatial_mixing: nn.Module = PartialChannelAttention(channels, n_div, **dd)
        elif mixer == "self":
            self.spatial_mixing = PartialSelfAttention(channels, n_div, num_heads, **dd)
        else:
            self.spatial_mixing = PartialConv2d(channels, n_div, **dd)
        hidden = int(channels * mlp_ratio)
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 1, bias=False, **dd), norm_layer(hidden, **dd),
                                   act_layer(), nn.Conv2d(hidden, channels, 1, bias=False, **dd)]
        if spatial_attn:
            layers.append(PartialSpatialAttention(channels, **dd))
        self.mlp = nn.Sequential(*layers)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.mixer_type == "self":
            x = x + self.spatial_mixing(x)
            return x + self.drop_path(self.mlp(x))
        return x + self.drop_path(self.mlp(self.spatial_mixing(x)))
