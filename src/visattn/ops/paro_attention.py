"""PAROAttention block-sparse execution with optional INT8/INT4 fake quantisation (Zhao et al., arXiv 2506.16054).

Inputs are already in the reordered layout. The sequence is cut into blocks of ``block`` tokens and a static
``bitmap[h, I, J]`` says which (query block, key block) tiles are computed. For each query block ``I`` the kept
key blocks are gathered and

    out_i = sum_{j in kept tiles of I} softmax_j(q^_i . k^_j * scale) v_j

is evaluated over those tiles only (``q^, k^`` per-block fake-quantised when ``qk_bits`` is set; the softmax
weights fake-quantised per ``block x block`` tile when ``p_bits`` is set). Without autograd, dropout or P
quantisation, each head's kept tiles run on the fused tile kernel
(:func:`~visattn.ops.engines.fused_tiles.bitmap_tiles`, runs of kept key blocks as segments); otherwise query
blocks are batched in one ``scaled_dot_product_attention`` (or matmul, when P is quantised) call per chunk. Work
is ``density`` times that of dense attention. A query block with no kept tile outputs 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_qkv, check_scale
from .dispatch import kernel_refusal
from .engines.dense import sdpa_bool_mask
from .engines.kernel_ops import bitmap_tile_attention
from .native import needs_grad
from .paro_quant import fake_quant_tiles, fake_quant_tokens

__all__ = ["bitmap_token_mask", "paro_block_sparse_attention"]

CHUNK_ELEMENTS = 1 << 23


def bitmap_token_mask(bitmap: Tensor, block: int, num_tokens: int) -> Tensor:
    """The token-level bool mask ``(heads, N, N)`` of a block ``bitmap`` ``(heads, nb, nb)``."""
    full = bitmap.repeat_interleave(block, -1).repeat_interleave(block, -2)
    return full[..., :num_tokens, :num_tokens]


def _check_bitmap(bitmap: Tensor, heads: int, blocks: int) -> None:
    if not isinstance(bitmap, Tensor) or bitmap.dtype != torch.bool:
        raise TypeError(f"bitmap must be a bool tensor, got {bitmap.dtype if isinstance(bitmap, Tensor) else bitmap!r}")
    if tuple(bitmap.shape) != (heads, blocks, blocks):
        raise ValueError(f"bitmap must be (heads, n_blocks, n_blocks)={(heads, blocks, blocks)}, "
                         f"got {tuple(bitmap.shape)}")


def paro_block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, bitmap: Tensor, block: int = 64,
                                scale: float | None = None, qk_bits: int | None = None, p_bits: int | None = None,
                                dropout_p: float = 0.0, kept_blocks: int | None = None) -> Tensor:
    """Block-sparse softmax attention over the tiles of ``bitmap`` (see module docstring).

    Args:
        q, k, v: ``(B, heads, N, head_dim)`` in the reordered layout.
        bitmap: bool ``(heads, ceil(N / block), ceil(N / block))``, True = compute the tile.
        qk_bits: fake-quantise q and k per block of tokens to this many bits (8 or 4), or None.
        p_bits: fake-quantise the softmax weights per tile (8 or 4), or None.
        kept_blocks: the largest number of True tiles in a row of ``bitmap`` (a Python int, known when the
            bitmap was made: :class:`visattn.nn.ParoMixer` keeps it from calibration). When None it is read from
            ``bitmap``, a device-to-host copy that waits for the device and cannot run on the ``meta`` device.
    """
    check_qkv(q, k, v)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    b, h, n, d = q.shape
    if k.shape[2] != n:
        raise ValueError(f"self-attention needs as many keys as queries, got q N={n}, k N={k.shape[2]}")
    nb = -(-n // block)
    _check_bitmap(bitmap, h, nb)
    scale = check_scale(scale)
    scale = d ** -0.5 if scale is None else scale
    if qk_bits is not None:
        q, k = fake_quant_tokens(q, block, qk_bits), fake_quant_tokens(k, block, qk_bits)
    if (p_bits is None and not dropout_p and not needs_grad(q, k, v)
            and kernel_refusal(q.dtype, q.device.type, ("tile_attention",)) is None):
        return bitmap_tile_attention(q, k, v, bitmap, block, scale)
    pad = nb * block - n
    qb, kb, vb = (F.pad(t, (0, 0, 0, pad)).unflatten(2, (nb, block)) for t in (q, k, v))
    bitmap = bitmap.to(q.device)
    if kept_blocks is None:
        kept = int(bitmap.sum(-1).max())
    elif isinstance(kept_blocks, bool) or not isinstance(kept_blocks, int) or not 0 <= kept_blocks <= nb:
        raise ValueError(f"kept_blocks must be an int in 0 .. {nb} (tiles per row of bitmap), got {kept_blocks!r}")
    else:
        kept = kept_blocks
    if kept == 0:
        return q.new_zeros(b, h, n, v.shape[-1])
    slots = bitmap.to(torch.int8).sort(dim=-1, descending=True, stable=True)[1][..., :kept]
    slot_ok = bitmap.gather(-1, slots)
    token_ok = (slots.unsqueeze(-1) * block + torch.arange(block, device=q.device)) < n
    allowed = (slot_ok.unsqueeze(-1) & token_ok).flatten(-2)
    heads = torch.arange(h, device=q.device)[:, None, None]
    chunk = max(1, CHUNK_ELEMENTS // max(1, b * h * kept * block * max(d, v.shape[-1])))
    outs = []
    for s in range(0, nb, chunk):
        idx = slots[:, s:s + chunk]
        keys = kb[:, heads, idx].flatten(3, 4)
        vals = vb[:, heads, idx].flatten(3, 4)
        ok = allowed[:, s:s + chunk].unsqueeze(-2)
        outs.append(_tiles_attention(qb[:, :, s:s + chunk], keys, vals, ok, scale, block, p_bits, dropout_p,
                                     check_dense=kept_blocks is None))
    return torch.cat(outs, dim=2).flatten(2, 3)[:, :, :n]


def _tiles_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float, block: int,
                     p_bits: int | None, dropout_p: float, check_dense: bool) -> Tensor:
    """Attention of ``q`` ``(B, H, G, block, d)`` over gathered ``k, v`` ``(B, H, G, S, d)``; with
    ``check_dense``, unmasked SDPA when every gathered key is allowed (a check that waits for the device)."""
    b, h, g = q.shape[:3]
    if p_bits is None:
        flat = [t.flatten(1, 2) for t in (q, k, v)]
        if check_dense and bool(allowed.all()):
            out = F.scaled_dot_product_attention(*flat, scale=scale, dropout_p=dropout_p)
        else:
            out = sdpa_bool_mask(*flat, allowed.expand(h, g, 1, -1).flatten(0, 1), scale, dropout_p)
        return out.unflatten(1, (h, g))
    scores = (q @ k.transpose(-2, -1)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    empty = ~allowed.any(-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    weights = F.dropout(fake_quant_tiles(weights, block, block, p_bits), p=dropout_p)
    return weights @ v
