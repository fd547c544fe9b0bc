"""Report JSON, fitted exponents per mixer and for SDPA, and the log-log plot."""

import json

import pytest

from visattn.bench import BenchRecord, BenchReport, BenchSettings, plot_report
from visattn.bench.record import exponent_fits, exponents_by_label, log_log_fits, sdpa_exponent, sdpa_times


def _record(label, tokens, median_ms, sdpa_ms=None):
    return BenchRecord(label.split("(")[0], label, {}, [tokens], tokens, 0, 1, 8, 1, "float32", "cpu", False, 3,
                       median_ms=median_ms, sdpa_median_ms=sdpa_ms)


def _synthetic_report():
    records = []
    for n in (256, 1024, 4096):
        records.append(_record("dense", n, 1e-5 * n**2, sdpa_ms=0.5e-5 * n**2))
        records.append(_record("local", n, 1e-3 * n, sdpa_ms=0.7e-5 * n**2))
        records.append(_record("never", n, None))
    return BenchReport(BenchSettings(), records)


def test_exponents_from_synthetic_timings():
    report = _synthetic_report()
    exponents = exponents_by_label(report.records)
    assert exponents["dense"] == pytest.approx(2.0)
    assert exponents["local"] == pytest.approx(1.0)
    assert exponents["never"] is None
    assert list(exponents) == ["dense", "local", "never"]


def test_sdpa_time_is_the_median_over_records_at_each_size():
    report = _synthetic_report()
    times = sdpa_times(report.records)
    assert list(times) == [256, 1024, 4096]
    assert times[1024] == pytest.approx(0.6e-5 * 1024**2)
    assert sdpa_exponent(report.records) == pytest.approx(2.0)
    assert sdpa_exponent([]) is None


def test_json_round_trip(tmp_path):
    report = _synthetic_report()
    report.records[0].kwargs = {"kernel_size": (3, 5), "rule": "code"}
    path = tmp_path / "report.json"
    report.write_json(path)
    data = json.loads(path.read_text())
    assert set(data) == {"environment", "settings", "records", "exponents", "sdpa_exponent", "exponent_fits",
                         "log_log_exponent_fits", "sdpa_exponent_fit", "fit_rule", "noisy_records"}
    assert data["exponent_fits"]["local"] == {"alpha": pytest.approx(1.0), "stderr": pytest.approx(0.0, abs=1e-9),
                                              "points": 3, "sound": True, "fixed_ms": None, "fixed_tokens": None}
    assert data["log_log_exponent_fits"]["local"] == data["exponent_fits"]["local"]
    assert data["exponent_fits"]["never"] is None and data["sdpa_exponent_fit"]["points"] == 3
    assert data["fit_rule"] == {"min_points": 3, "max_stderr": 0.1}
    assert data["records"][0]["kwargs"] == {"kernel_size": [3, 5], "rule": "code"}
    assert data["settings"]["heads"] == 4 and data["environment"]["torch_threads"] >= 1
    assert len(data["records"]) == 9 and data["records"][2]["median_ms"] is None


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "plot.png"
    plot_report(_synthetic_report(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_a_report_with_nothing_timed(tmp_path):
    path = tmp_path / "empty.png"
    plot_report(BenchReport(BenchSettings(), [_record("never", 64, None)]), path)
    assert path.stat().st_size > 0


def test_exponent_of_the_work_above_a_timed_fixed_cost():
    # 0.1 ms per call plus work linear in N: the log-log slope bends below 1, the fit above the fixed cost does not
    records = [_record("window", n, 0.1 + 2e-4 * (n - 64)) for n in (1024, 2304, 4096)]
    for r in records:
        r.fixed_cost_tokens, r.fixed_cost_ms = 64, 0.1
    report = BenchReport(BenchSettings(), records)
    assert exponents_by_label(records)["window"] == pytest.approx(1.0)
    plain = log_log_fits(records)["window"]
    assert plain.alpha < 0.9 and plain.fixed_ms is None
    data = report.to_dict()
    assert data["exponent_fits"]["window"]["fixed_ms"] == 0.1 and data["exponent_fits"]["window"]["fixed_tokens"] == 64
    assert data["log_log_exponent_fits"]["window"]["alpha"] == pytest.approx(plain.alpha)


def test_plain_fit_where_the_fixed_cost_is_not_below_every_time():
    records = [_record("odd", n, t) for n, t in ((1024, 0.2), (2304, 0.5), (4096, 1.0))]
    for r in records:
        r.fixed_cost_tokens, r.fixed_cost_ms = 64, 0.3  # above the first time: not separable
    assert exponent_fits(records)["odd"] == log_log_fits(records)["odd"]
