"""The six visual-search asymmetry experiments: displays, the reaction-time model, slopes and asymmetry index.

From *Visual Search Asymmetry: Deep Nets and Humans Share Similar Inherent Biases* (Gupta, Zhang, Lee, Kreiman,
NeurIPS 2021, arXiv:2106.02953). Each experiment pairs two conditions that swap target and distractor (a curve
among lines vs a line among curves, ...). Items sit in the cells of a grid (one item per cell, random cells, a
small random jitter inside the cell); the target is one of them.

Reaction time from fixations (the paper's fit to human data): ``RT = 252.359 n + 376.271`` ms, ``n`` the number
of fixations after the start (a search that fails within the budget counts as ``n = set size``). The slope of a
condition is the least-squares slope of mean RT against set size; the asymmetry index of an experiment is

    AI = (s_H - s_L) / (s_H + s_L),   s clipped at 0,   AI = 0 when s_H + s_L = 0,

where H is the condition with the larger *human* slope. Display, cell and item sizes, jitter, grids, set sizes,
displays per set size, background levels, item geometry and poses, distractor sampling and DoG sizes follow the
official release's stimulus generators and experiment settings (checked against kreimanlab/VisualSearchAsymmetry);
the drawing code is ours (no anti-aliasing, exact rotations of analytic shapes), so displays match the release's in
geometry, not pixel for pixel. The human slopes are the release's human RT data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

RT_SLOPE_MS = 252.359
RT_INTERCEPT_MS = 376.271
DEG2PX = 30


def reaction_time(num_fixations: float | np.ndarray, slope: float = RT_SLOPE_MS,
                  intercept: float = RT_INTERCEPT_MS) -> float | np.ndarray:
    """``RT = slope * n + intercept`` in ms (published: 252.359 ms per fixation + 376.271 ms)."""
    if isinstance(num_fixations, np.ndarray):
        return slope * num_fixations.astype(np.float64) + intercept
    return slope * float(num_fixations) + intercept


def rt_slope(set_sizes: Sequence[float], reaction_times: Sequence[float]) -> float:
    """Least-squares slope (ms per item) of mean reaction time against set size."""
    x = np.asarray(set_sizes, dtype=np.float64)
    y = np.asarray(reaction_times, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"set_sizes and reaction_times must be 1-D of equal length >= 2, got {x.shape}, {y.shape}")
    if np.ptp(x) == 0:
        raise ValueError(f"set_sizes must not all be equal, got {list(x)}")
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc**2).sum())


def asymmetry_index(slope_a: float, slope_b: float, human_slope_a: float, human_slope_b: float) -> float:
    """``(s_H - s_L) / (s_H + s_L)``: H is the condition with the larger human slope; slopes clipped at 0.

    A tie in human slopes takes ``b`` as H, as the release does. Returns 0 when both clipped slopes are 0.
    """
    high, low = (slope_a, slope_b) if human_slope_a > human_slope_b else (slope_b, slope_a)
    high, low = max(0.0, high), max(0.0, low)
    return 0.0 if high + low == 0 else (high - low) / (high + low)


def fixations_per_search(found: bool, num_fixations: int, set_size: int) -> int:
    """The count the RT model uses: fixations after the start, or the set size when the target was not found."""
    return num_fixations if found else set_size


_pu = 200 / 9.5
_pl = 200 / 7.5
HUMAN_RT_MS: dict[str, tuple[float, ...]] = {
    "curve_in_lines": (510, 510 + 8 * 0.8, 510 + 24 * 0.8),
    "line_in_curves": (565, 640, 750),
    "top_down": (400 + _pl, 400 + 1.2 * _pl, 400 + 2.7 * _pl),
    "left_right": (400 + 3.3 * _pl, 600 + 2.8 * _pl, 600 + 5.8 * _pl),
    "non_cross": tuple(510 + 45 * n for n in (3, 6, 9)),
    "cross": tuple(541 + 96 * n for n in (3, 6, 9)),
    "Ts": tuple(499 + 14 * n for n in (3, 6, 9)),
    "Ls": tuple(474 + 33 * n for n in (3, 6, 9)),
    "homo_t20": (400 + 0.7 * _pu, 400 + 1.8 * _pu, 400 + 1.95 * _pu, 400 + 2.1 * _pu),
    "homo_t0": (400 + 1.5 * _pu, 400 + 7 * _pu, 400 + 7.25 * _pu, 400 + 7.5 * _pu),
    "hetero_t0": (400 + 1.5 * _pu, 400 + 8 * _pu, 600 + 1.6 * _pu, 600 + 5.1 * _pu),
    "hetero_t20": (400 + 6 * _pu, 800 + 1.5 * _pu, 1000 + 4 * _pu, 1200 + 6 * _pu),
}
"""Mean human reaction times (ms) per condition and set size, as digitised in the official release."""


@dataclass(frozen=True)
class Experiment:
    """One asymmetry experiment: two conditions, set sizes, grid and the release's stimulus constants.

    Sizes are in degrees at ``DEG2PX`` = 30 px/deg and become pixels with ``int`` as in the release's generators:
    display ``int(view_deg * 30)``, cell ``int(view_deg / cols * 30)`` (cells tile the top-left corner; the
    display may have a few pixels more), item ``int(item_deg * 30)``, jitter offsets ``[0, jitter_px)`` with
    ``jitter_px = int((view_deg / cols - item_deg) * 30)``. ``dog`` is the release's (size, sigma) pair per
    experiment for eccNET's DoG smoothing (sigma 0: OpenCV's default for the size).
    """

    number: int
    name: str
    conditions: tuple[str, str]
    set_sizes: tuple[int, ...]
    displays_per_set_size: int
    grid: tuple[int, int]
    view_deg: float
    item_deg: float
    background: int
    dog: tuple[tuple[int, float], tuple[int, float]]

    @property
    def display_px(self) -> int:
        return int(self.view_deg * DEG2PX)

    @property
    def cell_px(self) -> int:
        return int(self.view_deg / self.grid[1] * DEG2PX)

    @property
    def item_px(self) -> int:
        return int(self.item_deg * DEG2PX)

    @property
    def jitter_px(self) -> int:
        return int((self.view_deg / self.grid[1] - self.item_deg) * DEG2PX)

    def human_slope(self, condition: str) -> float:
        """Slope (ms/item) of the published human RTs of ``condition``."""
        return rt_slope(self.set_sizes, HUMAN_RT_MS[condition])


_DOG_SMALL = ((3, 1.0), (5, 3.0))
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment(1, "curvature", ("curve_in_lines", "line_in_curves"), (8, 16, 32), 30, (6, 6), 11.3, 1.6, 0,
               _DOG_SMALL),
    Experiment(2, "lighting_direction", ("top_down", "left_right"), (1, 6, 12), 30, (4, 4), 6.6, 1.04, 27,
               ((3, 0.0), (5, 1.0))),
    Experiment(3, "intersection", ("non_cross", "cross"), (3, 6, 9), 36, (3, 3), 20.5, 5.9, 255,
               ((5, 3.0), (7, 5.0))),
    Experiment(4, "t_vs_l", ("Ts", "Ls"), (3, 6, 9), 36, (3, 3), 20.5, 5.9, 255, ((5, 3.0), (7, 5.0))),
    Experiment(5, "orientation_homogeneous", ("homo_t20", "homo_t0"), (1, 4, 8, 12), 30, (4, 4), 11.3, 2.3, 255,
               _DOG_SMALL),
    Experiment(6, "orientation_heterogeneous", ("hetero_t0", "hetero_t20"), (1, 4, 8, 12), 30, (4, 4), 11.3, 2.3,
               255, _DOG_SMALL),
)}
"""The six experiments in the paper's order (Exp 1-6); conditions in the release's order; constants as in the
release's stimulus generators (curvature, lighting direction, intersection (also T vs L), categorization)."""


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    return np.meshgrid(t, t, indexing="ij")


