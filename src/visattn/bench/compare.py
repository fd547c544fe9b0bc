"""Compare ``visattn bench`` runs from their JSON files (``visattn compare A.json B.json ...``): which rows' ratios to
SDPA agree within a fraction across the runs, each run's fitted exponents, and the machine state each run was timed
in (:mod:`visattn.bench.machine_state`), so that a disagreement can be told from a machine that changed under it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

AGREEMENT = 0.2
"""Ratios agree when the largest is at most ``1 + AGREEMENT`` times the smallest."""

MIN_MS = 1.0
"""Rows faster than this in every run are left out: a call of less than a millisecond is mostly fixed cost."""


@dataclass(frozen=True)
class RowComparison:
    """One (mixer label, tokens) timed in every run: its ratio to SDPA and milliseconds per call in each run, and
    ``spread``, the largest ratio over the smallest minus 1."""

    label: str
    tokens: int
    ratios: tuple[float, ...]
    median_ms: tuple[float, ...]

    @property
    def spread(self) -> float:
        return max(self.ratios) / min(self.ratios) - 1

    def agrees(self, agreement: float = AGREEMENT) -> bool:
        return self.spread <= agreement


def load_run(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON that ``visattn bench --json`` wrote to ``path``; ValueError naming the path when it is not one."""
    with open(path, encoding="utf-8") as f:
        try:
            run = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{os.fspath(path)!r} is not JSON: {err}") from err
    if not isinstance(run, dict) or not isinstance(run.get("records"), list) or "environment" not in run:
        raise ValueError(f"{os.fspath(path)!r} is not the JSON of a visattn bench run (no 'records' and "
                         "'environment'); write one with visattn bench --json PATH")
    return run


def compare_rows(runs: Sequence[dict[str, Any]], min_ms: float = MIN_MS) -> list[RowComparison]:
    """Every (label, tokens) with a ratio to SDPA in every run and a median of at least ``min_ms`` in one, in the
    first run's order."""
    if len(runs) < 2:
        raise ValueError(f"runs must hold at least two runs to compare, got {len(runs)}")
    timed = [{(r["label"], r["tokens"]): r for r in run["records"] if r.get("ratio_to_sdpa") is not None}
             for run in runs]
    rows = []
    for key in timed[0]:
        if all(key in t for t in timed):
            records = [t[key] for t in timed]
            if max(r["median_ms"] for r in records) >= min_ms:
                rows.append(RowComparison(key[0], key[1], tuple(r["ratio_to_sdpa"] for r in records),
                                          tuple(r["median_ms"] for r in records)))
    return rows


def state_medians(runs: Sequence[dict[str, Any]]) -> list[float | None]:
    """Each run's machine-state probe median in milliseconds (None for a run without probe samples)."""
    return [(run["environment"].get("machine_state") or {}).get("median_ms") for run in runs]


def states_differ(medians: Sequence[float | None], agreement: float = AGREEMENT) -> bool:
    """Whether the runs' probe medians (where known) spread by more than ``agreement``."""
    known = [m for m in medians if m is not None]
    return len(known) >= 2 and max(known) / min(known) - 1 > agreement
