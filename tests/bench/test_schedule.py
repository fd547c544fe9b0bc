"""visattn.bench.schedule and the runner's rounds across cases: the order of the rounds, records as case by case,
skipped rows, the fall-back under the memory budget, progress, and a tiny run end to end. Burst times are faked
where an order is checked (each fake sample is the number of the visit that took it); nothing asserts a wall-clock
time."""

import json
import logging

import pytest

from visattn._cache import byte_cached
from visattn.bench import (
    BenchProgress,
    BenchSettings,
    ScheduleLog,
    StateProbe,
    iter_bench,
    round_orders,
    run_bench,
    runner,
)
from visattn.bench.schedule import CASE_BY_CASE, ROUNDS_ACROSS_CASES

FAST = {"heads": 1, "head_dim": 8, "repeats": 3, "measure_memory": False, "min_sample_s": 0.0}
CASES = ["softmax", "neighborhood:kernel_size=3", "linear", "axial"]
MiB = 1 << 20


@pytest.mark.parametrize("count", [0, 1, 2, 3, 7])
def test_round_orders_are_seeded_permutations_that_change_every_round(count):
    orders = round_orders(count, 6, seed=3)
    assert len(orders) == 6 and all(sorted(order) == list(range(count)) for order in orders)
    assert orders == round_orders(count, 6, seed=3)
    if count > 1:
        assert all(a != b for a, b in zip(orders[:-1], orders[1:], strict=True))
    if count == 2:
        assert orders[::2] == [orders[0]] * 3 and orders[1::2] == [orders[1]] * 3  # two cases alternate


def test_round_orders_depend_on_the_seed():
    assert round_orders(7, 5, seed=0) != round_orders(7, 5, seed=1)


@pytest.mark.parametrize(("args", "match"), [((-1, 2, 0), "count"), ((2, 0, 0), "repeats"), ((True, 2, 0), "count")])
def test_round_orders_reject_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        round_orders(*args)


def _visit_counter(monkeypatch):
    """Fake bursts: every call of one visit gets the visit's number (1, 2, ...) as its sample."""
    visits = []

    def fake_bursts(fns, calls, repeats, sync):
        visits.append(len(fns))
        return [[float(len(visits))] * repeats for _ in fns]

    monkeypatch.setattr(runner, "interleaved_bursts", fake_bursts)
    monkeypatch.setattr(runner, "time_call", lambda fn, sync: 1e-4)
    return visits


def test_every_round_visits_every_case_once_in_a_seeded_order(monkeypatch):
    visits = _visit_counter(monkeypatch)
    report = run_bench(CASES, [4, 6], BenchSettings(seed=5, **FAST))
    schedule = report.env["schedule"]
    labels = [r.label for r in report.records[::2]]
    assert schedule["scheduling"] == ROUNDS_ACROSS_CASES and schedule["groups"] == [labels]
    assert len(visits) == len(CASES) * FAST["repeats"]
    for r in range(FAST["repeats"]):
        # each case was visited exactly once in round r, and in the order the log gives
        visit_of = {rec.label: rec.samples_ms[r] for rec in report.records}
        assert sorted(visit_of.values()) == [float(r * len(CASES) + i + 1) for i in range(len(CASES))]
        assert sorted(visit_of, key=visit_of.get) == schedule["round_orders"][0][r]
    assert schedule["round_orders"] == [[[labels[i] for i in order] for order in round_orders(4, 3, seed=5)]]
    assert all(rec.samples_ms == rec.sdpa_samples_ms for rec in report.records)  # mixer and SDPA in one visit
    again = run_bench(CASES, [4, 6], BenchSettings(seed=5, **FAST)).env["schedule"]
    other = run_bench(CASES, [4, 6], BenchSettings(seed=6, **FAST)).env["schedule"]
    assert again["round_orders"] == schedule["round_orders"] != other["round_orders"]


