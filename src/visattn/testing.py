"""Helpers for testing token mixers: random inputs in the layout every visattn op takes."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gradcheck_module", "random_qkv", "randomize_module", "rowwise_attention"]


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


def rowwise_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float | None = None) -> Tensor:
    """An oracle for masked attention sharing no code with :mod:`visattn.ops.reference`: query by query, the
    softmax over the keys it may see by log-sum-exp, in float64 (a Python loop over rows: tiny inputs only).

    ``out[b, h, i] = sum_{j: allowed[i, j]} exp(s_ij - logsumexp_j s_ij) v_j`` with ``s_ij = scale q_i . k_j``;
    0 for a row that sees no key. ``allowed``: bool ``(N, M)``.
    """
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64, device=q.device)
    for i in range(q.shape[2]):
        keys = allowed[i].nonzero().flatten()
        if keys.numel() == 0:
            continue
        scores = torch.einsum("bhd,bhjd->bhj", q[:, :, i], k[:, :, keys]) * scale
        weights = (scores - torch.logsumexp(scores, dim=-1, keepdim=True)).exp()
        out[:, :, i] = torch.einsum("bhj,bhjd->bhd", weights, v[:, :, keys])
    return out
