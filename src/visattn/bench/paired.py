"""Two implementations of the same work timed against each other: calls to time (inference, a training step, a
list of layer calls) and the paired ratio of their interleaved bursts, as the model benchmarks in ``benchmarks/``
report it."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from .timing import interleaved_bursts

__all__ = ["PairedRatio", "inference_call", "paired_ratio", "run_all", "train_step_call"]


class PairedRatio(NamedTuple):
    """``ratio``: median over rounds of ``time(theirs) / time(ours)`` (above 1: ours is faster); ``low``/``high``:
    the smallest and largest per-round ratio; ``theirs_ms``/``ours_ms``: each side's median milliseconds."""

    ratio: float
    low: float
    high: float
    theirs_ms: float
    ours_ms: float

    def markdown_row(self, case: str, what: str) -> str:
        """``| case | what | ratio | low-high | theirs ms | ours ms |``."""
        return (f"| {case} | {what} | {self.ratio:.2f}x | {self.low:.2f}-{self.high:.2f} | {self.theirs_ms:.0f} | "
                f"{self.ours_ms:.0f} |")


def paired_ratio(theirs: Callable[[], object], ours: Callable[[], object], rounds: int, calls: int) -> PairedRatio:
    """One untimed call of each, then ``rounds`` rounds of a burst of ``calls`` calls of each
    (:func:`~visattn.bench.timing.interleaved_bursts`); the ratio of each round's two bursts, summarised."""
    theirs(), ours()
    t, o = interleaved_bursts([theirs, ours], [calls, calls], rounds, lambda: None)
    ratios = [a / b for a, b in zip(t, o, strict=True)]
    return PairedRatio(statistics.median(ratios), min(ratios), max(ratios), statistics.median(t), statistics.median(o))


def run_all(calls: Sequence[Callable[[], object]]) -> Callable[[], None]:
    """One call that makes every call of ``calls`` in order, without gradients."""
    def run() -> None:
        with torch.no_grad():
            for call in calls:
                call()
    return run


def inference_call(model: nn.Module, images: torch.Tensor) -> Callable[[], None]:
    """One forward of ``model`` on ``images`` without gradients."""
    def run() -> None:
        with torch.no_grad():
            model(images)
    return run


def train_step_call(model: nn.Module, images: torch.Tensor) -> Callable[[], None]:
    """One training step's work: zero the gradients, forward, backward of the mean squared logits."""
    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(images).float().square().mean().backward()
    return run
