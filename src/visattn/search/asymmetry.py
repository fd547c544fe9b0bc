"""The six visual-search asymmetry experiments: displays, the reaction-time model, slopes and asymmetry index.

From *Visual Search Asymmetry: Deep Nets and Humans Share Similar Inherent Biases* (Gupta, Zhang, Lee, Kreiman,
NeurIPS 2021, arXiv:2106.02953). Each experiment pairs two conditions that swap target and distractor (a curve
among lines vs a line among curves, ...). Items sit in the cells of a grid (one item per cell, random cells, a
small random jitter inside the cell); the target is one of them.

Reaction time from fixations (the paper's fit to human data): ``RT = 252.359 n + 376.271`` ms, ``n`` the number
of fixations after the start (a search that fails within the budget counts as ``n = set size``). The slope of a
condition is the least-squares slope of mean RT against set size; the asymmetry index of an experiment is

    AI = (s_H - s_L) / (s_H + s_L),   s clipped at 0,   AI = 0 when s_H + s_L = 0,

where H is the condition with the larger *human* slope. Grid sizes, set sizes, displays per set size, the
background grey level and the curvature geometry (11.3 deg display, 6 x 6 grid, 1.6 deg items at 30 px/deg) follow
the official release; the other experiments' item drawings are our own renderings of the paper's descriptions
(sizes in degrees chosen by us, documented per experiment). The human slopes are the release's human RT data.
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
    """One asymmetry experiment: two conditions, set sizes, grid and rendering constants."""

    number: int
    name: str
    conditions: tuple[str, str]
    set_sizes: tuple[int, ...]
    displays_per_set_size: int
    grid: tuple[int, int]
    cell_px: int
    item_px: int
    background: int

    @property
    def display_px(self) -> int:
        return self.grid[0] * self.cell_px

    def human_slope(self, condition: str) -> float:
        """Slope (ms/item) of the published human RTs of ``condition``."""
        return rt_slope(self.set_sizes, HUMAN_RT_MS[condition])


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment(1, "curvature", ("curve_in_lines", "line_in_curves"), (8, 16, 32), 30, (6, 6),
               int(11.3 / 6 * DEG2PX), int(1.6 * DEG2PX), 0),
    Experiment(2, "lighting_direction", ("top_down", "left_right"), (1, 6, 12), 30, (4, 4), 60, 40, 27),
    Experiment(3, "intersection", ("non_cross", "cross"), (3, 6, 9), 36, (3, 3), 80, 48, 255),
    Experiment(4, "t_vs_l", ("Ts", "Ls"), (3, 6, 9), 36, (3, 3), 80, 48, 255),
    Experiment(5, "orientation_homogeneous", ("homo_t20", "homo_t0"), (1, 4, 8, 12), 30, (4, 4), 60, 48, 255),
    Experiment(6, "orientation_heterogeneous", ("hetero_t0", "hetero_t20"), (1, 4, 8, 12), 30, (4, 4), 60, 48,
               255),
)}
"""The six experiments in the paper's order (Exp 1-6); conditions in the release's order."""


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    return np.meshgrid(t, t, indexing="ij")


def _rotate(rows: np.ndarray, cols: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    a = math.radians(degrees)
    return cols * math.sin(a) + rows * math.cos(a), cols * math.cos(a) - rows * math.sin(a)


def _bar(size: int, length: float, width: float, degrees: float, dr: float = 0.0, dc: float = 0.0) -> np.ndarray:
    """A bar ``length`` x ``width`` px, vertical at 0 deg, rotated clockwise by ``degrees``, centre offset."""
    rows, cols = _grid(size)
    u, v = _rotate(rows - dr, cols - dc, degrees)
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
    """A disk shaded by a linear ramp, bright on the side the light comes from ("top", "bottom", "left", "right").

    The background is 27/255; outside the disk the value is NaN (filled with the background by the renderer).
    """
    rows, cols = _grid(size)
    radius = size / 2 - 1
    ramp = {"top": -rows, "bottom": rows, "left": -cols, "right": cols}[lit_from] / radius
    disk = np.where(np.hypot(rows, cols) <= radius, 0.5 + 0.45 * ramp, np.nan)
    return disk


def _two_bars(size: int, kind: str, degrees: float) -> np.ndarray:
    """Two perpendicular strokes: ``cross`` (+), ``non_cross`` (strokes apart), ``T`` or ``L``; black on white."""
    length, width = size * 0.8, max(size / 10, 2.0)
    half = length / 2
    if kind == "cross":
        shape = np.maximum(_bar(size, length, width, degrees), _bar(size, length, width, degrees + 90))
    elif kind == "non_cross":
        shape = np.maximum(_bar(size, length, width, degrees, *_rot_offset(0, -half / 2, degrees)),
                           _bar(size, length / 2, width, degrees + 90, *_rot_offset(0, half / 2 + width, degrees)))
    elif kind == "T":
        shape = np.maximum(_bar(size, length, width, degrees + 90, *_rot_offset(-half, 0, degrees)),
                           _bar(size, length, width, degrees))
    elif kind == "L":
        shape = np.maximum(_bar(size, length, width, degrees, *_rot_offset(0, -half, degrees)),
                           _bar(size, length, width, degrees + 90, *_rot_offset(half, 0, degrees)))
    else:
        raise ValueError(f"kind must be cross, non_cross, T or L, got {kind!r}")
    return 1.0 - shape


def _rot_offset(dr: float, dc: float, degrees: float) -> tuple[float, float]:
    a = math.radians(degrees)
    return dr * math.cos(a) - dc * math.sin(a), dr * math.sin(a) + dc * math.cos(a)


def _oriented_bar(size: int, degrees: float) -> np.ndarray:
    """A black bar (1.2 deg x 0.2 deg at 30 px/deg, scaled to the item) tilted ``degrees`` from vertical."""
    return 1.0 - _bar(size, size * 0.8, max(size / 8, 2.0), degrees)


_HETERO_ANGLES = (-80, -60, -40, -20, 20, 40, 60, 80)


def _item_drawers(condition: str, size: int, rng: np.random.Generator) -> tuple[Callable[[], np.ndarray],
                                                                                 Callable[[], np.ndarray]]:
    """(draw target, draw distractor) for ``condition``; each call draws one item (random pose where published)."""
    poses = (-45, -90, -135, 180)

    def pick(seq: Sequence) -> float:
        return seq[int(rng.integers(len(seq)))]

    quarter = (0, 90, 180, 270)
    table: dict[str, tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]] = {
        "curve_in_lines": (lambda: _curve(size, pick(poses)), lambda: _line(size, pick(poses))),
        "line_in_curves": (lambda: _line(size, pick(poses)), lambda: _curve(size, pick(poses))),
        "top_down": (lambda: _shaded_disk(size, "top"), lambda: _shaded_disk(size, "bottom")),
        "left_right": (lambda: _shaded_disk(size, "left"), lambda: _shaded_disk(size, "right")),
        "cross": (lambda: _two_bars(size, "cross", pick(quarter)), lambda: _two_bars(size, "non_cross",
                                                                                    pick(quarter))),
        "non_cross": (lambda: _two_bars(size, "non_cross", pick(quarter)), lambda: _two_bars(size, "cross",
                                                                                            pick(quarter))),
        "Ts": (lambda: _two_bars(size, "T", pick(quarter)), lambda: _two_bars(size, "L", pick(quarter))),
        "Ls": (lambda: _two_bars(size, "L", pick(quarter)), lambda: _two_bars(size, "T", pick(quarter))),
        "homo_t0": (lambda: _oriented_bar(size, 0), lambda: _oriented_bar(size, 20)),
        "homo_t20": (lambda: _oriented_bar(size, 20), lambda: _oriented_bar(size, 0)),
        "hetero_t0": (lambda: _oriented_bar(size, 0), lambda: _oriented_bar(size, pick(_HETERO_ANGLES))),
        "hetero_t20": (lambda: _oriented_bar(size, 20),
                       lambda: _oriented_bar(size, pick([a for a in _HETERO_ANGLES if a != 20] + [0]))),
    }
    if condition not in table:
        raise ValueError(f"condition must be one of {sorted(table)}, got {condition!r}")
    return table[condition]


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


def cell_masks(grid: tuple[int, int], cell_px: int) -> torch.Tensor:
    """``(rows * cols, H, W)`` bool masks of the grid cells, row-major (the release's ``gt_mask``)."""
    rows, cols = grid
    masks = torch.zeros(rows * cols, rows * cell_px, cols * cell_px, dtype=torch.bool)
    for index in range(rows * cols):
        r, c = divmod(index, cols)
        masks[index, r * cell_px:(r + 1) * cell_px, c * cell_px:(c + 1) * cell_px] = True
    return masks


def generate_display(experiment: str | Experiment, condition: str, set_size: int, seed: int) -> Display:
    """One display of ``condition`` with ``set_size`` items (1 target, ``set_size - 1`` distractors), seeded."""
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
    draw_target, draw_distractor = _item_drawers(condition, exp.item_px, rng)
    background = exp.background / 255
    side = exp.display_px
    image = np.full((side, side), background)
    occupied = sorted(int(i) for i in rng.choice(cells, size=set_size, replace=False))
    target_item = occupied[int(rng.integers(set_size))]
    target_patch = None
    jitter = exp.cell_px - exp.item_px
    for cell in occupied:
        patch = draw_target() if cell == target_item else draw_distractor()
        r, c = divmod(cell, exp.grid[1])
        top = r * exp.cell_px + int(rng.integers(jitter + 1))
        left = c * exp.cell_px + int(rng.integers(jitter + 1))
        if exp.background == 0:
            patch = np.nan_to_num(patch, nan=0.0)
        region = image[top: top + exp.item_px, left: left + exp.item_px]
        image[top: top + exp.item_px, left: left + exp.item_px] = np.where(np.isnan(patch), region, patch)
        if cell == target_item:
            target_patch = np.where(np.isnan(patch), background, patch)
    masks = cell_masks(exp.grid, exp.cell_px)
    as_rgb = lambda a: torch.from_numpy(np.clip(a, 0, 1)).float().expand(3, -1, -1).clone()  # noqa: E731
    return Display(image=as_rgb(image), target=as_rgb(target_patch), target_mask=masks[target_item].clone(),
                   item_masks=masks, target_item=target_item, occupied=tuple(occupied), set_size=set_size,
                   condition=condition, background=background)


def generate_condition(experiment: str, condition: str, *, displays_per_set_size: int | None = None,
                       seed: int = 0) -> list[Display]:
    """All displays of one condition: ``displays_per_set_size`` (default: published) per published set size."""
    exp = EXPERIMENTS[experiment]
    count = exp.displays_per_set_size if displays_per_set_size is None else displays_per_set_size
    if count < 1:
        raise ValueError(f"displays_per_set_size must be >= 1, got {count}")
    return [generate_display(exp, condition, n, seed * 1_000_003 + i * 1009 + n)
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