def _rotate(rows: np.ndarray, cols: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    a = math.radians(degrees)
    return cols * math.sin(a) + rows * math.cos(a), cols * math.cos(a) - rows * math.sin(a)


def _bar(size: int, length: float, width: float, degrees: float) -> np.ndarray:
    """A centred bar ``length`` x ``width`` px, vertical at 0 deg, rotated clockwise by ``degrees``."""
    rows, cols = _grid(size)
    u, v = _rotate(rows, cols, degrees)
    return ((np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)).astype(np.float64)


def _curve(size: int, degrees: float) -> np.ndarray:
    """An arc of radius 1 deg spanning 1.3 rad, 1/6 deg thick (the release's curve), rotated."""
    radius, span, width = DEG2PX * 1.0, 1.3, DEG2PX / 6
    rows, cols = _grid(size)
    u, v = _rotate(rows, cols, degrees)
    u = u - radius * (1 + math.cos(span / 2)) / 2
    dist = np.hypot(u, v)
    angle = np.abs(np.arctan2(v, -u))
    return ((np.abs(dist - radius) <= width / 2) & (angle <= span / 2)).astype(np.float64)


def _line(size: int, degrees: float) -> np.ndarray:
    """A 1.2 deg x (1/6 + 1/30) deg bar (the release's line), rotated."""
    return _bar(size, DEG2PX * 1.2, DEG2PX * (1 / 6 + 1 / 30), degrees + 90)


def _shaded_disk(size: int, lit_from: str) -> np.ndarray:
    """A disk of diameter ``size`` in 16 grey bands (0, 17, ..., 255 / 255, ``size // 15`` px each), brightest on
    the side the light comes from ("top", "bottom", "left", "right"); outside the disk NaN (background).

    The release's lighting items: 1.04 deg disks at 30 px/deg, pixels with ``(r - R)^2 + (c - R)^2 < R^2``,
    ``R = size // 2``.
    """
    r = size // 2
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    band = max(size // 15, 1)
    lit_below = np.minimum(17 * (rows // band), 255) / 255
    shade = {"bottom": lit_below, "top": lit_below[::-1], "right": lit_below.T, "left": lit_below.T[:, ::-1]}
    return np.where((rows - r) ** 2 + (cols - r) ** 2 < r * r, shade[lit_from], np.nan)


def _strokes(kind: str) -> np.ndarray:
    """The release's intersection items before posing, black strokes (0) on white (1), at 30 px/deg.

    A 5.5 deg square (165 px) with 0.55 deg strokes inside a 0.2 deg white border (177 px): ``cross`` is a vertical
    stroke crossed by a full-width horizontal one at rows [3, 4) x 0.55 deg; ``non_cross`` splits the horizontal
    stroke into a left half at that height and a right half at [6, 7) x 0.55 deg, so no stroke crosses; ``L`` is
    the left and bottom edges; ``T`` the centre vertical stroke and the top edge.
    """
    side, weight = int(5.5 * DEG2PX), 0.55 * DEG2PX
    border, full = int(0.2 * DEG2PX), int(5.9 * DEG2PX)
    inner = np.ones((side, side))
    lo, hi, half = int((5.5 * DEG2PX - weight) / 2), int((5.5 * DEG2PX + weight) / 2), int(5.5 * DEG2PX / 2)
    band = lambda k: slice(int(k * weight), int((k + 1) * weight))  # noqa: E731
    if kind in ("cross", "non_cross", "T"):
        inner[:, lo:hi] = 0
    if kind == "cross":
        inner[band(3), :] = 0
    elif kind == "non_cross":
        inner[band(3), :half] = 0
        inner[band(6), half:] = 0
    elif kind == "T":
        inner[: int(weight), :] = 0
    elif kind == "L":
        inner[:, : int(weight)] = 0
        inner[int(side - weight): side, :] = 0
    else:
        raise ValueError(f"kind must be cross, non_cross, T or L, got {kind!r}")
    item = np.ones((full, full))
    item[border: border + side, border: border + side] = inner
    return item


def _posed(item: np.ndarray, pose: int) -> np.ndarray:
    """The release's four poses: as drawn, flipped upside down, transposed, transposed and mirrored."""
    return (item, item[::-1], item.T, item.T[:, ::-1])[pose].copy()


def _oriented_bar(size: int, degrees: float) -> np.ndarray:
    """A black 2 deg x 0.3 deg bar (60 x 9 px at 30 px/deg) on white, tilted ``degrees`` clockwise from vertical."""
    return 1.0 - _bar(size, 2.0 * DEG2PX, 0.3 * DEG2PX, degrees)


_HETERO_ANGLES = (-80, -60, -40, -20, 20, 40, 60, 80)
_CURVE_POSES = (-45, -90, -135, 180)


def _items(condition: str, size: int, set_size: int, rng: np.random.Generator) -> tuple[list[np.ndarray], int]:
    """The ``set_size`` items of one display in placement order, and the target's position among them.

    Curvature poses cycle through the release's four angles over the items in placement order; intersection items
    take one of the four poses at random; heterogeneous distractor orientations are drawn without replacement
    (all eight types once before any repeats), as the release does.
    """
    n, slot = set_size - 1, int(rng.integers(set_size))
    if condition in ("curve_in_lines", "line_in_curves"):
        target_is_curve = condition == "curve_in_lines"
        return [(_curve if (i == slot) == target_is_curve else _line)(size, _CURVE_POSES[i % 4])
                for i in range(set_size)], slot
    target, distractors = _target_and_distractors(condition, size, n, rng)
    return distractors[:slot] + [target] + distractors[slot:], slot


def _target_and_distractors(condition: str, size: int, n: int, rng: np.random.Generator
                            ) -> tuple[np.ndarray, list[np.ndarray]]:
    if condition in ("top_down", "left_right"):
        lit = {"top_down": ("top", "bottom"), "left_right": ("left", "right")}[condition]
        return _shaded_disk(size, lit[0]), [_shaded_disk(size, lit[1]) for _ in range(n)]
    strokes = {"cross": ("cross", "non_cross"), "non_cross": ("non_cross", "cross"), "Ts": ("T", "L"),
               "Ls": ("L", "T")}
    if condition in strokes:
        t, d = (_strokes(k) for k in strokes[condition])
        return _posed(t, int(rng.integers(4))), [_posed(d, int(rng.integers(4))) for _ in range(n)]
    if condition in ("homo_t0", "homo_t20"):
        t, d = (0, 20) if condition == "homo_t0" else (20, 0)
        return _oriented_bar(size, t), [_oriented_bar(size, d) for _ in range(n)]
    if condition in ("hetero_t0", "hetero_t20"):
        t = 0 if condition == "hetero_t0" else 20
        types = _HETERO_ANGLES if t == 0 else tuple(a for a in _HETERO_ANGLES if a != 20) + (0,)
        order = np.concatenate([rng.permutation(len(types)) for _ in range(-(-n // len(types)) or 1)])[:n]
        return _oriented_bar(size, t), [_oriented_bar(size, types[int(i)]) for i in rng.permutation(order)]
    raise ValueError(f"condition must be one of {sorted(HUMAN_RT_MS)}, got {condition!r}")


@dataclass
class Display:
    """One generated search display (values in [0, 1], grey rendered as 3 equal channels)."""

    image: torch.Tensor
    target: torch.Tensor
    target_mask: torch.Tensor
    item_masks: torch.Tensor
    target_item: int
    occupied: tuple[int, ...]
    set_size: int
    condition: str
    background: float


def cell_masks(grid: tuple[int, int], cell_px: int, side: int | None = None) -> torch.Tensor:
    """``(rows * cols, side, side)`` bool masks of the grid cells, row-major (the release's ``gt_mask``).

    Cells tile the top-left ``rows * cell_px`` pixels; ``side`` (default that) is the display's size.
    """
    rows, cols = grid
    side = max(rows, cols) * cell_px if side is None else side
    if side < max(rows, cols) * cell_px:
        raise ValueError(f"side must be >= {max(rows, cols) * cell_px} for grid {grid} of {cell_px} px, got {side}")
    masks = torch.zeros(rows * cols, side, side, dtype=torch.bool)
    for index in range(rows * cols):
        r, c = divmod(index, cols)
        masks[index, r * cell_px:(r + 1) * cell_px, c * cell_px:(c + 1) * cell_px] = True
    return masks


def generate_display(experiment: str | Experiment, condition: str, set_size: int, seed: int) -> Display:
    """One display of ``condition`` with ``set_size`` items (1 target, ``set_size - 1`` distractors), seeded.

    ``set_size`` random cells (the placement order is random); the target takes a random one; each item is put
    at its cell's corner plus a random offset in ``[0, jitter_px)`` per axis.
    """
    exp = EXPERIMENTS[experiment] if isinstance(experiment, str) else experiment
    if isinstance(experiment, str) and experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {sorted(EXPERIMENTS)}, got {experiment!r}")
    if condition not in exp.conditions:
        raise ValueError(f"condition must be one of {exp.conditions} for {exp.name}, got {condition!r}")
    cells = exp.grid[0] * exp.grid[1]
    if not isinstance(set_size, int) or not 1 <= set_size <= cells:
        raise ValueError(f"set_size must be an int in [1, {cells}] (the {exp.grid[0]}x{exp.grid[1]} grid holds "
                         f"{cells} items), got {set_size!r}")
    rng = np.random.default_rng(seed)
    placed = [int(i) for i in rng.choice(cells, size=set_size, replace=False)]
    patches, slot = _items(condition, exp.item_px, set_size, rng)
    target_patch = patches[slot]
    background = exp.background / 255
    side = exp.display_px
    image = np.full((side, side), background)
    for cell, patch in zip(placed, patches, strict=True):
        r, c = divmod(cell, exp.grid[1])
        top = r * exp.cell_px + (int(rng.integers(exp.jitter_px)) if exp.jitter_px > 0 else 0)
        left = c * exp.cell_px + (int(rng.integers(exp.jitter_px)) if exp.jitter_px > 0 else 0)
        h, w = patch.shape
        region = image[top: top + h, left: left + w]
        image[top: top + h, left: left + w] = np.where(np.isnan(patch), region, patch)
    target_item = placed[slot]
    masks = cell_masks(exp.grid, exp.cell_px, side)
    as_rgb = lambda a: torch.from_numpy(np.clip(a, 0, 1)).float().expand(3, -1, -1).clone()  # noqa: E731
    return Display(image=as_rgb(image), target=as_rgb(np.where(np.isnan(target_patch), background, target_patch)),
                   target_mask=masks[target_item].clone(), item_masks=masks, target_item=target_item,
                   occupied=tuple(sorted(placed)), set_size=set_size, condition=condition, background=background)


def scale_display(display: Display, scale: float) -> Display:
    """``display`` resized by ``scale`` in (0, 1] (area-averaged image and target, nearest-neighbour masks).

    For quick runs of the experiments at a fraction of the published size (eccNET's cost grows with the view).
    """
    if not isinstance(scale, (int, float)) or not 0 < scale <= 1:
        raise ValueError(f"scale must be a number in (0, 1], got {scale!r}")
    if scale == 1:
        return display

    def resize(x: torch.Tensor, nearest: bool) -> torch.Tensor:
        size = [max(1, round(s * scale)) for s in x.shape[-2:]]
        if nearest:
            return torch.nn.functional.interpolate(x[None].float(), size=size, mode="nearest")[0].bool()
        return torch.nn.functional.interpolate(x[None], size=size, mode="area")[0]

    return Display(image=resize(display.image, False), target=resize(display.target, False),
                   target_mask=resize(display.target_mask[None], True)[0],
                   item_masks=resize(display.item_masks, True), target_item=display.target_item,
                   occupied=display.occupied, set_size=display.set_size, condition=display.condition,
                   background=display.background)


def eccnet_searcher(model, experiment: str, *, scale: float = 1.0, corner_bias: int = 64
                    ) -> Callable[[Display], tuple[bool, int]]:
    """A ``run_experiment`` search function running ``model.search`` (an ``EccNet``) as the release does.

    The view spans the display side plus ``corner_bias`` (release: 64) each way around the fixation, the
    experiment's DoG sizes smooth the map, and a search fails after ``cells + 1`` fixations. ``scale`` < 1 runs on
    displays resized by :func:`scale_display` (margin scaled too) for quick runs.
    """
    exp = EXPERIMENTS[experiment]
    margin = max(1, round(corner_bias * scale))

    def search(display: Display) -> tuple[bool, int]:
        d = scale_display(display, scale)
        result = model.search(d.image, d.target, d.target_mask, item_masks=d.item_masks, background=d.background,
                              corner_bias=margin, dog=exp.dog)
        return result.found, result.num_fixations

    return search


def generate_condition(experiment: str, condition: str, *, displays_per_set_size: int | None = None,
                       seed: int = 0) -> list[Display]:
    """All displays of one condition: ``displays_per_set_size`` (default: published) per published set size.

    Display seeds depend on ``seed``, the experiment, the set size and the index: the two conditions of an
    experiment share their random cell layouts and target cells (a paired design); experiments do not.
    """
    exp = EXPERIMENTS[experiment]
    count = exp.displays_per_set_size if displays_per_set_size is None else displays_per_set_size
    if count < 1:
        raise ValueError(f"displays_per_set_size must be >= 1, got {count}")
    return [generate_display(exp, condition, n, seed * 1_000_003 + exp.number * 100_003 + i * 1009 + n)
            for n in exp.set_sizes for i in range(count)]


@dataclass
class ExperimentResult:
    """Model RT slopes per condition, the human slopes, and the asymmetry indices."""

    experiment: str
    rt_by_condition: dict[str, list[float]]
    model_slopes: dict[str, float]
    human_slopes: dict[str, float]
    model_index: float
    human_index: float


def summarise(experiment: str, fixations: dict[str, dict[int, Sequence[int]]]) -> ExperimentResult:
    """From RT-model fixation counts per condition and set size to slopes and asymmetry indices."""
    exp = EXPERIMENTS[experiment]
    rts, model, human = {}, {}, {}
    for condition in exp.conditions:
        per_size = fixations[condition]
        if sorted(per_size) != sorted(exp.set_sizes):
            raise ValueError(f"fixations[{condition!r}] must have the set sizes {exp.set_sizes}, "
                             f"got {sorted(per_size)}")
        rts[condition] = [float(np.mean(reaction_time(np.asarray(per_size[n])))) for n in exp.set_sizes]
        model[condition] = rt_slope(exp.set_sizes, rts[condition])
        human[condition] = exp.human_slope(condition)
    a, b = exp.conditions
    return ExperimentResult(experiment, rts, model, human,
                            asymmetry_index(model[a], model[b], human[a], human[b]),
                            asymmetry_index(human[a], human[b], human[a], human[b]))


def run_experiment(search: Callable[[Display], tuple[bool, int]], experiment: str, *,
                   displays_per_set_size: int | None = None, seed: int = 0) -> ExperimentResult:
    """Run ``search`` (display -> (found, fixations after the start)) on both conditions and summarise."""
    exp = EXPERIMENTS[experiment]
    counts: dict[str, dict[int, list[int]]] = {}
    for condition in exp.conditions:
        counts[condition] = {n: [] for n in exp.set_sizes}
        for display in generate_condition(experiment, condition, displays_per_set_size=displays_per_set_size,
                                          seed=seed):
            found, n_fix = search(display)
            counts[condition][display.set_size].append(fixations_per_search(found, n_fix, display.set_size))
    return summarise(experiment, counts)
