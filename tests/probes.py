"""Probes the function and module tests share: what an op does to memory and which tokens it reads, not what it
computes."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def exit_at_once(job: object) -> None:
    """A child-process target that ends its process without a result, as a crash inside a kernel would."""
    os._exit(70)


def check_causal(attend: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor, k: Tensor, v: Tensor,
                 cut: int) -> None:
    """A causal op never reads a later token: moving the keys and values of tokens ``cut`` onward (``k + 2``,
    ``v - 1``) leaves every output before ``cut`` bit-identical and changes the outputs from ``cut`` on."""
    base = attend(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[..., cut:, :] += 2.0
    v2[..., cut:, :] -= 1.0
    moved = attend(q, k2, v2)
    torch.testing.assert_close(moved[..., :cut, :], base[..., :cut, :], atol=0, rtol=0)
    assert not torch.allclose(moved[..., cut:, :], base[..., cut:, :]), "the later outputs ignore the later tokens"
