"""The benchmark runner: records, consistency of derived fields, and skips instead of crashes."""

import json
import math
import time

import numpy as np
import pytest
import torch

import visattn
from bench_fakes import hodges_lehmann, per_round
from visattn.bench import BenchCase, BenchSettings, estimate_memory_bytes, iter_bench, run_bench, runner
from visattn.bench.budget import predict_memory_bytes
from visattn.bench.runner import _measure, _prepare, _Prepared, default_cases
from visattn.nn import TokenMixer

FAST = {"repeats": 2, "measure_memory": False, "min_sample_s": 0.0}


def test_records_are_consistent():
    settings = BenchSettings(heads=2, head_dim=8, batch=2, measure_memory=True, repeats=3, min_sample_s=0.0)
    seen = []
    report = run_bench(["softmax", "neighborhood:kernel_size=3", "sliding:window_size=5"], [6, 4], settings,
                       on_record=seen.append)
    assert seen == report.records
    assert [(r.label, r.tokens) for r in report.records] == [
        ("softmax", 16), ("softmax", 36), ("neighborhood(kernel_size=3)", 16), ("neighborhood(kernel_size=3)", 36),
        ("sliding(window_size=5)", 16), ("sliding(window_size=5)", 36),
    ]
    for r in report.records:
        assert r.skipped is None and r.sdpa_skipped is None
        assert r.tokens == math.prod(r.shape)
        mixer = visattn.create_mixer(r.mixer, **r.kwargs)
        pairs = r.tokens**2 if r.mixer == "softmax" else visattn.masks.pair_count(mixer.mask, tuple(r.shape))
        assert r.attended_pairs == pairs
        assert r.density == pytest.approx(pairs / r.tokens**2)
        assert r.flops == 4 * pairs * 8 * 2 * 2
        assert r.gflops == pytest.approx(r.flops / (r.median_ms * 1e6))
        ratios = [b / a for a, b in zip(r.samples_ms, r.sdpa_samples_ms, strict=True)]
        assert r.ratio_to_sdpa == pytest.approx(hodges_lehmann(ratios))
        assert min(ratios) <= r.ratio_to_sdpa <= max(ratios) and r.ratio_p25 <= np.median(ratios) <= r.ratio_p75
        assert r.sdpa_gflops == pytest.approx(4 * r.tokens**2 * 8 * 2 * 2 / (r.sdpa_median_ms * 1e6))
        assert r.min_ms <= r.p25_ms <= r.median_ms <= r.p75_ms <= r.max_ms
        assert r.spread_ms == pytest.approx(r.p75_ms - r.p25_ms)
        assert r.peak_memory_bytes > 0 and r.sdpa_peak_memory_bytes > 0
    assert report.records[4].shape == [16] and report.records[2].shape == [4, 4]
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data["exponents"]) == {"softmax", "neighborhood(kernel_size=3)", "sliding(window_size=5)"}
    assert all(e is None for e in data["exponents"].values())  # two sizes: no error estimate, no exponent
    assert data["sdpa_exponent"] is None
    assert all(f["points"] == 2 and f["stderr"] is None and isinstance(f["alpha"], float)
               for f in data["exponent_fits"].values())


def test_backward_counts_three_times_the_forward_flops():
    settings = BenchSettings(heads=1, head_dim=4, backward=True, **FAST)
    (r,) = run_bench(["neighborhood:kernel_size=3"], [5], settings).records
    assert r.skipped is None and r.backward
    assert r.flops == 3 * 4 * r.attended_pairs * 4


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_dtypes_run(dtype):
    (r,) = run_bench(["window:window_size=2"], [4], BenchSettings(dtype=dtype, **FAST)).records
    assert r.skipped is None and r.dtype == dtype and r.median_ms > 0


