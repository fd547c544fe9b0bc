"""Blockwise fake quantisation for PAROAttention (Zhao et al., arXiv 2506.16054).

Symmetric round-to-nearest with one scale per block, returned dequantised in the input dtype:

    Q, K (per block of ``block`` tokens, over the block's tokens and channels):
        s = max|x| / (2^(b-1) - 1),   x^ = clamp(round(x / s), -(2^(b-1) - 1), 2^(b-1) - 1) s
    P (attention probabilities, >= 0, per ``block_q x block_k`` tile):
        s = max P / (2^b - 1),        P^ = clamp(round(P / s), 0, 2^b - 1) s

An all-zero block keeps scale 0 and stays 0. The released kernels quantise Q per warp/block and K per 64-token
block to INT8 (SageAttention style); here every block has its own scale, which is what the paper's M_quant
(max/mean per tile) measures.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["QUANT_BITS", "fake_quant_tiles", "fake_quant_tokens"]

QUANT_BITS = (4, 8)


def _check_bits(bits: int, name: str) -> None:
    if bits not in QUANT_BITS:
        raise ValueError(f"{name} must be one of {QUANT_BITS}, got {bits!r}")


def _round_scaled(x: Tensor, amax: Tensor, low: int, high: int) -> Tensor:
    scale = amax / high
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (x / safe).round().clamp(low, high) * scale


def fake_quant_tokens(x: Tensor, block: int, bits: int = 8) -> Tensor:
    """Symmetric per-token-block fake quantisation of ``x`` ``(..., N, d)``; the last block may be shorter."""
    _check_bits(bits, "bits")
    n, d = x.shape[-2:]
    pad = -n % block
    padded = torch.nn.functional.pad(x, (0, 0, 0, pad)).unflatten(-2, (-1, block))
    amax = padded.abs().amax((-2, -1), keepdim=True)
    high = 2 ** (bits - 1) - 1
    return _round_scaled(padded, amax, -high, high).flatten(-3, -2)[..., :n, :]


def fake_quant_tiles(p: Tensor, block_q: int, block_k: int, bits: int = 8) -> Tensor:
    """Unsigned per-tile fake quantisation of non-negative ``p`` ``(..., Nq, Nk)``, Nq, Nk multiples of the tile."""
    _check_bits(bits, "bits")
    nq, nk = p.shape[-2:]
    if nq % block_q or nk % block_k:
        raise ValueError(f"p of shape {tuple(p.shape)} must tile into ({block_q}, {block_k}) tiles")
    tiles = p.unflatten(-1, (nk // block_k, block_k)).unflatten(-3, (nq // block_q, block_q))
    amax = tiles.amax((-3, -1), keepdim=True)
    return _round_scaled(tiles, amax, 0, 2**bits - 1).flatten(-2, -1).flatten(-3, -2)
