"""The arena's procedural tasks by name, as seeded, index-addressable data sets.

Sample ``i`` of a split is drawn from its own generator, ``numpy.random.default_rng([seed, split, size, i])``, so
a data set is the same whoever builds it (any rank, any resume) and the test split never overlaps the training one.
Labels are ``i % num_classes``: every class equally often (exactly, when the count is a multiple of the classes).

Length / resolution extrapolation is the same task at a larger size: train at ``size``, test at
:func:`extrapolation_sizes` (curves grow longer, arrays hold more items, digits get more pixels per stroke).

Tasks: ``pathfinder`` (:mod:`.pathfinder`), ``search`` (:mod:`.search_array`), ``digits`` (:mod:`.digits`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import digits, pathfinder, search_array

if TYPE_CHECKING:
    import torch

SPLITS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class TaskSpec:
    """A procedural task: its classes, the sizes it can be drawn at, its sampler and its exact oracle."""

    name: str
    num_classes: int
    default_size: int
    size_step: int
    min_size: int
    sample: Callable[[int, int, np.random.Generator, str], np.ndarray]
    oracle: Callable[[np.ndarray], int]
    description: str

    def check_size(self, size: int) -> int:
        """``size`` if the task can be drawn at it, else a ``ValueError`` saying which sizes it takes."""
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"size must be an int, got {type(size).__name__}")
        if size < self.min_size or size % self.size_step:
            raise ValueError(f"size of task {self.name!r} must be a multiple of {self.size_step} and >= "
                             f"{self.min_size}, got {size}")
        return size


TASKS: dict[str, TaskSpec] = {
    "pathfinder": TaskSpec("pathfinder", 2, 32, 4, 16, lambda s, y, r, _: pathfinder.pathfinder_sample(s, y, r),
                           pathfinder.pathfinder_oracle, "are the two dots on one curve (long-range)"),
    "search": TaskSpec("search", 2, 32, search_array.CELL, 2 * search_array.CELL,
                       lambda s, y, r, _: search_array.search_array_sample(s, y, r),
                       search_array.search_array_oracle, "is a T among the rotated Ls"),
    "digits": TaskSpec("digits", 10, 32, 8, 8, lambda s, y, r, split: digits.digits_sample(s, y, r, split=split),
                       digits.digits_oracle, "which digit (scikit-learn's 8 x 8 digits, upscaled)"),
}


def get_task(name: str) -> TaskSpec:
    """The task called ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def sample_image(task: str, size: int, index: int, seed: int, split: str = "train") -> tuple[np.ndarray, int]:
    """Sample ``index`` of ``split``: a ``(size, size)`` float32 image in [0, 1] and its label."""
    spec = get_task(task)
    spec.check_size(size)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    label = index % spec.num_classes
    rng = np.random.default_rng([seed, SPLITS[split], size, index])
    return spec.sample(size, label, rng, split), label


def make_split(task: str, size: int, count: int, seed: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` samples as tensors: images ``(count, 1, size, size)`` float32 and labels ``(count,)`` int64."""
    import torch

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count!r}")
    pairs = [sample_image(task, size, i, seed, split) for i in range(count)]
    images = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
    return images, torch.tensor([p[1] for p in pairs], dtype=torch.int64)


def extrapolation_sizes(task: str, size: int, factors: Sequence[float] = (1.0, 1.5, 2.0)) -> list[int]:
    """Test sizes for a model trained at ``size``: ``size * factor`` rounded down to the task's size step
    (duplicates dropped, order kept)."""
    spec = get_task(task)
    spec.check_size(size)
    sizes = []
    for factor in factors:
        if factor < 1:
            raise ValueError(f"extrapolation factors must be >= 1, got {factor!r}")
        scaled = int(size * factor) // spec.size_step * spec.size_step
        if scaled not in sizes:
            sizes.append(scaled)
    return sizes