def _fixed_bursts(monkeypatch):
    """Fake bursts (the i-th call of a visit takes i + 1 ms), probes (0.1 ms: no size skipped for time) and
    machine-state samples (0.5 ms)."""
    monkeypatch.setattr(runner, "interleaved_bursts",
                        lambda fns, calls, repeats, sync: [[float(i + 1)] * repeats for i in range(len(fns))])
    monkeypatch.setattr(runner, "time_call", lambda fn, sync: 1e-4)
    monkeypatch.setattr(StateProbe, "sample", lambda probe: probe.samples_ms.append(0.5) or 0.5)


def test_records_are_those_of_case_by_case(monkeypatch):
    _fixed_bursts(monkeypatch)
    cases = [*CASES, "window:window_size=4"]
    across = run_bench(cases, [12, 6, 16], BenchSettings(**FAST))
    alone = run_bench(cases, [12, 6, 16], BenchSettings(rounds_across_cases=False, **FAST))
    assert [r.to_dict() for r in across.records] == [r.to_dict() for r in alone.records]
    assert alone.env["schedule"]["scheduling"] == CASE_BY_CASE
    window = [r for r in across.records if r.mixer == "window"]
    assert window[0].skipped.startswith("ValueError")  # 6 x 6 does not take 4 x 4 windows
    assert [(r.median_ms, r.fixed_cost_ms, r.fixed_cost_tokens) for r in window[1:]] == [(1.0, 5.0, 64), (3.0, 5.0, 64)]


def test_skipped_rows_keep_their_reasons_and_their_place(monkeypatch):
    _fixed_bursts(monkeypatch)
    cases = ["window:window_size=3", "softmax", "neighborhood:bogus=1"]
    report = run_bench(cases, [6, 8], BenchSettings(**FAST))
    assert [(r.mixer, r.tokens) for r in report.records] == [
        ("window", 36), ("window", 64), ("softmax", 36), ("softmax", 64), ("neighborhood", 36), ("neighborhood", 64)]
    assert report.records[0].skipped is None and report.records[0].median_ms == 1.0
    assert report.records[1].skipped.startswith("ValueError") and "window_size" in report.records[1].skipped
    assert all(r.skipped.startswith("cannot create mixer: TypeError") for r in report.records[4:])
    assert all(r.median_ms is None and r.sdpa_skipped == "mixer not timed" for r in report.records[4:])
    assert report.env["schedule"]["groups"] == [["window(window_size=3)", "softmax"]]


def test_progress_counts_probes_and_visits_to_the_end(monkeypatch):
    _fixed_bursts(monkeypatch)
    steps, seen = [], []
    report = run_bench(["softmax", "neighborhood:bogus=1", "linear"], [4, 6], BenchSettings(**FAST),
                       on_record=seen.append, on_progress=steps.append)
    total = 3 * (2 + FAST["repeats"])
    assert all(isinstance(s, BenchProgress) and s.total == total for s in steps)
    assert [s.done for s in steps] == sorted({s.done for s in steps}) and steps[-1].done == total
    assert [s.description for s in steps[:2]] == ["probe softmax 4x4", "probe softmax 6x6"]
    assert steps[-1].description.startswith(f"round {FAST['repeats']}/{FAST['repeats']} ")
    assert seen == report.records


def _held(monkeypatch, per_case):
    """Every case keeps ``per_case`` bytes (what it holds, and its prediction before it runs)."""
    monkeypatch.setattr(runner, "nbytes_of", lambda value: per_case)


