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
they are part of ``state_dict``); calling the mixer before that raises ``RuntimeError``. The bitmap is kept as
packed bits (``packed_bitmap``, uint8, 8 key blocks a byte: :mod:`visattn.ops.paro_bitmap`), 8x smaller than
booleans, and unpacked (``heads x nb x nb``, tiny next to the attention it prunes) on each call.

Per-timestep masks: a diffusion model's attention changes with the denoising step, so the paper calibrates its
masks per timestep. ``calibrate_timesteps(maps, shape)`` with maps ``(T, [samples,] heads, N, N)`` keeps one
order per head (chosen on all steps together; the permutation is static) and one bitmap per step and head
(``packed_bitmap`` ``(T, heads, nb, ceil(nb / 8))``). The step is selected by ``timestep`` (an index in
``0 .. T - 1``), passed to ``forward`` or set once per step with :meth:`ParoMixer.set_timestep` (the path when
the mixer sits inside :class:`~visattn.nn.Attention`). A mixer calibrated without timesteps ignores ``timestep``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import as_shape
from ..ops import reference
from ..ops.paro_attention import bitmap_token_mask, paro_block_sparse_attention
from ..ops.paro_bitmap import pack_bitmap, unpack_bitmap
from ..ops.paro_quant import QUANT_BITS
from ..ops.paro_reorder import (
    ParoCalibration,
    calibrate_orders,
    inverse_permutation,
    order_bitmaps,
    reorder_permutation,
)
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
        self.orders: tuple[tuple[int, ...], ...] | None = None
        self.calibrated_shape: tuple[int, ...] | None = None
        self.timestep: int | None = None
        self.kept_blocks: tuple[int, ...] | None = None
        self.register_buffer("perm", None)
        self.register_buffer("inverse", None)
        self.register_buffer("packed_bitmap", None)

    def _maps(self, attn_maps: Tensor, leading: int) -> Tensor:
        dims = attn_maps.dim() if isinstance(attn_maps, Tensor) else None
        if dims not in (3 + leading, 4 + leading) or attn_maps.shape[-3] != self.num_heads:
            raise ValueError(f"attn_maps must have num_heads={self.num_heads} heads, got "
                             f"{tuple(attn_maps.shape) if isinstance(attn_maps, Tensor) else attn_maps!r}")
        return attn_maps

    def _store(self, cal: ParoCalibration, bitmaps: Tensor, device: torch.device) -> None:
        perms = torch.stack([reorder_permutation(cal.shape, o, cal.num_prefix_tokens, device) for o in cal.orders])
        self.perm, self.inverse = perms, torch.stack([inverse_permutation(p) for p in perms])
        self.packed_bitmap = pack_bitmap(bitmaps)
        self.orders, self.calibrated_shape = cal.orders, cal.shape
        rows = bitmaps.sum(-1).flatten(-2).amax(-1).reshape(-1)
        self.kept_blocks = tuple(int(r) for r in rows.tolist())

    def calibrate(self, attn_maps: Tensor, shape: int | tuple[int, ...],
                  num_prefix_tokens: int = 0) -> ParoCalibration:
        """Choose the per-head orders and bitmaps from sample attention maps ``(heads, N, N)`` or
        ``(samples, heads, N, N)``; store them on the mixer (one mask for every timestep) and return the
        calibration."""
        cal = calibrate_orders(self._maps(attn_maps, 0), shape, num_prefix_tokens, self.block, self.density,
                               self.sparse_weight, self.quant_weight)
        self._store(cal, cal.bitmap, attn_maps.device)
        return cal

    def calibrate_timesteps(self, attn_maps: Tensor, shape: int | tuple[int, ...],
                            num_prefix_tokens: int = 0) -> ParoCalibration:
        """Per-timestep masks from maps ``(T, heads, N, N)`` or ``(T, samples, heads, N, N)``: the orders are
        chosen on all steps together, then each step gets its own bitmap under those orders. Returns the
        calibration over all steps (its ``bitmap`` is that of the pooled maps)."""
        maps = self._maps(attn_maps, 1)
        maps = maps if maps.dim() == 5 else maps.unsqueeze(1)
        cal = calibrate_orders(maps.flatten(0, 1), shape, num_prefix_tokens, self.block, self.density,
                               self.sparse_weight, self.quant_weight)
        bitmaps = torch.stack([order_bitmaps(step.mean(0), cal.shape, cal.orders, num_prefix_tokens, self.block,
                                             self.density) for step in maps])
        self._store(cal, bitmaps, attn_maps.device)
        return cal

    def calibrate_qk(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> ParoCalibration:
        """Calibrate from sample queries and keys: the maps are ``softmax(q k^T scale)`` over the batch."""
        _, prefix = self.prepare(q, k, k, shape)
        with torch.no_grad():
            maps = reference.attention(q, k, k, scale=self.scale, return_weights=True)[1]
        return self.calibrate(maps, shape, prefix)

    @property
    def num_timesteps(self) -> int:
        """Timesteps with their own mask (0: one mask for all, or uncalibrated)."""
        return self.packed_bitmap.shape[0] if self.packed_bitmap is not None and self.packed_bitmap.dim() == 4 else 0

    def set_timestep(self, timestep: int | None) -> None:
        """Select the mask used when ``forward`` gets no ``timestep`` (the denoising step's index)."""
        self.timestep = None if timestep is None else self._check_timestep(timestep)

    def _check_timestep(self, timestep: int) -> int:
        if isinstance(timestep, bool) or not isinstance(timestep, int) or timestep < 0 or \
                (self.num_timesteps and timestep >= self.num_timesteps):
            limit = f"0 .. {self.num_timesteps - 1}" if self.num_timesteps else ">= 0"
            raise ValueError(f"timestep must be an int in {limit}, got {timestep!r}")
        return timestep

    @property
    def bitmap(self) -> Tensor | None:
        """The calibrated bitmap as booleans: ``(heads, nb, nb)``, or ``(T, heads, nb, nb)`` per timestep."""
        if self.packed_bitmap is None:
            return None
        return unpack_bitmap(self.packed_bitmap, self.packed_bitmap.shape[-2])

    def step_bitmap(self, timestep: int | None = None) -> Tensor:
        """Bool ``(heads, nb, nb)`` for ``timestep`` (default: the one set by :meth:`set_timestep`)."""
        if self.packed_bitmap is None:
            raise RuntimeError("ParoMixer needs calibration: call calibrate(...) first")
        packed = self.packed_bitmap
        if self.num_timesteps:
            timestep = self.timestep if timestep is None else self._check_timestep(timestep)
            if timestep is None:
                raise ValueError(f"timestep is required: this ParoMixer holds a mask for each of "
                                 f"{self.num_timesteps} timesteps (pass timestep= or call set_timestep)")
            packed = packed[timestep]
        elif timestep is not None:
            self._check_timestep(timestep)
        return unpack_bitmap(packed, packed.shape[-2])

    def _calibrated(self, q: Tensor, shape: int | tuple[int, ...]) -> None:
        if self.orders is None or self.perm is None:
            raise RuntimeError("ParoMixer needs calibration: call calibrate(attn_maps, shape) or "
                               "calibrate_qk(q, k, shape) before using it")
        shape = as_shape(shape)
        if shape != self.calibrated_shape or q.shape[2] != self.perm.shape[1] or q.shape[1] != self.num_heads:
            raise ValueError(f"q {tuple(q.shape)} with shape={shape} does not match the calibration "
                             f"(heads={self.num_heads}, shape={self.calibrated_shape}, N={self.perm.shape[1]})")

    def _reorder(self, x: Tensor, perm: Tensor) -> Tensor:
        return x.gather(2, perm[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1]).to(x.device))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None, timestep: int | None = None) -> Tensor:
        self.prepare(q, k, v, shape)
        self._no_attn_mask(attn_mask)
        self._calibrated(q, shape)
        bitmap = self.step_bitmap(timestep)
        q, k, v = (self._reorder(t, self.perm) for t in (q, k, v))
        out = paro_block_sparse_attention(q, k, v, bitmap, self.block, self.scale, self.qk_bits, self.p_bits,
                                          self.dropout_p, kept_blocks=self._kept_blocks(timestep))
        return self._reorder(out, self.inverse)

    def _kept_blocks(self, timestep: int | None) -> int | None:
        """Most tiles in a bitmap row of the step, kept from calibration so that ``forward`` never reads the
        bitmap back from the device (None after a ``load_state_dict`` without calibration: read then)."""
        if self.kept_blocks is None or len(self.kept_blocks) != max(1, self.num_timesteps):
            return None
        if not self.num_timesteps:
            return self.kept_blocks[0]
        return self.kept_blocks[self.timestep if timestep is None else timestep]

    def token_mask(self, timestep: int | None = None) -> Tensor:
        """The calibrated mask (of ``timestep``) in the original token order, bool ``(heads, N, N)``."""
        if self.perm is None:
            raise RuntimeError("ParoMixer needs calibration: call calibrate(...) first")
        n = self.perm.shape[1]
        reordered = bitmap_token_mask(self.step_bitmap(timestep), self.block, n)
        inv = self.inverse.to(reordered.device)
        return reordered.gather(1, inv[:, :, None].expand(-1, -1, n)).gather(2, inv[:, None, :].expand(-1, n, -1))

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...],
                          timestep: int | None = None) -> Tensor:
        """Dense ``(B, heads, N, N)`` softmax weights restricted to the calibrated mask (no fake quantisation),
        in the original token order; O(N^2)."""
        self.prepare(q, k, k, shape)
        self._calibrated(q, shape)
        return reference.attention(q, k, k, mask=self.token_mask(timestep).to(q.device), scale=self.scale,
                                   return_weights=True)[1]

    def extra_repr(self) -> str:
        orders = self.orders if self.orders is not None else "uncalibrated"
        return (f"num_heads={self.num_heads}, block={self.block}, density={self.density}, qk_bits={self.qk_bits}, "
                f"p_bits={self.p_bits}, orders={orders}, timesteps={self.num_timesteps}")


@register_mixer("paro", paper="paroattention", complexity="O(density N^2 d)", family="reformulated",
                faces=("definition", "fast", "module"))
def paro(num_heads: int = 8, block: int = 64, density: float = 0.5, qk_bits: int | None = 8, p_bits: int | None = 8,
         sparse_weight: float = 1.0, quant_weight: float = 1.0, scale: float | None = None,
         attn_drop: float = 0.0) -> ParoMixer:
    """PAROAttention: per-head axis reordering, static block bitmap, INT8/INT4 fake quant; calibrate() first."""
    return ParoMixer(num_heads, block, density, qk_bits, p_bits, sparse_weight, quant_weight, scale, attn_drop)
