"""In which order ``visattn bench`` takes its timed bursts: rounds across cases, the order of the cases in each round,
the record of what was done (``environment.schedule`` in the JSON) and the progress events the run reports.

Timed case by case, a case's ``repeats`` rounds all fall within a few seconds; a phase of the machine lasting tens
of seconds in which memory-bound mixers run ~30% slower (measured on the 2-core development VM, while dense SDPA,
compute-bound, did not move) then reaches every round of the cases timed in it, and pairing each burst with SDPA
cannot cancel it. Rounds across cases spread each case's rounds over the whole run: every case is probed first, then
round ``r`` takes every case's bursts before round ``r + 1`` starts, so such a phase reaches one or two of a case's
rounds, which the median of the per-round ratios discards. The order of the cases is shuffled per round
(:func:`round_orders`, seeded), so that no case always follows the same neighbour.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

ROUNDS_ACROSS_CASES = "rounds across cases"
CASE_BY_CASE = "case by case"


def round_orders(count: int, repeats: int, seed: int) -> list[list[int]]:
    """``repeats`` orders of the indices ``0 .. count - 1``, one per round, each a seeded shuffle that differs from
    the round before (where ``count > 1``), the same for the same arguments."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    rng = random.Random(seed)
    orders: list[list[int]] = []
    for _ in range(repeats):
        order = list(range(count))
        rng.shuffle(order)
        while count > 1 and orders and order == orders[-1]:
            rng.shuffle(order)
        orders.append(order)
    return orders


class BenchProgress(NamedTuple):
    """One step of a run for a progress display: ``done`` of ``total`` steps (one per (case, size) probed and one
    per case and round timed) and what the step was, e.g. ``"probe window 48x48"`` or ``"round 2/5 window"``."""

    done: int
    total: int
    description: str


@dataclass
class ScheduleLog:
    """How a run scheduled its timed bursts, filled in by :func:`~visattn.bench.runner.iter_bench`.

    ``scheduling`` is :data:`ROUNDS_ACROSS_CASES` or :data:`CASE_BY_CASE` and ``reason`` says why when it is the
    latter. ``groups`` holds the labels of the cases timed in the same rounds (one group for the whole run unless the
    memory budget split it; cases with nothing to time are in none), ``held_bytes`` the estimated memory each group
    kept alive through its rounds (inputs, mixers and what they added to visattn's shared cache),
    ``largest_call_bytes`` the largest estimated memory of one of its calls (the peak of the rounds is about the sum
    of the two) and ``round_orders`` the order of its cases in each round. ``cache_changes`` counts the case
    visits during which visattn's shared cache changed size: something was rebuilt inside a timed burst (expected
    0). ``state_probe_ms`` holds the machine-state probe's sample at every case visit in time order
    (:mod:`visattn.bench.machine_state`; empty where the cases ran in their own processes)."""

    scheduling: str = ROUNDS_ACROSS_CASES
    reason: str | None = None
    groups: list[list[str]] = field(default_factory=list)
    held_bytes: list[int] = field(default_factory=list)
    largest_call_bytes: list[int] = field(default_factory=list)
    round_orders: list[list[list[str]]] = field(default_factory=list)
    cache_changes: int = 0
    state_probe_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
