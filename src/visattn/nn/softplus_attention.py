"""Softplus attention mixers: LSSA and the re-weighted LSSAR.

Paper: Gao & Spratling, "Softplus Attention with Re-weighting Boosts Length Extrapolation in Large Language Models"
(arXiv 2501.13428). LSSA replaces ``exp`` in softmax by softplus, on L2-normalised queries and keys, scaled by
``log(d) log(n_i)`` (``n_i`` = keys query ``i`` sees), then L1-normalises each row:

    A_ij = softplus(log d log n_i q^_i . k^_j) / sum_l softplus(log d log n_i q^_i . k^_l),   out = A V.

LSSAR then sharpens every row: ``A_ij <- relu(A_ij n_i - O_i)^p`` and L1-normalises again (``O_i = 0`` for the
first three rows, 1 after). The formulas live in :mod:`visattn.ops.reweight`; the re-weighting is also a standalone
op, :func:`visattn.ops.reweight_attention`, for any attention weights.
"""

from __future__ import annotations

from torch import Tensor

from ..ops import reference
from ..ops.reweight import OFFSET_ROWS, check_offset_rows, check_power, lssa_attention, lssa_weights
from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = ["SoftplusAttentionMixer"]


class SoftplusAttentionMixer(TokenMixer):
    """LSSA (``p=None``) or LSSAR (``p`` given) as a token mixer.

    Args:
        is_causal: causal mask over the token order with ``n_i = i`` (the paper's language-model setting);
            ``False`` lets every query see all N keys with ``n_i = N``.
        p: re-weighting power (LSSAR), ``>= 1``; None for plain LSSA.
        offset_rows: leading rows exempt from the re-weighting offset (3 in the paper).
        chunk_size: query rows per chunk; peak memory is O(chunk_size N).
        attn_drop: dropout on the weights in training.

    A boolean ``attn_mask`` (True = attend) is combined with the causal mask and ``n_i`` counts the keys each row
    may see; additive float masks have no visible-key count and are refused.
    """

    supports_attn_mask = True

    def __init__(self, is_causal: bool = True, p: float | None = None, offset_rows: int = OFFSET_ROWS,
                 chunk_size: int = 256, attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.is_causal = is_causal
        self.p = None if p is None else check_power(p)
        self.offset_rows = check_offset_rows(offset_rows)
        self.chunk_size = chunk_size

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        self.prepare(q, k, v, shape)
        reference.check_self_attn_mask(attn_mask, q)
        return lssa_attention(q, k, v, self.is_causal, attn_mask, self.p, self.offset_rows, self.dropout_p,
                              self.chunk_size)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        """Dense ``(B, heads, N, N)`` weights (O(N^2) memory)."""
        self.prepare(q, k, k, shape)
        return lssa_weights(q, k, self.is_causal, None, self.p, self.offset_rows)

    def extra_repr(self) -> str:
        return f"is_causal={self.is_causal}, p={self.p}, offset_rows={self.offset_rows}"


@register_mixer("lssa", paper="softplus_attention", complexity="O(N^2)", family="reformulated",
                faces=("definition", "module"))
def lssa(is_causal: bool = True, chunk_size: int = 256, attn_drop: float = 0.0) -> SoftplusAttentionMixer:
    """LSSA: softplus(log d log n_i cos(q, k)) weights, L1-normalised per row; causal by default."""
    return SoftplusAttentionMixer(is_causal=is_causal, p=None, chunk_size=chunk_size, attn_drop=attn_drop)


@register_mixer("lssar", paper="softplus_attention", complexity="O(N^2)", family="reformulated",
                faces=("definition", "module"))
def lssar(p: float = 3.0, is_causal: bool = True, offset_rows: int = OFFSET_ROWS, chunk_size: int = 256,
          attn_drop: float = 0.0) -> SoftplusAttentionMixer:
    """LSSAR: LSSA re-weighted by relu(A n_i - O_i)^p, zeroing weights at or below 1 / n_i; causal by default."""
    return SoftplusAttentionMixer(is_causal=is_causal, p=p, offset_rows=offset_rows, chunk_size=chunk_size,
                                  attn_drop=attn_drop)