def test_memory_budget_skips_with_the_reason():
    report = run_bench(["softmax", "neighborhood"], [8], BenchSettings(memory_budget=1024, **FAST))
    for r in report.records:
        assert r.skipped.startswith("estimated memory") and "memory budget 1.0 KiB" in r.skipped
        assert r.median_ms is None and r.ratio_to_sdpa is None and r.gflops is None
        assert r.estimated_memory_bytes > 1024
        assert r.attended_pairs is not None


def test_sdpa_baseline_is_skipped_separately():
    settings = BenchSettings(time_budget_s=10.0, **FAST)
    sdpa_history = [(1, 1.0)]  # predicts 64^2 s for dense SDPA at 64 tokens
    record = _measure(_prepare(BenchCase("neighborhood", {"kernel_size": 3}), settings), 8, settings, [],
                      sdpa_history, [])
    assert record.skipped is None and record.median_ms > 0 and record.gflops > 0
    assert record.sdpa_skipped.startswith("predicted 4096.0 s per call")
    assert record.sdpa_median_ms is None and record.ratio_to_sdpa is None and record.sdpa_gflops is None


def test_mixer_skip_skips_the_baseline():
    (r,) = run_bench(["window:window_size=4"], [17], BenchSettings(**FAST)).records
    assert r.skipped is not None and r.sdpa_skipped == "mixer not timed" and r.sdpa_median_ms is None


def test_memory_estimate_follows_measured_peaks():
    settings = BenchSettings(repeats=1, measure_memory=True, min_sample_s=0.0)
    records = run_bench(["axial"], [8, 12, 16], settings).records
    assert all(r.skipped is None and r.peak_memory_bytes > 0 for r in records)
    mixer = visattn.create_mixer("axial")
    for i, r in enumerate(records):
        dense = estimate_memory_bytes(mixer, 1, 4, r.tokens, 32, 4, False, r.attended_pairs)
        measured = [(p.tokens, p.peak_memory_bytes) for p in records[:i]]
        predicted = predict_memory_bytes(measured, r.tokens)
        inputs = 4 * 4 * 32 * r.tokens * 4  # q, k, v and the layer input x
        assert r.estimated_memory_bytes == (dense if predicted is None else min(dense, inputs + predicted))


def test_time_budget_skips_after_the_first_call():
    (r,) = run_bench(["softmax"], [8], BenchSettings(time_budget_s=1e-9, **FAST)).records
    assert r.skipped.startswith("a call took") and r.median_ms is None


def test_time_budget_skips_predicted_sizes():
    settings = BenchSettings(time_budget_s=1e-9, **FAST)
    history = [(16, 1e-3)]
    record = _measure(_prepare(BenchCase("softmax"), settings), 8, settings, history, [], [])
    assert record.skipped.startswith("predicted") and record.median_ms is None


def test_rejected_grids_and_bad_arguments_are_skipped_not_raised():
    records = list(iter_bench(["window:window_size=3", BenchCase("neighborhood", {"bogus": 1})], [8],
                              BenchSettings(**FAST)))
    assert records[0].skipped.startswith("ValueError") and "window_size" in records[0].skipped
    assert records[1].skipped.startswith("cannot create mixer: TypeError") and "bogus" in records[1].skipped
    assert records[1].kwargs == {"bogus": 1}


def test_explicit_shapes_and_prefix_tokens():
    settings = BenchSettings(num_prefix_tokens=2, **FAST)
    (r,) = run_bench(["neighborhood:kernel_size=3"], [(3, 4, 5)], settings).records
    assert r.shape == [3, 4, 5] and r.tokens == 62 and r.num_prefix_tokens == 2
    mixer = visattn.create_mixer("neighborhood", kernel_size=3)
    assert r.attended_pairs == visattn.masks.pair_count(mixer.mask, (3, 4, 5), 2)


