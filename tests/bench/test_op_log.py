"""bench.op_log: aten ops of one forward, marked inside or outside chosen layers."""

from __future__ import annotations

import torch
from torch import nn

from visattn.bench.op_log import logged_ops


def test_ops_are_marked_inside_the_chosen_layers_only_and_hooks_are_removed():
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 3), nn.Tanh())
    ops = logged_ops(model, torch.randn(2, 4), (nn.Linear,))
    names = [(inside, name) for inside, name, _ in ops]
    assert (False, "relu") in names and (False, "tanh") in names
    assert any(inside for inside, _ in names) and all(name not in ("relu", "tanh") for inside, name in names if inside)
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks


def test_layouts_record_shapes_and_strides():
    x = torch.randn(3, 5).t()
    (op,) = [op for op in logged_ops(nn.ReLU(), x, ()) if op[1] == "relu"]
    assert op[2] == repr([((5, 3), (1, 5))])
