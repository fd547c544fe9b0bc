"""What the lens edits share: argument checks and the token sets of one attention call.

An :class:`~visattn.lens.call.AttentionCall` carries queries for the last ``Nq`` of ``Nk`` positions (``Nq = Nk``
without a KV cache, ``Nq = 1`` while decoding), so query ``i`` sits at absolute position ``Nk - Nq + i``. Image
tokens come from ``call.image_tokens`` (vision-language adapters) or, for vision transformers, from the grid after
the prefix tokens. Every error names the edit, the argument and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..call import AttentionCall

Rows = str | Sequence[int]
"""Query rows an edit acts on: ``"all"``, ``"last"`` or absolute positions in the sequence."""


def number(value: object, name: str, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` when ``low_open``), or a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        left = "(" if low_open else "["
        raise ValueError(f"{name} must be in {left}{low}, {high}], got {value!r}")
    return float(value)


def indices(values: object, name: str, allow_empty: bool = False) -> Tensor:
    """Non-negative integer indices (a sequence of ints or an integer tensor) as a 1-d int64 tensor."""
    if isinstance(values, Tensor):
        if values.is_floating_point() or values.dtype == torch.bool or values.dim() > 1:
            raise TypeError(f"{name} must be 1-d integer indices, got a {values.dtype} tensor of shape "
                            f"{tuple(values.shape)}")
        out = values.reshape(-1).to(torch.long)
    elif isinstance(values, Sequence) and not isinstance(values, str):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise TypeError(f"{name} must contain ints, got {values!r}")
        out = torch.as_tensor(list(values), dtype=torch.long)
    else:
        raise TypeError(f"{name} must be a sequence of ints or an integer tensor, got {values!r}")
    if out.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    if bool((out < 0).any()):
        raise ValueError(f"{name} must be non-negative indices, got {out.tolist()}")
    return out


def rows_arg(rows: object, name: str = "rows") -> Rows:
    """Check a row selection: ``"all"``, ``"last"`` or a sequence of absolute positions."""
    if isinstance(rows, str):
        if rows not in ("all", "last"):
            raise ValueError(f"{name} must be 'all', 'last' or a sequence of query positions, got {rows!r}")
        return rows
    return tuple(indices(rows, name).tolist())


def query_positions(call: AttentionCall) -> Tensor:
    """Absolute positions ``(Nq,)`` of the call's queries: the last ``Nq`` of the ``Nk`` keys."""
    nq, nk = call.q.shape[-2], call.k.shape[-2]
    return torch.arange(nk - nq, nk, device=call.q.device)


def row_mask(call: AttentionCall, rows: Rows) -> Tensor:
    """Bool ``(Nq,)``: which of the call's query rows ``rows`` selects."""
    nq = call.q.shape[-2]
    if rows == "all":
        return torch.ones(nq, dtype=torch.bool, device=call.q.device)
    if rows == "last":
        return torch.arange(nq, device=call.q.device) == nq - 1
    wanted = torch.as_tensor(list(rows), dtype=torch.long, device=call.q.device)
    return torch.isin(query_positions(call), wanted)


def _token_positions(tokens: Tensor, length: int, what: str) -> Tensor:
    if tokens.dtype == torch.bool:
        if tokens.shape[-1] != length:
            raise ValueError(f"{what} as a bool mask must have {length} entries (one per key), got "
                             f"{tuple(tokens.shape)}")
        return tokens.reshape(-1, length)[0].nonzero().reshape(-1)
    positions = tokens.reshape(-1).to(torch.long)
    bad = positions[(positions < 0) | (positions >= length)]
    if bad.numel():
        raise ValueError(f"{what} {bad.tolist()} out of range for {length} keys")
    return positions


def image_positions(call: AttentionCall, who: str) -> Tensor:
    """Key positions ``(n_img,)`` of the image tokens, in image order, or a ValueError naming what is missing."""
    nk = call.k.shape[-2]
    if call.image_tokens is not None:
        return _token_positions(call.image_tokens.to(call.k.device), nk, "image_tokens")
    if call.grid is not None:
        count = math.prod(call.grid)
        start = call.num_prefix_tokens
        if start + count > nk:
            raise ValueError(f"{who}: grid {call.grid} after {start} prefix tokens needs {start + count} keys, "
                             f"the call of layer {call.layer} ('{call.name}') has {nk}")
        return torch.arange(start, start + count, device=call.k.device)
    raise ValueError(f"{who} needs the image tokens, but the attention call of layer {call.layer} ('{call.name}') "
                     "has image_tokens=None and grid=None; use a model whose adapter knows its image tokens "
                     "(vision-language models, ViTs) or give the token positions explicitly")


def key_mask(positions: Tensor, length: int, device: torch.device) -> Tensor:
    """Bool ``(length,)`` with True at ``positions``."""
    mask = torch.zeros(length, dtype=torch.bool, device=device)
    mask[positions.to(device)] = True
    return mask


def sequence_positions(tokens: Tensor, call: AttentionCall, name: str) -> Tensor:
    """User-given absolute key positions, checked against the call's ``Nk`` keys."""
    return _token_positions(tokens.to(call.k.device), call.k.shape[-2], name)


def visible_keys(call: AttentionCall, like: Tensor) -> Tensor:
    """Bool ``(B, heads, Nq, Nk)`` (broadcast to ``like``): keys a query may see under ``call.bias``.

    A bias entry at or below half the dtype's lowest value counts as masked, so both ``-inf`` masks and the
    ``finfo.min`` masks of Hugging Face models are recognised.
    """
    if call.bias is None:
        return torch.ones_like(like, dtype=torch.bool)
    bias = call.bias
    if bias.dtype == torch.bool:
        return bias.expand_as(like)
    return (bias > torch.finfo(bias.dtype).min / 2).expand_as(like)


def head_mask(selected: tuple[int, ...] | None, num_heads: int, device: torch.device, who: str) -> Tensor:
    """Bool ``(heads,)`` of the selected heads (all when None); an out-of-range head raises ValueError."""
    if selected is None:
        return torch.ones(num_heads, dtype=torch.bool, device=device)
    bad = [h for h in selected if not 0 <= h < num_heads]
    if bad:
        raise ValueError(f"{who}: heads {bad} out of range; the attention call has {num_heads} heads")
    mask = torch.zeros(num_heads, dtype=torch.bool, device=device)
    mask[list(selected)] = True
    return mask


def renormalize(new: Tensor, old: Tensor) -> Tensor:
    """Rescale each row of ``new`` to the row sum of ``old`` (rows of ``new`` summing to 0 come back as ``old``)."""
    total_new = new.sum(dim=-1, keepdim=True)
    total_old = old.sum(dim=-1, keepdim=True)
    safe = torch.where(total_new > 0, total_new, torch.ones_like(total_new))
    return torch.where(total_new > 0, new / safe * total_old, old)
