"""Scanpath metrics: Needleman-Wunsch sequence score, Levenshtein distance, MultiMatch, behavioural shares.

As used to evaluate OAT ("OAT: Object-Level Attention Transformer for Gaze Scanpath Prediction", arXiv 2407.13335).
Scanpaths are sequences of object indices (object-level scanpaths), or fixation coordinates for MultiMatch.

- Sequence score (the scanpath literature's "SS", as in goal-directed attention work): the Needleman-Wunsch global
  alignment score with a match/mismatch/gap scoring, ``F[i, j] = max(F[i-1, j-1] + s(a_i, b_j), F[i-1, j] + gap,
  F[i, j-1] + gap)``, ``F[i, 0] = i gap``, ``F[0, j] = j gap``, divided by ``max(len(a), len(b))``. With the
  default scoring (match 1, mismatch 0, gap 0) the score is the longest common subsequence, computed with
  ``rapidfuzz`` (``LCSseq``); other scorings run the dynamic programme above in NumPy.
- Levenshtein distance: ``rapidfuzz.distance.Levenshtein`` (unit insert, delete and substitute costs).
- MultiMatch (Dewhurst et al., Behav. Res. Methods 2012): saccade vectors of the two scanpaths are aligned by the
  cheapest monotone path through the matrix of vector-difference norms (steps right, down or diagonal; the
  path cost is the sum of the visited cells), and five similarities are averaged along the path: vector
  ``1 - |u - v| / (2 diag)``, direction ``1 - angle(u, v) / pi``, length ``1 - ||u| - |v|| / diag``, position
  ``1 - |p - q| / diag`` (saccade start fixations) and duration ``1 - |t - s| / max(t, s)`` (those fixations'
  durations); ``diag`` is the screen diagonal. The original's scanpath simplification step is not done.
- Behavioural shares: whether the target was fixated, the length, and the shares of search fixations (on an
  object never fixated before that is not the target), refixations (the same object as the previous fixation) and
  revisits (an object fixated earlier, not just before).

rapidfuzz is imported on first use (``pip install rapidfuzz``; it is in the ``dev`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Behaviour", "behaviour", "levenshtein", "multimatch", "needleman_wunsch", "sequence_score"]


def _rapidfuzz():
    try:
        from rapidfuzz.distance import LCSseq, Levenshtein
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("scanpath metrics need rapidfuzz: pip install rapidfuzz") from err
    return Levenshtein, LCSseq


def _sequence(seq: Sequence[Hashable], name: str) -> list:
    if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) and not isinstance(seq, np.ndarray):
        raise TypeError(f"{name} must be a sequence of object labels, got {seq!r}")
    return [x.item() if isinstance(x, np.generic) else x for x in seq]


def needleman_wunsch(a: Sequence[Hashable], b: Sequence[Hashable], match: float = 1.0, mismatch: float = 0.0,
                     gap: float = 0.0) -> float:
    """Needleman-Wunsch global alignment score of ``a`` and ``b`` (see the module docstring for the recursion)."""
    x, y = _sequence(a, "a"), _sequence(b, "b")
    for value, name in ((match, "match"), (mismatch, "mismatch"), (gap, "gap")):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (match, mismatch, gap) == (1.0, 0.0, 0.0):
        _, lcs = _rapidfuzz()
        return float(lcs.similarity(x, y))
    f = np.zeros((len(x) + 1, len(y) + 1))
    f[:, 0] = gap * np.arange(len(x) + 1)
    f[0, :] = gap * np.arange(len(y) + 1)
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            s = match if x[i - 1] == y[j - 1] else mismatch
            f[i, j] = max(f[i - 1, j - 1] + s, f[i - 1, j] + gap, f[i, j - 1] + gap)
    return float(f[-1, -1])


def sequence_score(a: Sequence[Hashable], b: Sequence[Hashable], match: float = 1.0, mismatch: float = 0.0,
                   gap: float = 0.0) -> float:
    """``needleman_wunsch(a, b) / max(len(a), len(b))`` (1 for identical non-empty sequences with the defaults)."""
    x, y = _sequence(a, "a"), _sequence(b, "b")
    longest = max(len(x), len(y))
    if longest == 0:
        raise ValueError("a and b must not both be empty")
    return needleman_wunsch(x, y, match, mismatch, gap) / longest


def levenshtein(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Edit distance between two label sequences (rapidfuzz)."""
    lev, _ = _rapidfuzz()
    return int(lev.distance(_sequence(a, "a"), _sequence(b, "b")))