def test_over_the_memory_budget_the_run_falls_back_to_case_by_case(monkeypatch):
    _fixed_bursts(monkeypatch)
    _held(monkeypatch, 20 * MiB)  # each call's estimate is about 64 MiB (kernel workspace): 20 + 20 + 64 > 90
    events = []
    bursts = runner.interleaved_bursts
    monkeypatch.setattr(runner, "time_call", lambda fn, sync: events.append("probe") or 1e-4)
    monkeypatch.setattr(runner, "interleaved_bursts", lambda *a: events.append(f"bursts x{a[2]}") or bursts(*a))
    settings = BenchSettings(memory_budget=90 * MiB, **FAST)
    report = run_bench(CASES[:3], [4, 6], settings)
    schedule = report.env["schedule"]
    assert schedule["scheduling"] == CASE_BY_CASE and "memory budget 90.0 MiB" in schedule["reason"]
    assert schedule["groups"] == [[label] for label in ("softmax", "neighborhood(kernel_size=3)", "linear")]
    # each case's rounds before the next; SDPA probed at each token count once, with the first case
    assert events == ["probe"] * 4 + (["bursts x1"] * FAST["repeats"] + ["probe"] * 2) * 2 + ["bursts x1"] * 3
    alone = run_bench(CASES[:3], [4, 6], BenchSettings(memory_budget=90 * MiB, rounds_across_cases=False, **FAST))
    assert [r.to_dict() for r in report.records] == [r.to_dict() for r in alone.records]


def test_the_memory_budget_splits_the_rounds_into_groups(monkeypatch):
    _fixed_bursts(monkeypatch)
    _held(monkeypatch, 20 * MiB)  # two cases: 20 + 20 + 64 < 110; a third: 40 + 20 + 64 > 110
    report = run_bench([*CASES, "linear_infsa"], [4, 6], BenchSettings(memory_budget=110 * MiB, **FAST))
    schedule = report.env["schedule"]
    assert schedule["scheduling"] == ROUNDS_ACROSS_CASES and "3 groups" in schedule["reason"]
    assert schedule["groups"] == [["softmax", "neighborhood(kernel_size=3)"], ["linear", "axial"], ["linear_infsa"]]
    assert schedule["held_bytes"] == [40 * MiB, 40 * MiB, 20 * MiB]
    assert [r.mixer for r in report.records[::2]] == ["softmax", "neighborhood", "linear", "axial", "linear_infsa"]
    assert all(64 * MiB < b < 65 * MiB for b in schedule["largest_call_bytes"])


@byte_cached
def _cached_zeros(key: int):
    import torch

    return torch.zeros(256)


def test_a_cache_entry_built_inside_a_timed_burst_is_counted_and_logged(monkeypatch, caplog):
    def fake_bursts(fns, calls, repeats, sync):
        _cached_zeros(len(caplog.records) + id(fns))  # a new entry: as a mask rebuilt inside the burst
        return [[1.0] * repeats for _ in fns]

    monkeypatch.setattr(runner, "interleaved_bursts", fake_bursts)
    log = ScheduleLog()
    with caplog.at_level(logging.WARNING, logger="visattn"):
        records = list(iter_bench(["softmax"], [4], BenchSettings(**FAST), schedule=log))
    _cached_zeros.cache_clear()
    assert records[0].median_ms == 1.0 and log.cache_changes == FAST["repeats"]
    assert "shared cache changed size during 3 timed case visits" in caplog.text


def test_two_mixers_at_two_sizes_end_to_end():
    settings = BenchSettings(time_budget_s=60.0, **{**FAST, "repeats": 2})  # no size skipped on a busy machine
    report = run_bench(["neighborhood:kernel_size=3", "linear"], [8, 12], settings)
    data = json.loads(json.dumps(report.to_dict()))
    schedule = data["environment"]["schedule"]
    assert data["settings"]["rounds_across_cases"] is True and schedule["scheduling"] == ROUNDS_ACROSS_CASES
    assert schedule["cache_changes"] == 0 and len(schedule["round_orders"][0]) == 2
    assert schedule["held_bytes"][0] >= 2 * 4 * 8 * (64 + 144) * 4  # q, k, v, x of both sizes of both mixers
    assert [(r["mixer"], r["tokens"]) for r in data["records"]] == [
        ("neighborhood", 64), ("neighborhood", 144), ("linear", 64), ("linear", 144)]
    for r in data["records"]:
        assert r["skipped"] is None and len(r["samples_ms"]) == len(r["sdpa_samples_ms"]) == 2
        assert r["median_ms"] > 0 and r["ratio_to_sdpa"] > 0 and r["noisy"] in (True, False)
    assert [r["fixed_cost_tokens"] for r in data["records"]] == [None, None, None, None]  # 64 is the smallest size


