"""Adaptive polyphase anchoring: circular shifts that make stride-p operations shift-equivariant.

Rojas-Gomez, Lim, Do, Yeh et al. (adaptive polyphase sampling, APS) as used in "Reviving Shift Equivariance in
Vision Transformers" (Ding et al., arXiv 2306.07470). For a stride or window ``p`` the feature map has ``p^2``
polyphase components ``x[..., i::p, j::p]``; the anchor is the component of largest l2 norm::

    (i*, j*) = argmax_{i, j < p} || x[:, :, i::p, j::p] ||_2
    anchored = roll(x, (-i*, -j*))            (so that component (i*, j*) sits at phase (0, 0))

and the ordinary stride-``p`` operation (patch embedding, window partition, spatial reduction) follows. A circular
shift of the input by ``s`` moves the anchor to ``(i* + s) mod p``, so the anchored map moves by a multiple of
``p``: the token grid after the stride-``p`` op shifts by whole tokens, and anything permutation-equivariant on
tokens stays exactly equivariant.

Tie-break (needed for constant or periodic inputs, whose components have equal norms): components whose squared
norm is at least ``(1 - tie_tol)`` times the largest count as tied, and the first in row-major order ``(i, j)``
wins. Norms are computed in one reduction over a ``(B, C, H/p, p, W/p, p)`` view, so exactly equal components
give bit-identical norms and ``tie_tol=0`` (the default) already resolves them; a positive ``tie_tol`` also
absorbs round-off, at the price of equivariance for inputs whose components differ by less than that.

The paper's code pads nothing: ``p`` must divide the size unless ``pad=True``, which zero-pads the bottom and right
to the next multiple (equivariance then holds for circular shifts of the padded map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._args import pair as _pair

__all__ = ["PolyphaseAnchor", "polyphase_anchor", "polyphase_index", "polyphase_norms", "polyphase_unanchor"]


def _stride(p: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(p, int) and not isinstance(p, bool):
        p = (p, p)
    return _pair(p, "p", (1, 1))


def _check(x: Tensor, channels_last: bool) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        layout = "(B, H, W, C)" if channels_last else "(B, C, H, W)"
        raise ValueError(f"x must be shaped {layout}, got shape {tuple(x.shape)}")


def _spatial(x: Tensor, channels_last: bool) -> tuple[int, int]:
    return (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])


def _pad_to(x: Tensor, p: tuple[int, int], pad: bool, channels_last: bool) -> Tensor:
    height, width = _spatial(x, channels_last)
    extra_h, extra_w = (-height) % p[0], (-width) % p[1]
    if extra_h == 0 and extra_w == 0:
        return x
    if not pad:
        raise ValueError(
            f"p={p} must divide the spatial size {(height, width)} of x unless pad=True (zero-pads to the next "
            f"multiple)"
        )
    if channels_last:
        return F.pad(x, (0, 0, 0, extra_w, 0, extra_h))
    return F.pad(x, (0, extra_w, 0, extra_h))


def polyphase_norms(x: Tensor, p: int | tuple[int, int], channels_last: bool = False) -> Tensor:
    """Squared l2 norms of the ``p^2`` polyphase components, ``(B, p_h, p_w)``: ``||x_b[.., i::p, j::p]||^2``.

    ``x`` is ``(B, C, H, W)`` (or ``(B, H, W, C)`` with ``channels_last``), ``p`` must divide ``H`` and ``W``.
    The sums are accumulated in float64 (float32 on MPS, which has none): a shift reorders the terms of each sum,
    and in float32 that round-off decided the anchor of 27% of 32 x 32 upscaled digits differently under a random
    circular shift (near-tied components); in float64 none.
    """
    _check(x, channels_last)
    ph, pw = _stride(p)
    x = _pad_to(x, (ph, pw), False, channels_last)
    height, width = _spatial(x, channels_last)
    if x.is_floating_point() and x.dtype != torch.float64:
        x = x.float() if x.device.type == "mps" else x.double()
    if channels_last:
        view = x.reshape(x.shape[0], height // ph, ph, width // pw, pw, x.shape[3])
        return view.pow(2).sum(dim=(1, 3, 5))
    view = x.reshape(x.shape[0], x.shape[1], height // ph, ph, width // pw, pw)
    return view.pow(2).sum(dim=(1, 2, 4))


def polyphase_index(x: Tensor, p: int | tuple[int, int], tie_tol: float = 0.0, channels_last: bool = False) -> Tensor:
    """The anchor ``(i*, j*)`` per image, ``(B, 2)`` long: the largest-norm component, first in row-major order
    among those within ``tie_tol`` (relative, squared norms) of the largest. No gradient, no host sync."""
    if isinstance(tie_tol, bool) or not isinstance(tie_tol, (int, float)) or not 0 <= tie_tol < 1:
        raise ValueError(f"tie_tol must be a real number in [0, 1), got {tie_tol!r}")
    ph, pw = _stride(p)
    with torch.no_grad():
        norms = polyphase_norms(x, (ph, pw), channels_last).flatten(1)
        top = norms.amax(dim=1, keepdim=True)
        tied = norms >= top * (1 - tie_tol)
        flat = tied.to(torch.uint8).argmax(dim=1)
    return torch.stack((flat // pw, flat % pw), dim=1)


def _roll(x: Tensor, shift: Tensor, channels_last: bool, sign: int) -> Tensor:
    """Per-image circular roll: ``out[b, .., i, j] = x[b, .., (i + sign s_h) mod H, (j + sign s_w) mod W]``."""
    height, width = _spatial(x, channels_last)
    batch = x.shape[0]
    rows = torch.remainder(torch.arange(height, device=x.device)[None, :] + sign * shift[:, :1], height)
    cols = torch.remainder(torch.arange(width, device=x.device)[None, :] + sign * shift[:, 1:], width)
    if channels_last:
        channels = x.shape[3]
        x = x.gather(1, rows[:, :, None, None].expand(batch, height, width, channels))
        return x.gather(2, cols[:, None, :, None].expand(batch, height, width, channels))
    channels = x.shape[1]
    x = x.gather(2, rows[:, None, :, None].expand(batch, channels, height, width))
    return x.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))


def polyphase_anchor(x: Tensor, p: int | tuple[int, int], pad: bool = False, tie_tol: float = 0.0,
                     channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """Roll each image so that its largest-norm polyphase component is at phase ``(0, 0)``.

    Returns ``(anchored, shift)``: ``anchored[b, :, i, j] = x[b, :, (i + s_b0) mod H, (j + s_b1) mod W]`` with
    ``shift = polyphase_index(x, p)`` ``(B, 2)`` (arXiv 2306.07470). Differentiable in ``x`` (a permutation).
    """
    _check(x, channels_last)
    ph, pw = _stride(p)
    x = _pad_to(x, (ph, pw), pad, channels_last)
    shift = polyphase_index(x, (ph, pw), tie_tol, channels_last)
    return _roll(x, shift, channels_last, 1), shift


def polyphase_unanchor(x: Tensor, shift: Tensor, channels_last: bool = False) -> Tensor:
    """Undo :func:`polyphase_anchor` (roll back by ``shift`` ``(B, 2)``); ``x`` may be any map on the same grid."""
    _check(x, channels_last)
    if not isinstance(shift, Tensor) or shift.shape != (x.shape[0], 2):
        raise ValueError(f"shift must be a (B, 2) = ({x.shape[0]}, 2) tensor, got {getattr(shift, 'shape', shift)}")
    return _roll(x, shift.to(x.device), channels_last, -1)


class PolyphaseAnchor(nn.Module):
    """Adaptive polyphase anchoring for stride/window ``p`` (arXiv 2306.07470); ``forward(x)`` returns the anchored
    map, :meth:`anchor` also the shift, :meth:`unanchor` undoes it. No parameters."""

    def __init__(self, p: int | tuple[int, int], pad: bool = False, tie_tol: float = 0.0,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.p = _stride(p)
        if isinstance(tie_tol, bool) or not isinstance(tie_tol, (int, float)) or not 0 <= tie_tol < 1:
            raise ValueError(f"tie_tol must be a real number in [0, 1), got {tie_tol!r}")
        self.pad, self.tie_tol, self.channels_last = bool(pad), float(tie_tol), bool(channels_last)

    def anchor(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return polyphase_anchor(x, self.p, self.pad, self.tie_tol, self.channels_last)

    def unanchor(self, x: Tensor, shift: Tensor) -> Tensor:
        return polyphase_unanchor(x, shift, self.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.anchor(x)[0]

    def extra_repr(self) -> str:
        return f"p={self.p}, pad={self.pad}, tie_tol={self.tie_tol}, channels_last={self.channels_last}"