def test_default_cases_come_from_the_registry():
    assert [c.name for c in default_cases()] == visattn.list_mixers()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [({"cases": []}, ValueError, "cases"), ({"sizes": []}, ValueError, "sizes"),
     ({"sizes": [0]}, ValueError, "side"), ({"cases": [3]}, TypeError, "cases"),
     ({"settings": {"heads": 2}}, TypeError, "settings")],
)
def test_bad_arguments(kwargs, error, match):
    args = {"cases": ["softmax"], "sizes": [4], "settings": BenchSettings(**FAST), **kwargs}
    with pytest.raises(error, match=match):
        list(iter_bench(**args))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"heads": 0}, "heads"), ({"repeats": 1.5}, "repeats"), ({"warmup": 0}, "warmup"), ({"dtype": "int8"}, "dtype"),
     ({"device": "gpu0"}, "device"), ({"time_budget_s": 0}, "time_budget_s"), ({"memory_budget": 0}, "memory"),
     ({"num_prefix_tokens": -1}, "num_prefix_tokens")],
)
def test_settings_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BenchSettings(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_settings_reject_an_absent_cuda_device():
    with pytest.raises(ValueError, match="device must be available"):
        BenchSettings(device="cuda")


def test_settings_reject_non_bool_flags():
    with pytest.raises(TypeError, match="backward"):
        BenchSettings(backward=1)


class _InputMixer(TokenMixer):
    """Records what the benchmark passes: the layer input ``x`` and whether gradients are being taken."""

    uses_input = True

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, q, k, v, shape, attn_mask=None, x=None):
        self.seen.append((tuple(x.shape), x.dtype, torch.is_grad_enabled()))
        return v * self.weight + x.sum()


@pytest.mark.parametrize("backward", [False, True])
def test_mixers_that_use_the_layer_input_get_x(backward):
    settings = BenchSettings(heads=2, head_dim=4, batch=3, num_prefix_tokens=1, backward=backward,
                             dtype="float64", **FAST)
    mixer = _InputMixer()
    prepared = _Prepared(BenchCase("softmax"), mixer, {}, None, "2d", per_grid=False)
    record = _measure(prepared, 3, settings, [], [], [])
    assert record.skipped is None and record.attended_pairs is None and record.gflops is None
    assert record.ratio_to_sdpa > 0
    assert set(mixer.seen) == {((3, 10, 8), torch.float64, backward)}
    assert len(mixer.seen) == settings.warmup + 1 + settings.repeats  # warm-up, probe, one call per sample


class _SlowFirstCall(TokenMixer):
    """Sleeps on its first call (as a kernel build would), then is fast."""

    def __init__(self, first_s):
        super().__init__()
        self.first_s, self.calls = first_s, 0

    def forward(self, q, k, v, shape, attn_mask=None):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.first_s)
        return v


def _measure_one(mixer, settings, size=4):
    return _measure(_Prepared(BenchCase("softmax"), mixer, {}, None, "2d", per_grid=False), size, settings, [], [],
                    [])


def test_warm_up_counts_against_no_budget():
    settings = BenchSettings(time_budget_s=0.2, **FAST)
    record = _measure_one(_SlowFirstCall(0.3), settings)
    assert record.skipped is None and record.median_ms < 200


def test_native_kernels_are_built_before_anything_is_timed(monkeypatch):
    events = []
    monkeypatch.setattr(runner, "prebuild_native_kernels", lambda: events.append("prebuild") or {})
    timed = runner.time_call
    monkeypatch.setattr(runner, "time_call", lambda fn, sync: events.append("probe") or timed(fn, sync))
    bursts = runner.interleaved_bursts
    monkeypatch.setattr(runner, "interleaved_bursts", lambda *a: events.append("bursts") or bursts(*a))
    run_bench(["softmax", "neighborhood:kernel_size=3"], [4, 5], BenchSettings(**FAST))
    assert events[0] == "prebuild" and events.count("prebuild") == 1
    # every mixer's probe at each size and SDPA's at each token count, then the rounds across mixers: one visit per
    # mixer and round
    assert events[1:] == ["probe"] * 6 + ["bursts"] * 2 * FAST["repeats"]
    events.clear()
    run_bench(["softmax", "neighborhood:kernel_size=3"], [4, 5], BenchSettings(rounds_across_cases=False, **FAST))
    # case by case: per mixer, its probes, then the bursts of both sizes in the same rounds
    assert events[1:] == ["probe"] * 4 + ["bursts"] * FAST["repeats"] + ["probe"] * 2 + ["bursts"] * FAST["repeats"]