def _slow_phase(monkeypatch, slow_calls):
    """Fake bursts of a machine whose mixers (not SDPA) run 1.3x slower during the ``slow_calls``-th calls of the
    burst function: mixer bursts 2 ms (2.6 in the slow phase), SDPA 1 ms."""
    calls = []

    def fake_bursts(fns, counts, repeats, sync):
        calls.append(len(fns))
        factor = 1.3 if len(calls) - 1 in slow_calls else 1.0
        return [[2.0 * factor if i % 2 == 0 else 1.0] * repeats for i in range(len(fns))]

    monkeypatch.setattr(runner, "interleaved_bursts", fake_bursts)
    monkeypatch.setattr(runner, "time_call", lambda fn, sync: 1e-4)


def test_a_slow_phase_shorter_than_a_round_leaves_every_ratio_alone(monkeypatch):
    cases = [*CASES, "window:window_size=2", "sliding:window_size=3"]
    settings = BenchSettings(**{**FAST, "repeats": 10})
    _slow_phase(monkeypatch, range(8, 8 + len(cases)))  # as many consecutive visits as one round has
    across = run_bench(cases, [4, 6], settings)
    assert all(r.ratio_to_sdpa == pytest.approx(0.5) for r in across.records)  # at most two rounds of each mixer
    _slow_phase(monkeypatch, range(10, 20))  # the same machine timed case by case: all rounds of the second mixer
    alone = run_bench(cases, [4, 6], BenchSettings(rounds_across_cases=False, **{**FAST, "repeats": 10}))
    assert [r.ratio_to_sdpa for r in alone.records[2:4]] == [pytest.approx(0.5 / 1.3)] * 2
    assert all(r.ratio_to_sdpa == pytest.approx(0.5) for r in alone.records[:2] + alone.records[4:])


def test_a_long_size_takes_every_other_round(monkeypatch):
    """A size whose probe call (of the mixer or of SDPA) lasts two minimum bursts or more is timed in rounds 0, 2,
    4, ... only; the others in every round."""
    probes = iter([1e-4, 1e-4, 1e-4, 0.05] * 2)  # per size: the mixer's probe, then SDPA's; size 6's SDPA is long
    monkeypatch.setattr(runner, "time_call", lambda fn, sync: next(probes))
    widths = []

    def fake_bursts(fns, calls, repeats, sync):
        widths.append(len(fns))
        return [[1.0] for _ in fns]

    monkeypatch.setattr(runner, "interleaved_bursts", fake_bursts)
    for across in (True, False):
        widths.clear()
        settings = BenchSettings(rounds_across_cases=across, **{**FAST, "repeats": 5, "min_sample_s": 0.02})
        short, long = run_bench(["softmax"], [4, 6], settings).records
        assert widths == [4, 2, 4, 2, 4]  # both sizes' mixer and SDPA, then the short size alone
        assert len(short.samples_ms) == len(short.sdpa_samples_ms) == 5
        assert len(long.samples_ms) == len(long.sdpa_samples_ms) == 3 and long.sdpa_calls_per_sample == 1
        # the machine-state probe's sample of each visit in which the size was timed
        assert len(short.state_ms) == 5 and long.state_ms == short.state_ms[::2]


def test_every_visit_takes_one_sample_of_the_machine_state_probe(monkeypatch):
    _fixed_bursts(monkeypatch)
    for across in (True, False):
        report = run_bench(CASES[:2], [4, 6], BenchSettings(rounds_across_cases=across, **FAST))
        visits = 2 * FAST["repeats"]
        assert len(report.env["schedule"]["state_probe_ms"]) == visits
        state = report.env["machine_state"]
        assert state["samples"] == visits and state["p10_ms"] <= state["median_ms"] <= state["p90_ms"]
        samples = report.env["schedule"]["state_probe_ms"]
        for record in report.records:
            assert len(record.state_ms) == len(record.samples_ms) and set(record.state_ms) <= set(samples)
