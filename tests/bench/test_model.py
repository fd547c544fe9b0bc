"""Model-level benchmark on a tiny ViT (timm's vit_tiny at 32 and 64 pixels: 2x2 and 4x4 patch grids): records,
ratios to the unmodified model, skips with reasons, JSON and plot. Times are not checked, only their fields."""

import json

import pytest

from visattn.bench import model as model_bench
from visattn.bench.model import UNMODIFIED, ModelBenchSettings, run_model_bench
from visattn.bench.plot import plot_model_report

TINY = "vit_tiny_patch16_224"
FAST = {"batch": 1, "repeats": 1, "min_sample_s": 0.0, "measure_memory": False, "time_budget_s": 1e6}  # no time skips


@pytest.fixture(scope="module")
def report():
    return run_model_bench(TINY, ["softmax", "window:window_size=2", "window"], [64, 32], ModelBenchSettings(**FAST))


def test_records_cover_every_variant_size_and_mode(report):
    keys = [(r.label, r.img_size, r.mode) for r in report.records]
    labels = [UNMODIFIED, "softmax", "window(window_size=2)", "window"]
    assert keys == [(label, size, mode) for size in (32, 64) for mode in ("forward", "forward+backward")
                    for label in labels]


def test_timed_records_are_consistent(report):
    for r in report.records:
        assert r.model == TINY and r.batch == 1
        side = r.img_size // 16
        assert r.grid == [side, side] and r.tokens == side * side + 1  # the class token
        if r.label == "window":
            continue
        assert r.skipped is None
        assert r.images_per_s == pytest.approx(1e3 / r.median_ms)
        assert r.p25_ms <= r.median_ms <= r.p75_ms and r.samples_ms == [r.median_ms] and r.calls_per_sample == 1
        base = next(b for b in report.records if b.label == UNMODIFIED and (b.img_size, b.mode) == (r.img_size, r.mode))
        assert r.ratio_to_unmodified == pytest.approx(base.median_ms / r.median_ms)
        assert r.noisy is False and r.peak_memory_bytes is None
    assert all(r.ratio_to_unmodified == 1.0 for r in report.records if r.label == UNMODIFIED)


def test_a_mixer_that_cannot_take_the_grid_is_skipped_with_the_reason(report):
    for r in report.records:
        if r.label == "window":
            assert r.skipped.startswith(("cannot replace the attention: ValueError", "ValueError"))
            assert "window_size" in r.skipped and r.median_ms is None and r.ratio_to_unmodified is None


def test_json_and_plot(report, tmp_path):
    path = tmp_path / "model.json"
    report.write_json(path)
    data = json.loads(path.read_text())
    assert data["kind"] == "model" and data["model"] == TINY and data["settings"]["batch"] == 1
    assert len(data["records"]) == 16 and data["noisy_records"] == 0
    assert set(data["records"][0]) >= {"label", "mixer", "kwargs", "img_size", "grid", "tokens", "mode", "median_ms",
                                       "images_per_s", "ratio_to_unmodified", "peak_memory_bytes", "noisy", "skipped"}
    assert data["records"][2]["kwargs"] == {"window_size": 2}
    plot_model_report(report, tmp_path / "model.png")
    assert (tmp_path / "model.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_variants_are_interleaved_in_one_round(monkeypatch):
    seen = []

    def fake_bursts(fns, calls, repeats, sync):
        seen.append(len(fns))
        return [[float(i + 1)] * repeats for i in range(len(fns))]

    monkeypatch.setattr(model_bench, "interleaved_bursts", fake_bursts)
    settings = ModelBenchSettings(backward=False, **FAST)
    records = run_model_bench(TINY, ["softmax", "window:window_size=2"], [32], settings).records
    assert seen == [3]  # the unmodified model and both mixers in the same rounds
    assert [r.ratio_to_unmodified for r in records] == [1.0, 0.5, pytest.approx(1 / 3)]


def test_peak_memory_is_measured():
    settings = ModelBenchSettings(**{**FAST, "measure_memory": True, "backward": False})
    records = run_model_bench(TINY, ["softmax"], [32], settings).records
    assert all(r.peak_memory_bytes > 0 for r in records)


@pytest.mark.parametrize(("args", "error", "match"), [
    ({"model": "no_such_model"}, ValueError, "timm model name"),
    ({"img_sizes": [0]}, ValueError, "img_sizes"),
    ({"img_sizes": []}, ValueError, "img_sizes"),
    ({"mixers": [3]}, TypeError, "mixers"),
    ({"mixers": ["no_such_mixer"]}, ValueError, "no_such_mixer"),
    ({"settings": {"batch": 1}}, TypeError, "settings"),
])
def test_bad_arguments(args, error, match):
    kwargs = {"model": TINY, "mixers": ["softmax"], "img_sizes": [32], "settings": ModelBenchSettings(**FAST), **args}
    with pytest.raises(error, match=match):
        run_model_bench(**kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [({"batch": 0}, "batch"), ({"repeats": 1.5}, "repeats"),
                                               ({"min_sample_s": -1.0}, "min_sample_s"),
                                               ({"time_budget_s": 0.0}, "time_budget_s"), ({"dtype": "int8"}, "dtype")])
def test_settings_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelBenchSettings(**kwargs)
