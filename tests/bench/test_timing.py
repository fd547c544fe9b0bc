"""Timing summaries, single timed calls and interleaved bursts."""

import math
import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bench_fakes import hodges_lehmann
from visattn.bench import summarize, timing
from visattn.bench.timing import (
    calls_per_sample,
    hodges_lehmann_ratio,
    interleaved_bursts,
    synchronizer,
    time_burst,
    time_call,
)


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


@pytest.mark.parametrize(("per_call", "min_sample", "calls"),
                         [(0.003, 0.1, 34), (0.5, 0.1, 1), (0.1, 0.1, 1), (0.0, 0.0, 1), (0.02, 0.0, 1)])
def test_calls_per_sample_fills_the_minimum(per_call, min_sample, calls):
    assert calls_per_sample(per_call, min_sample) == calls


@pytest.mark.parametrize(("per_call", "min_sample", "name"), [(-1.0, 0.1, "seconds_per_call"),
                                                              (0.1, -0.5, "min_sample_s")])
def test_calls_per_sample_rejects_negative_times(per_call, min_sample, name):
    with pytest.raises(ValueError, match=name):
        calls_per_sample(per_call, min_sample)


def test_time_burst_calls_the_function_that_many_times():
    count = []
    wall, cpu = time_burst(lambda: count.append(sum(range(1000))), 5)
    assert len(count) == 5
    assert wall > 0 and cpu >= 0


def test_time_burst_needs_a_call():
    with pytest.raises(ValueError, match="calls"):
        time_burst(lambda: None, 0)


def test_interleaved_bursts_alternate_sample_by_sample():
    events = []
    fns = [lambda: events.append("mixer"), lambda: events.append("sdpa")]
    samples = interleaved_bursts(fns, [3, 2], 2, lambda: events.append("sync"))
    burst_mixer = ["sync", "mixer", "mixer", "mixer", "sync"]
    burst_sdpa = ["sync", "sdpa", "sdpa", "sync"]
    assert events == (burst_mixer + burst_sdpa) * 2
    assert [len(s) for s in samples] == [2, 2]
    assert all(t >= 0.0 for s in samples for t in s)


def test_interleaved_bursts_time_per_call(monkeypatch):
    clock = iter([0.0, 0.6, 1.0, 1.2])  # bursts of 0.6 s (3 calls) and 0.2 s (1 call)
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    samples = interleaved_bursts([lambda: None, lambda: None], [3, 1], 1, lambda: None)
    assert samples[0] == [pytest.approx(200.0)] and samples[1] == [pytest.approx(200.0)]


@pytest.mark.parametrize(("calls", "repeats", "match"), [([1], 1, "one count per function"), ([1, 0], 1, "calls"),
                                                          ([1, 1], 0, "repeats")])
def test_interleaved_bursts_reject_bad_counts(calls, repeats, match):
    with pytest.raises(ValueError, match=match):
        interleaved_bursts([lambda: None, lambda: None], calls, repeats, lambda: None)


def test_relative_spread():
    assert summarize([1.0, 2.0, 3.0, 4.0, 5.0]).relative_spread == pytest.approx(2.0 / 3.0)
    assert summarize([0.0, 0.0]).relative_spread == 0.0
    assert summarize([0.0, 0.0, 0.0, 1.0, 1.0]).relative_spread == math.inf


@given(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=12))
def test_hodges_lehmann_ratio_is_its_definition(ratios):
    estimate = hodges_lehmann_ratio(ratios)
    assert estimate == pytest.approx(hodges_lehmann(ratios), rel=1e-12)
    assert min(ratios) * (1 - 1e-12) <= estimate <= max(ratios) * (1 + 1e-12)


def test_hodges_lehmann_ratio_of_one_round_and_of_a_wild_round():
    assert hodges_lehmann_ratio([2.5]) == pytest.approx(2.5)
    assert hodges_lehmann_ratio([2.0, 2.0, 2.0, 2.0, 200.0]) == pytest.approx(2.0)  # one wild round of five: ignored


def test_hodges_lehmann_ratio_holds_still_where_the_median_jumps_between_two_levels():
    # ten rounds on two levels, 4, 5 or 6 of them on the high one: the median goes from one level to the other, this
    # estimate stays at their geometric middle
    rounds = [[1.0] * (10 - high) + [1.5] * high for high in (4, 5, 6)]
    assert [statistics.median(r) for r in rounds] == [1.0, 1.25, 1.5]
    assert [hodges_lehmann_ratio(r) for r in rounds] == [pytest.approx(1.5**0.5)] * 3


@pytest.mark.parametrize("ratios", [[], [1.0, 0.0], [1.0, -2.0], [float("inf")], [float("nan")]])
def test_hodges_lehmann_ratio_rejects_what_is_not_a_positive_ratio(ratios):
    with pytest.raises(ValueError, match="ratios"):
        hodges_lehmann_ratio(ratios)
