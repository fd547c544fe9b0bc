"""Fakes and a reference for the benchmark's timing tests: bursts that return given samples round by round, and the
Hodges-Lehmann estimate written out from its definition."""

import itertools
import math
import statistics


def per_round(*series):
    """A fake ``interleaved_bursts`` for runs that take one round per call: the ``r``-th call returns the ``r``-th
    value of each of ``series`` (one series per burst function, in order)."""
    rounds = itertools.count()

    def fake_bursts(fns, calls, repeats, sync):
        r = next(rounds)
        assert len(fns) == len(series) and repeats == 1
        return [[values[r]] for values in series]

    return fake_bursts


def hodges_lehmann(ratios):
    """exp of the median of the means of every pair (i <= j) of the ratios' logarithms."""
    logs = [math.log(r) for r in ratios]
    return math.exp(statistics.median((a + b) / 2 for a, b in itertools.combinations_with_replacement(logs, 2)))
