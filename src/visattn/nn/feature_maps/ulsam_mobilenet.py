"""Putting ULSAM into timm's MobileNet-V1 / V2 the way the ULSAM paper does, with the parameter and FLOP change.

Paper: Saini et al., "ULSAM: Ultra-Lightweight Subspace Attention Module for Compact Convolutional Neural Networks"
(arXiv 2006.15102). The paper uses ULSAM in compact CNNs in two ways: *inserted* after a block (a few hundred extra
parameters, ``2m`` per module) and *replacing* a block whose input and output shapes agree (which is where its
FLOP and parameter savings on MobileNet-V2 come from). :func:`add_ulsam` does either at any block positions;
positions count timm's blocks from 1 in order (``model.blocks`` flattened: for ``mobilenetv1_100`` the thirteen
depthwise-separable blocks, for ``mobilenetv2_100`` the seventeen bottlenecks).

:data:`ULSAM_CONFIGS` holds the two configurations as we read the paper (we could not check the paper's position
table against its text here, so the positions are arguments, not constants): MobileNet-V1 with ULSAM (g = 4)
inserted after the last of the five repeated 512-channel blocks (timm block 11, 14 x 14), and MobileNet-V2 with
ULSAM (g = 4) replacing the two repeated 160-channel bottlenecks (timm blocks 15 and 16, 7 x 7). The report gives
the parameter and FLOP counts before and after, FLOPs from :class:`torch.utils.flop_counter.FlopCounterMode` on the
meta device (it counts convolutions and matrix products; ULSAM's softmax, max-pool and products with the maps are
not counted, so its own cost reads as its two 1x1 convolutions).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import choice, positive_int
from .ulsam import SubspaceAttention

__all__ = ["ULSAM_CONFIGS", "ULSAMReport", "add_ulsam", "count_flops"]

MODES = ("insert", "replace")


@dataclass(frozen=True)
class ULSAMConfig:
    """Where ULSAM goes in a timm model: ``mode`` at the 1-based block ``positions``, ``groups`` subspaces."""

    model: str
    mode: str
    positions: tuple[int, ...]
    groups: int


ULSAM_CONFIGS: dict[str, ULSAMConfig] = {
    "mobilenetv1": ULSAMConfig("mobilenetv1_100", "insert", (11,), 4),
    "mobilenetv2": ULSAMConfig("mobilenetv2_100", "replace", (15, 16), 4),
}


@dataclass(frozen=True)
class ULSAMReport:
    """Parameter and FLOP counts of the model before and after (FLOPs at ``input_size``, batch 1)."""

    mode: str
    positions: tuple[int, ...]
    groups: int
    input_size: tuple[int, int, int]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int

    @property
    def param_change(self) -> float:
        """Relative parameter change, ``after / before - 1``."""
        return self.params_after / self.params_before - 1

    @property
    def flop_change(self) -> float:
        """Relative FLOP change, ``after / before - 1``."""
        return self.flops_after / self.flops_before - 1


def count_flops(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> int:
    """FLOPs of one forward pass at batch 1, counted by ``FlopCounterMode`` on a meta-device copy of ``model``."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(1, *input_size, device="meta"))
    return counter.get_total_flops()


def _block_channels(block: nn.Module) -> tuple[int, int, int]:
    """(in, out, stride) of a timm MobileNet block (``DepthwiseSeparableConv`` or ``InvertedResidual``)."""
    if not hasattr(block, "conv_dw"):
        raise ValueError(f"positions must point at timm MobileNet blocks with a conv_dw, got {type(block).__name__}")
    first = block.conv_pw if hasattr(block, "conv_pwl") else block.conv_dw
    last = block.conv_pwl if hasattr(block, "conv_pwl") else block.conv_pw
    stride = block.conv_dw.stride
    return first.in_channels, last.out_channels, stride[0] if isinstance(stride, tuple) else stride


def add_ulsam(model: nn.Module, positions: Sequence[int], groups: int = 4, mode: str = "insert",
              variant: str = "paper", input_size: Sequence[int] = (3, 224, 224)) -> tuple[nn.Module, ULSAMReport]:
    """Insert ULSAM after, or put it in place of, the timm blocks at ``positions`` (1-based, ``model.blocks``
    flattened); returns the edited model (the same object) and the parameter / FLOP report.

    ``mode="replace"`` needs blocks whose input and output have the same shape (stride 1, equal channels).
    """
    choice(mode, "mode", MODES)
    positive_int(groups, "groups")
    if not hasattr(model, "blocks"):
        raise ValueError(f"model must be a timm MobileNet-style model with .blocks, got {type(model).__name__}")
    slots = [(stage, i) for stage in model.blocks for i in range(len(stage))]
    wanted = tuple(positions)
    if not wanted or any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= len(slots) for p in wanted):
        raise ValueError(f"positions must be block numbers in 1..{len(slots)}, got {positions!r}")
    size = tuple(input_size)
    params_before, flops_before = sum(p.numel() for p in model.parameters()), count_flops(model, size)
    for position in wanted:
        stage, index = slots[position - 1]
        block = stage[index]
        c_in, c_out, stride = _block_channels(block)
        param = next(block.parameters())
        attn = SubspaceAttention(c_out, groups, variant, device=param.device, dtype=param.dtype)
        if mode == "replace":
            if c_in != c_out or stride != 1:
                raise ValueError(f"positions: block {position} maps {c_in} -> {c_out} channels at stride {stride}; "
                                 f"mode='replace' needs equal channels and stride 1")
            stage[index] = attn
        else:
            stage[index] = nn.Sequential(block, attn)
    report = ULSAMReport(mode, wanted, groups, size, params_before, sum(p.numel() for p in model.parameters()),
                         flops_before, count_flops(model, size))
    return model, report
