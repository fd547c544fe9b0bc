"""Timing summaries and single timed calls."""

import pytest
import torch

from visattn.bench import summarize
from visattn.bench.timing import synchronizer, time_call


def test_summary_of_known_samples():
    timing = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert timing.median_ms == 3.0
    assert (timing.p25_ms, timing.p75_ms) == (2.0, 4.0)
    assert timing.spread_ms == 2.0
    assert (timing.min_ms, timing.max_ms) == (1.0, 5.0)
    assert timing.samples_ms == (5.0, 1.0, 3.0, 2.0, 4.0)


def test_summary_of_one_sample():
    timing = summarize([7.5])
    assert timing.median_ms == timing.p25_ms == timing.p75_ms == 7.5
    assert timing.spread_ms == 0.0


def test_summary_needs_samples():
    with pytest.raises(ValueError, match="samples_ms"):
        summarize([])


def test_time_call_runs_once_and_syncs_around_it():
    events = []
    seconds = time_call(lambda: events.append("call"), lambda: events.append("sync"))
    assert events == ["sync", "call", "sync"]
    assert seconds >= 0.0


def test_cpu_synchronizer_is_a_no_op():
    assert synchronizer(torch.device("cpu"))() is None
