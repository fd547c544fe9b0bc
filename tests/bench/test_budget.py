"""Memory estimates, budgets and the skip reasons for memory and time."""

import pytest
import torch

import visattn
from visattn import masks
from visattn.bench import estimate_memory_bytes, format_bytes, parse_bytes
from visattn.bench.budget import (
    WORKSPACE_BYTES,
    default_memory_budget,
    measured_time_skip_reason,
    memory_skip_reason,
    predict_memory_bytes,
    predict_seconds,
    predicted_time_skip_reason,
    sdpa_memory_bytes,
)
from visattn.nn import MaskedMixer


@pytest.mark.parametrize(
    "text, expected",
    [("4096", 4096), ("1K", 1024), ("512m", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("3 MB", 3 << 20)],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1", "0", "1.5Q", "0.0001"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError, match="memory budget"):
        parse_bytes(text)


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1024) == "1.0 KiB"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 << 20) == "3.0 MiB"
    assert format_bytes(5 << 40) == "5120.0 GiB"


def test_default_memory_budget_is_positive():
    assert default_memory_budget() > 0


def test_sdpa_needs_inputs_and_outputs_only():
    b, h, n, d, item = 2, 3, 100, 8, 4
    assert sdpa_memory_bytes(b, h, n, d, item, backward=False) == 4 * b * h * n * d * item + WORKSPACE_BYTES
    assert sdpa_memory_bytes(b, h, n, d, item, backward=True) == 12 * b * h * n * d * item + WORKSPACE_BYTES
    softmax = visattn.create_mixer("softmax")
    assert estimate_memory_bytes(softmax, b, h, n, d, item, False, n * n) == sdpa_memory_bytes(b, h, n, d, item, False)


class _ParityMask(masks.Mask):
    """Tokens see tokens of the same index parity: a mask type no fast path is registered for."""

    def _spatial_mod(self, shape):
        return lambda q_idx, kv_idx: (q_idx - kv_idx) % 2 == 0


@pytest.mark.parametrize("backward", [False, True])
def test_mixer_without_fast_path_is_bounded_by_dense_scores(backward):
    b, h, n, d, item = 1, 4, 256, 16, 8
    mixer = MaskedMixer(_ParityMask())
    io = sdpa_memory_bytes(b, h, n, d, item, backward)
    scores = (2 if backward else 1) * 2 * b * h * n * n * item
    pairs = masks.pair_count(mixer.mask, (16, 16))
    assert pairs == n * n // 2
    assert estimate_memory_bytes(mixer, b, h, n, d, item, backward, pairs) == io + n * n * (1 + item) + scores


def test_mixer_without_mask_is_bounded_by_dense_scores():
    b, h, n, d, item = 2, 2, 100, 8, 4
    dense = sdpa_memory_bytes(b, h, n, d, item, False) + n * n * (1 + item) + 2 * b * h * n * n * item
    assert estimate_memory_bytes(object(), b, h, n, d, item, False, None) == dense


def test_mixer_with_a_structured_engine_needs_attended_pair_scores():
    b, h, n, d, item = 2, 2, 64, 8, 4
    mixer = MaskedMixer(masks.SlidingWindowMask(3))  # each token sees itself and one neighbour on each side
    pairs = masks.pair_count(mixer.mask, (n,))
    assert pairs == 3 * n - 2
    expected = sdpa_memory_bytes(b, h, n, d, item, False) + 2 * b * h * pairs * item
    assert estimate_memory_bytes(mixer, b, h, n, d, item, False, pairs) == expected
    assert expected < estimate_memory_bytes(MaskedMixer(_ParityMask()), b, h, n, d, item, False, pairs)


def test_memory_skip_reason():
    assert memory_skip_reason(100, 100) is None
    reason = memory_skip_reason(3 << 20, 1 << 20)
    assert reason == "estimated memory 3.0 MiB > memory budget 1.0 MiB"


def test_predict_seconds_is_quadratic_from_the_largest_smaller_size():
    history = [(100, 1.0), (400, 4.0), (1600, 20.0)]
    assert predict_seconds(history, 800) == (400, pytest.approx(16.0))
    assert predict_seconds(history, 3200) == (1600, pytest.approx(80.0))
    assert predict_seconds(history, 100) is None
    assert predict_seconds([], 100) is None


def test_predict_memory_fits_a_clamped_power_law():
    assert predict_memory_bytes([], 100) is None
    assert predict_memory_bytes([(100, 1000)], 100) is None
    assert predict_memory_bytes([(100, 1000)], 200) == 4000  # one point: quadratic
    linear = [(100, 1000), (200, 2000), (400, 4000)]
    assert predict_memory_bytes(linear, 800) == 8000
    cubic = [(100, 1000), (200, 8000)]
    assert predict_memory_bytes(cubic, 400) == 32000  # exponent clamped to 2
    flat = [(100, 1000), (200, 1000)]
    assert predict_memory_bytes(flat, 400) == 2000  # exponent clamped to 1
    assert predict_memory_bytes([(100, 0), (50, 10)], 200) == 160  # zero peaks are ignored


def test_predicted_time_skip_reason():
    history = [(1024, 0.5)]
    assert predicted_time_skip_reason(history, 2048, budget_s=2.0) is None
    reason = predicted_time_skip_reason(history, 4096, budget_s=2.0)
    assert reason is not None and "predicted 8.0 s per call" in reason and "N=1024" in reason
    assert predicted_time_skip_reason([], 10**9, budget_s=1e-9) is None


def test_measured_time_skip_reason():
    assert measured_time_skip_reason(0.5, 1.0) is None
    assert measured_time_skip_reason(2.25, 1.0) == "a call took 2.2 s after warm-up > time budget 1 s"


def test_estimate_scales_with_dtype_itemsize():
    mixer = visattn.create_mixer("neighborhood", kernel_size=3)
    args = (1, 2, 64, 8)
    small = estimate_memory_bytes(mixer, *args, torch.bfloat16.itemsize, False, 576)
    large = estimate_memory_bytes(mixer, *args, torch.float64.itemsize, False, 576)
    assert large > small
