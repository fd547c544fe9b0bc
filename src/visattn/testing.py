"""Helpers for testing token mixers: random inputs in the layout every visattn op takes."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gradcheck_module", "random_qkv", "randomize_module"]


def random_qkv(batch: int, heads: int, tokens: int, head_dim: int, dtype: torch.dtype = torch.float64,
               seed: int = 0, contiguous: bool = True, scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded standard-normal ``q, k, v`` of shape ``(batch, heads, tokens, head_dim)``, times ``scale``.

    ``contiguous=False`` returns transposed views of ``(batch, tokens, heads, head_dim)`` tensors, the layout that
    a fused qkv projection produces, to exercise strided inputs.
    """
    gen = torch.Generator().manual_seed(seed)
    if contiguous:
        shape = (batch, heads, tokens, head_dim)
        return tuple(scale * torch.randn(shape, generator=gen, dtype=dtype) for _ in range(3))
    shape = (batch, tokens, heads, head_dim)
    return tuple((scale * torch.randn(shape, generator=gen, dtype=dtype)).transpose(1, 2) for _ in range(3))


def randomize_module(module: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> torch.nn.Module:
    """``module`` in eval mode with seeded random parameters (normal times ``scale``) and batch-norm statistics
    (running means normal times 0.1, running variances uniform in [0.5, 1.5)), so that a test against a formula
    exercises every weight, not a freshly initialised identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
        for name, buf in module.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen, dtype=buf.dtype) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen, dtype=buf.dtype) + 0.5)
    return module.eval()


def gradcheck_module(module: torch.nn.Module, x: Tensor) -> bool:
    """``torch.autograd.gradcheck`` of ``module`` (float64) with respect to its input ``x`` and, separately, to each
    of its parameters (through ``torch.func.functional_call``)."""
    x = x.detach().requires_grad_()
    names = [n for n, _ in module.named_parameters()]

    def by_params(*params: Tensor) -> Tensor:
        return torch.func.functional_call(module, dict(zip(names, params, strict=True)), (x.detach(),))

    return (torch.autograd.gradcheck(module, (x,))
            and torch.autograd.gradcheck(by_params, tuple(module.parameters())))
