"""Visual search arrays: is the target among the distractors?

The classic conjunction search display of "A feature-integration theory of attention" (Treisman & Gelade, 1980):
a T among rotated Ls. Both glyphs have the same five pixels on a 3 x 3 cell, so no pixel count, brightness or
single local feature tells them apart; the answer needs the arrangement inside one item, at any of many places.
Label 1 when one T (any of four rotations) is present, 0 when every item is an L (any of four rotations).

A simple generator for the arena; the eccNET stimulus generators (arXiv:2106.02953) are the search models' own and
live in :mod:`visattn.search`. Items sit in a jittered grid of ``CELL`` x ``CELL`` cells with a blank border, so a
template match is an exact oracle (:func:`search_array_oracle`).
"""

from __future__ import annotations

import numpy as np

CELL = 8
"""Side of the grid cell that holds one item; an image of side ``s`` has ``(s // CELL) ** 2`` cells."""

_T = np.array([[1, 1, 1], [0, 1, 0], [0, 1, 0]], dtype=np.float32)
_L = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 1]], dtype=np.float32)
TARGETS = tuple(np.rot90(_T, k).copy() for k in range(4))
DISTRACTORS = tuple(np.rot90(_L, k).copy() for k in range(4))


def search_array_sample(size: int, label: int, rng: np.random.Generator, *, density: float = 0.5) -> np.ndarray:
    """One ``(size, size)`` float32 display with ``density`` of its cells holding an item (at least two); one
    item is a T when ``label`` is 1. More cells at larger sizes: the resolution-extrapolation setting."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    if size < 2 * CELL:
        raise ValueError(f"size must be >= {2 * CELL} (two cells of {CELL} pixels), got {size!r}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    cells = size // CELL
    count = max(2, round(density * cells * cells))
    chosen = rng.choice(cells * cells, size=count, replace=False)
    target_at = int(rng.integers(count)) if label else -1
    image = np.zeros((size, size), dtype=np.float32)
    for index, cell in enumerate(chosen):
        glyphs = TARGETS if index == target_at else DISTRACTORS
        glyph = glyphs[int(rng.integers(4))]
        y = int(cell) // cells * CELL + int(rng.integers(1, CELL - 3))
        x = int(cell) % cells * CELL + int(rng.integers(1, CELL - 3))
        image[y:y + 3, x:x + 3] = glyph
    return image


def search_array_oracle(image: np.ndarray) -> int:
    """1 when some 3 x 3 window equals a rotated T exactly, else 0 (items never touch, so an L never matches)."""
    windows = np.lib.stride_tricks.sliding_window_view(image, (3, 3))
    return int(any(np.any(np.all(windows == t, axis=(-2, -1))) for t in TARGETS))
