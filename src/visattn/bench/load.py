"""How busy the machine is: the load average, recorded with every run, and the warning shown when other work
competes with the benchmark's threads. On a 2-core machine with one other busy process, two torch threads spend
much of each call waiting at OpenMP barriers for the descheduled one: calls of 0.1-1 ms were measured at a flat
~8 ms (a scheduler time slice) while one thread gave the expected times."""

from __future__ import annotations

import os


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS does not give them."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def busy_message(load_1m: float | None, cpus: int | None, threads: int) -> str | None:
    """A warning when ``load_1m`` (runnable processes, this one not yet running) plus ``threads`` exceeds the
    ``cpus``, else None."""
    if load_1m is None or cpus is None or load_1m + threads <= cpus + 0.5:
        return None
    return (f"the machine is busy (load average {load_1m:.1f} on {cpus} cores) and the benchmark runs {threads} "
            "thread(s): timings will be slow and noisy. Use an idle machine, or fewer threads (--threads 1).")
