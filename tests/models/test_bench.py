"""visattn_* models in the model benchmark: the timm counterpart is timed in the same rounds as the baseline."""

from __future__ import annotations

import pytest

from visattn.bench.model import UNMODIFIED, ModelBenchSettings, baseline_labels, run_model_bench
from visattn.models import timm_counterpart

pytestmark = pytest.mark.usefixtures("one_thread")


def test_counterparts_and_baseline_labels():
    assert timm_counterpart("visattn_vit_small_patch16_224") == "vit_small_patch16_224"
    assert timm_counterpart("vit_small_patch16_224") is None
    assert baseline_labels("vit_small_patch16_224") == [UNMODIFIED]
    assert baseline_labels("visattn_vit_tiny_patch16_224") == ["timm vit_tiny_patch16_224",
                                                                "visattn_vit_tiny_patch16_224"]
    with pytest.raises(ValueError, match="registered timm model name"):
        timm_counterpart("visattn_no_such_model")


def test_a_visattn_model_runs_against_its_timm_counterpart():
    settings = ModelBenchSettings(batch=2, repeats=1, min_sample_s=0.0, measure_memory=False, backward=False)
    report = run_model_bench("visattn_vit_tiny_patch16_224", ["softmax", "window:window_size=5"], [32], settings)
    labels = [r.label for r in report.records]
    assert labels == ["timm vit_tiny_patch16_224", "visattn_vit_tiny_patch16_224", "softmax", "window(window_size=5)"]
    first, ours, softmax, window = report.records
    assert first.ratio_to_unmodified == 1.0 and first.grid == [2, 2] and first.tokens == 5
    assert ours.ratio_to_unmodified == pytest.approx(first.median_ms / ours.median_ms)
    assert softmax.skipped is None and softmax.images_per_s > 0
    assert "window_size" in window.skipped and window.median_ms is None
