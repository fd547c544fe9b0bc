"""PAROAttention as a token mixer: calibrated per-head token reordering, static block-sparse mask, fake quantisation.

Paper: Zhao et al., "PAROAttention: Pattern-Aware ReOrdering for Efficient Sparse and Quantized Attention in
Visual Generation Models" (arXiv 2506.16054); code jamescsq47/PAROAtten.

Per head ``h`` with calibrated axis order (permutation ``pi_h``) and block bitmap ``B_h``:

    out_h = inverse_pi_h( blocksparse_softmax( Q~ K~^T * scale, B_h ) V ),   Q~ = fq(Q[pi_h]), K~ = fq(K[pi_h])

with ``fq`` per-block INT8/INT4 fake quantisation and the softmax weights fake-quantised per tile
(:mod:`visattn.ops.paro_quant`), computed only on the kept tiles (:mod:`visattn.ops.paro_attention`).

Workflow: the mixer needs calibration state before use.

    mixer = visattn.create_mixer("paro", num_heads=4, density=0.5)
    mixer.calibrate(sample_attention_maps, shape=(T, H, W))    # or mixer.calibrate_qk(q, k, shape)
    out = mixer(q, k, v, (T, H, W))

``calibrate`` stores, per head, the chosen order's permutation and its inverse and the bitmap as buffers (so
they are part of ``state_dict``); calling the mixer before that raises ``RuntimeError``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import as_shape
from ..ops import reference
from ..ops.paro_attention import bitmap_token_mask, paro_block_sparse_attention
from ..ops.paro_quant import QUANT_BITS
from ..ops.paro_reorder import ParoCalibration, calibrate_orders, inverse_permutation, reorder_permutation
from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = ["ParoMixer"]


def _bits(value: int | None, name: str) -> int | None:
    if value is not None and value not in QUANT_BITS:
        raise ValueError(f"{name} must be None or one of {QUANT_BITS}, got {value!r}")
    return value


class ParoMixer(TokenMixer):
    """PAROAttention (arXiv 2506.16054): reorder tokens per head, block-sparse fake-quantised attention, reorder back.

    Args:
        num_heads: heads (one order and one bitmap each).
        block: tile size in tokens (64 in the paper).
        density: fraction of key blocks kept per query-block row at calibration.
        qk_bits: per-block fake quantisation of q and k (8 as in the paper, 4, or None for none).
        p_bits: per-tile fake quantisation of the softmax weights (8 or 4 as in the paper, or None).
        sparse_weight, quant_weight: weights of the order-selection cost.
        scale: logit scale (default ``head_dim^-1/2``).
    """

    def __init__(self, num_heads: int = 8, block: int = 64, density: float = 0.5, qk_bits: int | None = 8,
                 p_bits: int | None = 8, sparse_weight: float = 1.0, quant_weight: float = 1.0,
                 scale: float | None = None, attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        for name, value in (("num_heads", num_heads), ("block", block)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density!r}")
        self.num_heads, self.block, self.density = num_heads, block, density
        self.qk_bits, self.p_bits = _bits(qk_bits, "qk_bits"), _bits(p_bits, "p_bits")
        self.sparse_weight, self.quant_weight, self.scale = sparse_weight, quant_weight, scale
        self.calibration: ParoCalibration | None = None
        self.register_buffer("perm", None)
        self.register_buffer("inverse", None)
        self.register_buffer("bitmap", None)

    def calibrate(self, attn_maps: Tensor, shape: int | tuple[int, ...],
                  num_prefix_tokens: int = 0) -> ParoCalibration:
        """Choose the per-head orders and bitmaps from sample attention maps ``(heads, N, N)`` or
        ``(samples, heads, N, N)``; store them on the mixer and return the calibration."""
        maps = attn_maps if attn_maps.dim() == 4 else attn_maps.unsqueeze(0)
        if maps.dim() != 4 or maps.shape[1] != self.num_heads:
            raise ValueError(f"attn_maps must have num_heads={self.num_heads} heads, got {tuple(attn_maps.shape)}")
        cal = calibrate_orders(attn_maps, shape, num_prefix_tokens, self.block, self.density, self.sparse_weight,
                               self.quant_weight)
        perms = torch.stack([reorder_permutation(cal.shape, o, num_prefix_tokens, maps.device) for o in cal.orders])
        self.perm, self.inverse = perms, torch.stack([inverse_permutation(p) for p in perms])
        self.bitmap, self.calibration = cal.bitmap, cal
        return cal

    def calibrate_qk(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> ParoCalibration:
        """Calibrate from sample queries and keys: the maps are ``softmax(q k^T scale)`` over the batch."""
        _, prefix = self.prepare(q, k, k, shape)
        with torch.no_grad():
            maps = reference.attention(q, k, k, scale=self.scale, return_weights=True)[1]
        return self.calibrate(maps, shape, prefix)

    def _calibrated(self, q: Tensor, shape: int | tuple[int, ...]) -> None:
        if self.calibration is None or self.perm is None:
            raise RuntimeError("ParoMixer needs calibration: call calibrate(attn_maps, shape) or "
                               "calibrate_qk(q, k, shape) before using it")
        shape = as_shape(shape)
        cal = self.calibration
        if shape != cal.shape or q.shape[2] != self.perm.shape[1] or q.shape[1] != self.num_heads:
            raise ValueError(f"q {tuple(q.shape)} with shape={shape} does not match the calibration "
                             f"(heads={self.num_heads}, shape={cal.shape}, N={self.perm.shape[1]})")

    def _reorder(self, x: Tensor, perm: Tensor) -> Tensor:
        return x.gather(2, perm[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1]).to(x.device))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        self.prepare(q, k, v, shape)
        self._no_attn_mask(attn_mask)
        self._calibrated(q, shape)
        q, k, v = (self._reorder(t, self.perm) for t in (q, k, v))
        out = paro_block_sparse_attention(q, k, v, self.bitmap, self.block, self.scale, self.qk_bits, self.p_bits,
                                          self.dropout_p)
        return self._reorder(out, self.inverse)

    def token_mask(self) -> Tensor:
        """The calibrated mask in the original token order, bool ``(heads, N, N)``."""
        if self.perm is None:
            raise RuntimeError("ParoMixer needs calibration: call calibrate(...) first")
        n = self.perm.shape[1]
        reordered = bitmap_token_mask(self.bitmap, self.block, n)
        inv = self.inverse.to(reordered.device)
        return reordered.gather(1, inv[:, :, None].expand(-1, -1, n)).gather(2, inv[:, None, :].expand(-1, n, -1))

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        """Dense ``(B, heads, N, N)`` softmax weights restricted to the calibrated mask (no fake quantisation),
        in the original token order; O(N^2)."""
        self.prepare(q, k, k, shape)
        self._calibrated(q, shape)
        return reference.attention(q, k, k, mask=self.token_mask().to(q.device), scale=self.scale,
                                   return_weights=True)[1]

    def extra_repr(self) -> str:
        orders = self.calibration.orders if self.calibration is not None else "uncalibrated"
        return (f"num_heads={self.num_heads}, block={self.block}, density={self.density}, qk_bits={self.qk_bits}, "
                f"p_bits={self.p_bits}, orders={orders}")


@register_mixer("paro", paper="paroattention", complexity="O(density N^2 d)", family="reformulated",
                faces=("definition", "fast", "module"))
def paro(num_heads: int = 8, block: int = 64, density: float = 0.5, qk_bits: int | None = 8, p_bits: int | None = 8,
         sparse_weight: float = 1.0, quant_weight: float = 1.0, scale: float | None = None,
         attn_drop: float = 0.0) -> ParoMixer:
    """PAROAttention: per-head axis reordering, static block bitmap, INT8/INT4 fake quant; calibrate() first."""
    return ParoMixer(num_heads, block, density, qk_bits, p_bits, sparse_weight, quant_weight, scale, attn_drop)