def _fixations(x: np.ndarray | Sequence, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3) or arr.shape[0] < 2:
        raise ValueError(f"{name} must be an (n >= 2, 2 or 3) array of (x, y[, duration]) fixations, "
                         f"got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


def _monotone_path(cost: np.ndarray) -> list[tuple[int, int]]:
    """Cheapest path from ``(0, 0)`` to ``(n-1, m-1)`` with steps (1, 0), (0, 1), (1, 1); cost = sum of cells."""
    n, m = cost.shape
    acc = np.full((n, m), np.inf)
    acc[0, 0] = cost[0, 0]
    for i in range(n):
        for j in range(m):
            if i == 0 and j == 0:
                continue
            best = min(acc[i - 1, j] if i else np.inf, acc[i, j - 1] if j else np.inf,
                       acc[i - 1, j - 1] if i and j else np.inf)
            acc[i, j] = best + cost[i, j]
    path = [(n - 1, m - 1)]
    i, j = n - 1, m - 1
    while (i, j) != (0, 0):
        steps = [(i - 1, j - 1), (i - 1, j), (i, j - 1)]
        i, j = min((s for s in steps if s[0] >= 0 and s[1] >= 0), key=lambda s: acc[s])
        path.append((i, j))
    return path[::-1]


def multimatch(a: np.ndarray | Sequence, b: np.ndarray | Sequence, screen: Sequence[float]) -> dict[str, float]:
    """MultiMatch similarities (vector, direction, length, position, duration) in ``[0, 1]``.

    ``a``, ``b``: ``(n, 2)`` or ``(n, 3)`` fixations ``(x, y[, duration])``, at least two each; ``screen``:
    ``(width, height)``. Duration is NaN unless both scanpaths carry durations.
    """
    fa, fb = _fixations(a, "a"), _fixations(b, "b")
    if len(screen) != 2 or min(screen) <= 0:
        raise ValueError(f"screen must be (width, height) > 0, got {screen!r}")
    diag = math.hypot(*screen)
    va, vb = np.diff(fa[:, :2], axis=0), np.diff(fb[:, :2], axis=0)
    diff = np.linalg.norm(va[:, None, :] - vb[None, :, :], axis=-1)
    path = _monotone_path(diff)
    ia, ib = np.array([p[0] for p in path]), np.array([p[1] for p in path])
    u, v = va[ia], vb[ib]
    ang = np.abs(np.arctan2(u[:, 1], u[:, 0]) - np.arctan2(v[:, 1], v[:, 0]))
    ang = np.where(ang > math.pi, 2 * math.pi - ang, ang)
    out = {
        "vector": 1 - float(np.mean(diff[ia, ib])) / (2 * diag),
        "direction": 1 - float(np.mean(ang)) / math.pi,
        "length": 1 - float(np.mean(np.abs(np.linalg.norm(u, axis=1) - np.linalg.norm(v, axis=1)))) / diag,
        "position": 1 - float(np.mean(np.linalg.norm(fa[ia, :2] - fb[ib, :2], axis=1))) / diag,
        "duration": float("nan"),
    }
    if fa.shape[1] == 3 and fb.shape[1] == 3:
        ta, tb = fa[ia, 2], fb[ib, 2]
        out["duration"] = 1 - float(np.mean(np.abs(ta - tb) / np.maximum(np.maximum(ta, tb), 1e-12)))
    return out


@dataclass(frozen=True)
class Behaviour:
    """Behavioural summary of one object-level scanpath (see :func:`behaviour`)."""

    target_found: bool
    length: int
    search_share: float
    refixation_share: float
    revisit_share: float


def behaviour(scanpath: Sequence[Hashable], target: Hashable) -> Behaviour:
    """Target found, length, and shares of search / refixation / revisit fixations among all fixations.

    Fixation ``t`` is a refixation if it lands on the object of fixation ``t - 1``, a revisit if its object was
    fixated before ``t - 1`` but not at ``t - 1``, and a search fixation if its object is new and not the target;
    the first fixation on the target counts in none of the three.
    """
    seq = _sequence(scanpath, "scanpath")
    n = len(seq)
    if n == 0:
        return Behaviour(False, 0, 0.0, 0.0, 0.0)
    search = refix = revisit = 0
    seen: set = set()
    for t, obj in enumerate(seq):
        if t and obj == seq[t - 1]:
            refix += 1
        elif obj in seen:
            revisit += 1
        elif obj != target:
            search += 1
        seen.add(obj)
    return Behaviour(target in seen, n, search / n, refix / n, revisit / n)
