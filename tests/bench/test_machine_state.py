"""The machine-state probe: it runs on any device, sizes its burst, and its summary tells one speed from two."""

import pytest
import torch

from visattn.bench import StateProbe, state_note, state_summary
from visattn.bench.machine_state import LEVELS_RATIO, MIN_SAMPLES, probe_call


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_the_probe_runs_on_the_device(device):
    assert probe_call(torch.device(device))() is None


def test_the_probe_sizes_its_burst_and_keeps_every_sample():
    probe = StateProbe.create(torch.device("cpu"))
    assert probe.count >= 1 and probe.samples_ms == []
    first, second = probe.sample(), probe.sample()
    assert probe.samples_ms == [first, second] and first > 0 and second > 0


def test_two_speeds_are_a_change_and_one_speed_with_noise_is_not():
    two = [0.47, 0.48, 0.46, 1.05, 1.1, 1.02, 0.49, 1.08, 1.04, 0.47] * 2
    one = [1.0, 1.1, 1.05, 1.2, 0.98, 1.15, 1.02, 1.08, 1.3, 1.01] * 2
    assert state_summary(two)["changed"] is True and state_summary(one)["changed"] is False
    summary = state_summary(one)
    assert summary["samples"] == 20 and summary["p10_ms"] <= summary["median_ms"] <= summary["p90_ms"]
    assert state_summary(two[:MIN_SAMPLES - 1])["changed"] is False  # two speeds, but too few samples
    assert state_summary([1.0] * 10 + [LEVELS_RATIO * 0.99] * 10)["changed"] is False  # just below the ratio


def test_no_samples_say_nothing():
    assert state_summary([]) == {"samples": 0, "median_ms": None, "p10_ms": None, "p90_ms": None, "changed": False}
    assert state_note(state_summary([])) == ""


def test_the_note_warns_only_where_the_machine_changed_speed():
    steady = state_note(state_summary([1.0] * 10))
    assert steady.startswith("machine state probe: median 1.000 ms") and "changed speed" not in steady
    changed = state_note(state_summary([0.5] * 5 + [1.0] * 5))
    assert "changed speed during this run" in changed and "--threads 1" in changed
