"""Settings of a benchmark run: input sizes, dtype, device, repeats and budgets, checked on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .budget import default_memory_budget

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def check_dtype_and_device(dtype: str, device: str) -> None:
    """ValueError naming ``dtype`` or ``device`` unless the dtype is one of :data:`DTYPES` and the device exists."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must name a torch device like 'cpu' or 'cuda', got {device!r}") from err
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device must be available on this machine, got {device!r} and no CUDA device")


@dataclass(frozen=True)
class BenchSettings:
    """How every (mixer, size) is measured.

    q, k, v are ``(batch, heads, num_prefix_tokens + prod(shape), head_dim)`` standard-normal tensors of ``dtype``
    on ``device``. Each measurement makes ``warmup`` untimed calls (they pay one-time set-up such as building masks,
    and count against no budget), then one probe call timed against ``time_budget_s``, then ``repeats`` samples of
    the mixer interleaved with as many of dense SDPA on the same q, k, v (``ceil(repeats / 2)``, in every other
    round, where one call of either lasts ``2 * min_sample_s`` or more:
    :data:`visattn.bench.runner.LONG_CALL_SAMPLES`). A sample is a burst of consecutive calls lasting at least
    ``min_sample_s`` seconds (by the probe), so that calls of a few milliseconds are not measured in the machine's
    transitions. Ten rounds of 0.05 s bursts take the same time as five of 0.1 s and made three idle default runs
    agree better (docs/benchmarks.md): a memory-bound row's rounds then sample more of the run. A record whose
    per-round ratios to SDPA have an interquartile range above ``spread_limit`` times their median (the mixer's
    times, without a baseline) is flagged as noisy. ``backward`` times forward + backward of ``out.sum()``.
    ``memory_budget`` (bytes) and ``time_budget_s`` (seconds per call) decide skips; ``memory_budget`` also bounds
    the inputs and mixers kept for rounds across mixers. ``measure_memory`` adds one profiled call per mixer and per
    SDPA baseline. ``rounds_across_cases`` takes the ``repeats`` rounds across all mixers, after all are probed, in
    an order per round drawn from ``seed`` (which also seeds the inputs; :mod:`visattn.bench.schedule`); when False,
    each mixer's rounds follow its probes (``visattn bench --case-by-case``). ``isolate`` times each mixer in its
    own fresh process, case by case (:mod:`visattn.bench.isolation`; ``visattn bench --isolate``).
    """

    heads: int = 4
    head_dim: int = 32
    batch: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    backward: bool = False
    repeats: int = 10
    warmup: int = 1
    min_sample_s: float = 0.05
    spread_limit: float = 0.25
    num_prefix_tokens: int = 0
    memory_budget: int = field(default_factory=default_memory_budget)
    time_budget_s: float = 2.0
    measure_memory: bool = True
    seed: int = 0
    isolate: bool = False
    rounds_across_cases: bool = True

    def __post_init__(self) -> None:
        minimums = {"heads": 1, "head_dim": 1, "batch": 1, "repeats": 1, "warmup": 1, "num_prefix_tokens": 0,
                    "memory_budget": 1, "seed": 0}
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        check_dtype_and_device(self.dtype, self.device)
        budget = self.time_budget_s
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
            raise ValueError(f"time_budget_s must be a number > 0, got {budget!r}")
        for name in ("min_sample_s", "spread_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("backward", "measure_memory", "isolate", "rounds_across_cases"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
