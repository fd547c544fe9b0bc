"""Token grids for the benchmark: which layout a mixer runs on, and the grid of a given nominal side.

A size is either an int ``s`` (about ``s * s`` tokens, laid out the way the mixer expects) or an explicit grid
shape such as ``(16, 32, 32)``, used as given for every mixer. Layouts for an int side ``s``:

- ``"2d"``: the square grid ``(s, s)``, the default;
- ``"1d"``: the sequence ``(s * s,)``, for masks over the token sequence (sliding window, causal);
- ``"video"``: ``(VIDEO_FRAMES, r, r)`` with ``r = round(s / 4)``, for spatio-temporal masks (Radial Attention),
  so that ``s`` divisible by 4 gives exactly ``s * s`` tokens.
"""

from __future__ import annotations

import re

from ..masks import FullMask, RadialMask, SequenceMask

LAYOUTS = ("1d", "2d", "video")
VIDEO_FRAMES = 16

Size = int | tuple[int, ...]

_SHAPE_PATTERN = re.compile(r"^\d+(x\d+)+$")


def infer_layout(mixer: object) -> str:
    """The layout ``mixer`` is benchmarked on: from its mask's type when it has one, ``"2d"`` otherwise."""
    mask = getattr(mixer, "mask", None)
    if isinstance(mask, RadialMask):
        return "video"
    if isinstance(mask, SequenceMask) and not isinstance(mask, FullMask):
        return "1d"
    return "2d"


def grid_for(layout: str, side: int) -> tuple[int, ...]:
    """The grid of nominal side ``side`` in ``layout`` (see the module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise ValueError(f"side must be an int >= 1, got {side!r}")
    if layout == "1d":
        return (side * side,)
    if layout == "video":
        spatial = max(1, round(side / 4))
        return (VIDEO_FRAMES, spatial, spatial)
    return (side, side)


def resolve_shape(size: Size, layout: str) -> tuple[int, ...]:
    """The grid a size stands for: ``grid_for(layout, size)`` for an int, the shape itself for a tuple."""
    if isinstance(size, tuple):
        if not size or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
            raise ValueError(f"size must be a tuple of positive ints, got {size!r}")
        return size
    return grid_for(layout, size)


def nominal_tokens(size: Size) -> int:
    """Tokens a size stands for before the layout is known (``s * s`` for an int): the order sizes run in."""
    if isinstance(size, tuple):
        total = 1
        for s in size:
            total *= s
        return total
    return size * size


def parse_size(text: str) -> Size:
    """Parse ``"32"`` (a side) or ``"16x32x32"`` (an explicit grid shape)."""
    text = text.strip().lower()
    if text.isdigit() and int(text) >= 1:
        return int(text)
    if _SHAPE_PATTERN.match(text) and all(int(p) >= 1 for p in text.split("x")):
        return tuple(int(p) for p in text.split("x"))
    raise ValueError(f"size must be a positive int side like '32' or a grid shape like '16x32x32', got {text!r}")
