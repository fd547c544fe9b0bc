"""Paired timing of two implementations: the ratio is the median of the per-round ratios."""

import torch

from visattn.bench import paired
from visattn.bench.paired import PairedRatio, inference_call, paired_ratio, run_all, train_step_call


def test_ratio_is_the_median_of_per_round_ratios(monkeypatch):
    monkeypatch.setattr(paired, "interleaved_bursts",
                        lambda fns, calls, rounds, sync: [[4.0, 6.0, 9.0], [2.0, 2.0, 3.0]])
    seen = []
    result = paired_ratio(lambda: seen.append("t"), lambda: seen.append("o"), rounds=3, calls=1)
    assert seen == ["t", "o"]  # one untimed call each first
    assert result == PairedRatio(3.0, 2.0, 3.0, 6.0, 2.0)  # ratios 2, 3, 3
    assert result.markdown_row("case", "what") == "| case | what | 3.00x | 2.00-3.00 | 6 | 2 |"


def test_calls_run_what_they_say():
    model = torch.nn.Linear(3, 2)
    images = torch.randn(4, 3)
    inference_call(model, images)()
    assert model.weight.grad is None
    train_step_call(model, images)()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0
    order = []
    run_all([lambda: order.append(1), lambda: order.append(torch.is_grad_enabled())])()
    assert order == [1, False]