def test_bursts_are_sized_by_the_probe_and_interleaved_with_sdpa(monkeypatch):
    seen = {}

    def fake_bursts(fns, calls, repeats, sync):
        seen.update(fns=len(fns), calls=calls, repeats=repeats, rounds=seen.get("rounds", 0) + 1)
        return [[1.0] * repeats, [2.0] * repeats]

    monkeypatch.setattr(runner, "time_call", lambda fn, sync: 0.004)
    monkeypatch.setattr(runner, "interleaved_bursts", fake_bursts)
    settings = BenchSettings(repeats=4, min_sample_s=0.1, measure_memory=False)
    record = _measure_one(_SlowFirstCall(0.0), settings)
    assert seen == {"fns": 2, "calls": [25, 25], "repeats": 1, "rounds": 4}  # one burst of each per round
    assert record.calls_per_sample == record.sdpa_calls_per_sample == 25
    assert record.samples_ms == [1.0] * 4 and record.sdpa_samples_ms == [2.0] * 4
    assert record.ratio_to_sdpa == 2.0 and record.noisy is False


@pytest.mark.parametrize(("mixer_ms", "sdpa_ms", "limit", "noisy"), [
    ([10.0, 10.0, 10.0, 10.0, 10.0], [10.0, 10.0, 10.0, 10.0, 10.0], 0.25, False),
    ([8.0, 9.0, 10.0, 11.0, 12.0], [16.0, 18.0, 20.0, 22.0, 24.0], 0.01, False),  # drift cancels in the ratios
    ([8.0, 10.0, 10.0, 10.0, 12.0], [10.0, 10.0, 10.0, 10.0, 10.0], 0.0, False),  # ratios 1.25 1 1 1 .83: IQR 0
    ([8.0, 9.0, 10.0, 11.0, 12.0], [10.0, 10.0, 10.0, 10.0, 10.0], 0.2, True),  # ratios IQR 0.202 of 1
    ([10.0, 10.0, 10.0, 10.0, 10.0], [10.0, 10.0, 20.0, 30.0, 40.0], 0.25, True),  # ratios IQR 2 = 100% of 2
])
def test_spread_flag_is_on_the_paired_ratios(monkeypatch, mixer_ms, sdpa_ms, limit, noisy):
    monkeypatch.setattr(runner, "interleaved_bursts", per_round(mixer_ms, sdpa_ms))
    settings = BenchSettings(spread_limit=limit, **{**FAST, "repeats": 5})
    record = _measure_one(_SlowFirstCall(0.0), settings)
    assert record.noisy is noisy
    ratios = np.asarray(sdpa_ms) / np.asarray(mixer_ms)
    p25, median, p75 = np.percentile(ratios, [25, 50, 75])
    assert record.ratio_to_sdpa == pytest.approx(hodges_lehmann(ratios))
    assert record.ratio_relative_spread == pytest.approx((p75 - p25) / median)
    assert record.relative_spread == pytest.approx((np.percentile(mixer_ms, 75) - np.percentile(mixer_ms, 25))
                                                   / np.median(mixer_ms))
    assert record.sdpa_relative_spread == pytest.approx((np.percentile(sdpa_ms, 75) - np.percentile(sdpa_ms, 25))
                                                        / np.median(sdpa_ms))


def test_sizes_of_a_case_share_rounds(monkeypatch):
    seen = {}

    def fake_bursts(fns, calls, repeats, sync):
        seen["fns"] = len(fns)
        return [[float(i + 1)] * repeats for i in range(len(fns))]

    monkeypatch.setattr(runner, "interleaved_bursts", fake_bursts)
    records = run_bench(["neighborhood:kernel_size=3"], [4, 5, 6], BenchSettings(**FAST)).records
    assert seen["fns"] == 6  # mixer and SDPA at three sizes, one set of rounds
    assert [(r.median_ms, r.sdpa_median_ms, r.ratio_to_sdpa) for r in records] == [
        (1.0, 2.0, 2.0), (3.0, 4.0, 4.0 / 3.0), (5.0, 6.0, 6.0 / 5.0)]


