"""Polarized Self-Attention (PSA): channel-only and spatial-only attention, in parallel or in sequence.

Paper: Liu et al., "Polarized Self-Attention: Towards High-quality Pixel-wise Regression" (arXiv 2107.00782).
For ``X`` of ``C x H x W`` and an internal width ``C/2`` (all projections 1x1 convolutions):

    channel-only   A_ch(X) = sigmoid(LN(W_z(W_v(X) softmax_HW(W_q(X)))))      W_v: C -> C/2, W_q: C -> 1,
                                                                              W_z: C/2 -> C;  A_ch is C x 1 x 1
    spatial-only   A_sp(X) = sigmoid(softmax_C/2(GAP(W_q'(X))) W_v'(X))       W_q', W_v': C -> C/2;  1 x H x W
    parallel       PSA_p(X) = A_ch(X) * X + A_sp(X) * X
    sequential     PSA_s(X) = A_sp(Z) * Z,  Z = A_ch(X) * X

There is no residual inside the module. ``variant="paper"`` (the default) is the equations above;
``variant="official"`` is the released ``PSA_p`` / ``PSA_s`` (DeLightCMU/PSA), which differs in four ways:

1. names: the released code calls the channel-only branch ``spatial_pool`` and the spatial-only one
   ``channel_pool`` (naming only; the parameter names here are the released ones, so released weights load);
2. softmax placement in the spatial-only branch: ``PSA_p`` takes ``sigmoid(softmax_HW(GAP(W_q' X) W_v' X))``
   (no softmax on the pooled query), ``PSA_s`` takes ``sigmoid(GAP(W_q' X) softmax_HW(W_v' X))``;
3. ``PSA_p`` has no LayerNorm in the channel-only branch: ``sigmoid(W_z(...))``;
4. ``PSA_s`` replaces ``W_z`` by a bottleneck ``C/2 -> C/8 -> LN -> ReLU -> C`` (1x1 convolutions with bias,
   the LayerNorm over ``C/8 x 1 x 1``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import choice, divisible, feature_map, positive_int

__all__ = ["PolarizedSelfAttention"]

MODES = ("parallel", "sequential")
VARIANTS = ("paper", "official")


class PolarizedSelfAttention(nn.Module):
    """Polarized Self-Attention (Liu et al., arXiv 2107.00782) on a ``(B, C, H, W)`` map; same shape out.

    Args:
        channels: ``C``, even (the internal width is ``C/2``); for ``variant="official"`` with
            ``mode="sequential"`` at least 8 (the bottleneck width is ``C/2 // 4``).
        mode: ``"parallel"`` (sum of the two branches) or ``"sequential"`` (channel-only, then spatial-only).
        variant: ``"paper"`` (the equations in the module docstring) or ``"official"`` (the released
            ``PSA_p`` / ``PSA_s``).
        device, dtype: factory arguments (timm passes them to attention layers).

    Parameters carry the released names: ``conv_v_right``, ``conv_q_right``, ``conv_up`` (``W_v``, ``W_q``,
    ``W_z`` of the channel-only branch), ``conv_q_left``, ``conv_v_left`` (``W_q'``, ``W_v'`` of the spatial-only
    branch); the paper's LayerNorm over ``C`` is ``norm``.
    """

    def __init__(self, channels: int, mode: str = "parallel", variant: str = "paper",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        positive_int(channels, "channels", 2)
        divisible(channels, 2, "channels", "2 (PSA's internal width is channels / 2)")
        self.mode = choice(mode, "mode", MODES)
        self.variant = choice(variant, "variant", VARIANTS)
        self.channels = channels
        inner = channels // 2
        dd = {"device": device, "dtype": dtype}
        self.conv_q_right = nn.Conv2d(channels, 1, 1, bias=False, **dd)
        self.conv_v_right = nn.Conv2d(channels, inner, 1, bias=False, **dd)
        self.conv_q_left = nn.Conv2d(channels, inner, 1, bias=False, **dd)
        self.conv_v_left = nn.Conv2d(channels, inner, 1, bias=False, **dd)
        self.norm: nn.LayerNorm | None = None
        if variant == "official" and mode == "sequential":
            bottleneck = inner // 4
            if bottleneck < 1:
                raise ValueError(f"channels must be >= 8 for the official sequential PSA (bottleneck channels / 2 // 4"
                                 f" must be >= 1), got {channels}")
            self.conv_up: nn.Module = nn.Sequential(
                nn.Conv2d(inner, bottleneck, 1, **dd),
                nn.LayerNorm([bottleneck, 1, 1], **dd),
                nn.ReLU(inplace=True),
                nn.Conv2d(bottleneck, channels, 1, **dd),
            )
        else:
            self.conv_up = nn.Conv2d(inner, channels, 1, bias=False, **dd)
            if variant == "paper":
                self.norm = nn.LayerNorm(channels, **dd)
        for conv in (self.conv_q_right, self.conv_v_right, self.conv_q_left, self.conv_v_left):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")

    def channel_attention(self, x: Tensor) -> Tensor:
        """``A_ch(x)``, shape ``(B, C, 1, 1)``, values in (0, 1)."""
        b = x.shape[0]
        value = self.conv_v_right(x).flatten(2)
        query = torch.softmax(self.conv_q_right(x).flatten(2), dim=-1)
        context = torch.matmul(value, query.transpose(1, 2)).unsqueeze(-1)
        logits = self.conv_up(context)
        if self.norm is not None:
            logits = self.norm(logits.reshape(b, self.channels)).reshape(b, self.channels, 1, 1)
        return torch.sigmoid(logits)

    def spatial_attention(self, x: Tensor) -> Tensor:
        """``A_sp(x)``, shape ``(B, 1, H, W)``, values in (0, 1)."""
        b, _, h, w = x.shape
        query = self.conv_q_left(x).mean(dim=(2, 3)).unsqueeze(1)
        value = self.conv_v_left(x).flatten(2)
        if self.variant == "paper":
            logits = torch.matmul(torch.softmax(query, dim=-1), value)
        elif self.mode == "parallel":
            logits = torch.softmax(torch.matmul(query, value), dim=-1)
        else:
            logits = torch.matmul(query, torch.softmax(value, dim=-1))
        return torch.sigmoid(logits).reshape(b, 1, h, w)

    def forward(self, x: Tensor) -> Tensor:
        feature_map(x, self.channels)
        if self.mode == "parallel":
            return self.channel_attention(x) * x + self.spatial_attention(x) * x
        z = self.channel_attention(x) * x
        return self.spatial_attention(z) * z

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mode={self.mode!r}, variant={self.variant!r}"
