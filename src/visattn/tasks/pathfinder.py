"""Pathfinder-style curve tracing: are the two marked dots on the same curve?

After "Learning long-range spatial dependencies with horizontally gated recurrent units" (Linsley et al.,
arXiv:1805.08315) and its use in "Long Range Arena" (Tay et al., arXiv:2011.04006): a canvas holds a few smooth
curves; two dots mark curve ends. Label 1 when both dots sit on the ends of one curve, 0 when they sit on two
different curves. Answering needs the whole curve between the dots, a long-range dependency.

Our form (not the published generator): curves are solid 8-connected paths grown by a smoothly turning random
walk, kept at least ``GAP`` pixels (Chebyshev) from every other curve, so they never touch and the task has an exact
oracle: two dots share a label iff they lie in the same 8-connected component of the inked pixels
(:func:`pathfinder_oracle`). Curve pixels have intensity ``CURVE``, the 3 x 3 dots ``DOT``. A negative's second dot
is the far end of a distractor curve; dot distance is a weak cue the generator does not remove.
"""

from __future__ import annotations

import math

import numpy as np

CURVE = 0.5
DOT = 1.0
GAP = 4
"""Minimal Chebyshev distance between pixels of two different curves (a 3 x 3 dot adds one pixel on each side)."""
MAX_TURN = 0.12
"""Largest heading change per step, in radians."""


def _neighbourhood_free(owner: np.ndarray, y: int, x: int, curve: int) -> bool:
    h, w = owner.shape
    y0, y1, x0, x1 = max(0, y - GAP), min(h, y + GAP + 1), max(0, x - GAP), min(w, x + GAP + 1)
    window = owner[y0:y1, x0:x1]
    return not np.any((window >= 0) & (window != curve))


def _grow_curve(owner: np.ndarray, curve: int, length: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """A random walk of up to ``length`` pixels, marked in ``owner`` with ``curve``; stops early at the border or
    near another curve. Steps of about one pixel, rounded; consecutive pixels are 8-neighbours."""
    h, w = owner.shape
    margin = 2
    for _ in range(50):
        y, x = int(rng.integers(margin, h - margin)), int(rng.integers(margin, w - margin))
        if owner[y, x] < 0 and _neighbourhood_free(owner, y, x, curve):
            break
    else:
        return []
    heading = rng.uniform(0, 2 * math.pi)
    fy, fx = float(y), float(x)
    pixels = [(y, x)]
    owner[y, x] = curve
    turn = 0.0
    while len(pixels) < length:
        turn = 0.8 * turn + rng.uniform(-MAX_TURN, MAX_TURN)
        heading += turn
        ny, nx = fy + math.sin(heading), fx + math.cos(heading)
        iy, ix = int(round(ny)), int(round(nx))
        if not (margin <= iy < h - margin and margin <= ix < w - margin):
            break
        if (iy, ix) == pixels[-1]:
            fy, fx = ny, nx
            continue
        if owner[iy, ix] == curve or not _neighbourhood_free(owner, iy, ix, curve):
            break
        owner[iy, ix] = curve
        pixels.append((iy, ix))
        fy, fx = ny, nx
    return pixels


def pathfinder_sample(size: int, label: int, rng: np.random.Generator, *, curves: int = 3,
                      length: int | None = None) -> np.ndarray:
    """One ``(size, size)`` float32 image whose two dots are on one curve (``label`` 1) or on two (0).

    ``length`` is the longest a curve grows (default ``size``, so the task gets longer with the canvas: the
    resolution-extrapolation setting); curves shorter than a third of it are drawn again.
    """
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    if curves < 2:
        raise ValueError(f"curves must be >= 2 (a negative needs a distractor curve), got {curves!r}")
    length = size if length is None else length
    minimum = max(4, length // 3)
    for _ in range(100):
        owner = np.full((size, size), -1, dtype=np.int32)
        paths = [_grow_curve(owner, c, length, rng) for c in range(curves)]
        if sum(len(p) >= minimum for p in paths[:2]) == 2:
            break
    else:
        raise ValueError(f"could not draw two curves of >= {minimum} pixels on a {size} x {size} canvas; "
                         "use a larger size or fewer curves")
    image = np.where(owner >= 0, CURVE, 0.0).astype(np.float32)
    first, second = paths[0], paths[1]
    ends = [first[0], first[-1]] if label == 1 else [first[0], second[-1]]
    for y, x in ends:
        image[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = DOT
    return image


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a boolean mask (0 = background), by flood fill."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    h, w = mask.shape
    current = 0
    for sy, sx in zip(*np.nonzero(mask), strict=True):
        if labels[sy, sx]:
            continue
        current += 1
        labels[sy, sx] = current
        stack = [(int(sy), int(sx))]
        while stack:
            y, x = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = current
                        stack.append((ny, nx))
    return labels


def pathfinder_oracle(image: np.ndarray) -> int:
    """The exact answer from the pixels alone: 1 when every dot pixel lies in one 8-connected component of the
    inked pixels, 0 otherwise."""
    labels = _components(image > 0)
    return int(len(set(labels[image >= DOT].tolist())) == 1)