def test_spread_flag_without_a_baseline(monkeypatch):
    monkeypatch.setattr(runner, "interleaved_bursts", per_round([1.0, 1.0, 3.0]))
    settings = BenchSettings(**{**FAST, "repeats": 3})
    prepared = _Prepared(BenchCase("softmax"), _SlowFirstCall(0.0), {}, None, "2d", per_grid=False)
    record = _measure(prepared, 8, settings, [], [(1, 1.0)], [])  # SDPA predicted far over the time budget
    assert record.sdpa_skipped.startswith("predicted") and record.noisy is True and record.ratio_to_sdpa is None


def test_calibrated_mixers_are_calibrated_per_size():
    """PARO is calibrated on each size's own q, k; all sizes are probed before their shared rounds, so each size
    keeps its own calibrated copy (one shared mixer ended calibrated for the last size only)."""
    records = run_bench(["paro:block=4"], [8, 12], BenchSettings(**FAST)).records
    assert [r.skipped for r in records] == [None, None]
    assert all(r.median_ms > 0 and r.ratio_to_sdpa > 0 for r in records)


def test_fixed_cost_is_timed_on_the_tiny_grid_in_the_same_rounds():
    report = run_bench(["window:window_size=4"], [12, 16], BenchSettings(heads=1, head_dim=8, **FAST))
    for r in report.records:
        assert r.fixed_cost_tokens == 64 and r.fixed_cost_ms > 0
    (small,) = run_bench(["window:window_size=4"], [8], BenchSettings(heads=1, head_dim=8, **FAST)).records
    assert small.fixed_cost_ms is None  # the tiny grid is not smaller than the only size


def test_sdpa_is_probed_once_per_token_count_and_shared_by_the_cases(monkeypatch):
    profiled = []
    measure = runner.peak_memory_bytes
    monkeypatch.setattr(runner, "peak_memory_bytes", lambda call, dev: profiled.append(call) or measure(call, dev))
    settings = BenchSettings(**{**FAST, "measure_memory": True})
    records = run_bench(["softmax", "neighborhood:kernel_size=3", "linear"], [4, 5], settings).records
    assert len(profiled) == 3 * 2 + 2  # every mixer at every size, SDPA at each of the two token counts
    for tokens in (16, 25):
        same = [r for r in records if r.tokens == tokens]
        assert len({r.sdpa_peak_memory_bytes for r in same}) == 1 and same[0].sdpa_peak_memory_bytes > 0
        assert len({r.sdpa_calls_per_sample for r in same}) == 1 and all(r.sdpa_median_ms > 0 for r in same)


@pytest.mark.parametrize(("calls", "seconds", "timed"), [
    ([0.1], 0.1, 1),  # within a tenth of the budget: one probe call
    ([3.0, 1.5, 0.1], 0.1, 3),  # a heap still growing: the third call is the mixer's time
    ([3.0, 2.9], 2.9, 2),  # settled within 10%, over the budget: skipped
    ([0.5, 0.3, 0.29], 0.29, 3),
])
def test_a_long_probe_call_is_timed_again_until_it_settles(monkeypatch, calls, seconds, timed):
    times = iter(calls)
    monkeypatch.setattr(runner, "time_call", lambda fn, sync: next(times))
    warm = []
    got, reason = runner._warm_up_and_probe(lambda: warm.append(1), lambda: None, 1, 2.0)
    assert warm == [1] and len(calls) - sum(1 for _ in times) == timed
    assert (got, reason) == ((None, f"a call took {seconds:.1f} s after warm-up > time budget 2 s") if seconds > 2
                             else (seconds, None))
