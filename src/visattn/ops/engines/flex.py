"""FlexAttention on any device: compiled where ``torch.compile`` works there, eager (unfused) otherwise (imported on
first use: it brings in torch._dynamo)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

logger = logging.getLogger("visattn")

_compiled: dict[str, Callable] = {}
_failed: set[str] = set()


def _compiled_flex(device_type: str) -> Callable | None:
    if device_type in _failed:
        return None
    if device_type not in _compiled:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled[device_type] = torch.compile(flex_attention, dynamic=False)
    return _compiled[device_type]


def run_flex_attention(q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask, scale: float | None = None,
                       compile: bool = True) -> Tensor:
    """``flex_attention(q, k, v, block_mask=...)``, compiled unless ``compile=False`` or compiling fails.

    A failed compile is logged once per device type and the eager implementation is used from then on.
    Fully masked rows come back as 0.
    """
    device_type = q.device.type
    fn = _compiled_flex(device_type) if compile else None
    if fn is not None:
        try:
            return fn(q, k, v, block_mask=block_mask, scale=scale)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
            _failed.add(device_type)
            logger.warning("visattn: compiling FlexAttention on %s failed (%s); using eager FlexAttention",
                           device_type, type(err).__name__)
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, block_mask=block_mask, scale=scale)
