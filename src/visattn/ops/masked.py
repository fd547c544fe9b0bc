"""``masked_attention``: softmax attention restricted by a :class:`~visattn.masks.Mask`, on the engine
:mod:`visattn.ops.dispatch` chooses.

Backends, all giving the same result (tested): ``"auto"`` (the dispatch's choice), ``"fast"`` (the dispatch's
choice among the structured engines, ValueError if none accepts), or an engine by name: ``"reference"`` (the naive
dense oracle), ``"dense"`` (SDPA with the materialised bool mask), ``"flex"`` (FlexAttention), ``"fused_tiles"``,
``"per_query"``, ``"sdpa_tiles"``, ``"sdpa_lines"``, ``"block_sparse"``, ``"sdpa"``, ``"sdpa_causal"``
(:data:`visattn.ops.dispatch.ENGINES`). ``visattn.ops.explain`` says which engine runs and why.
"""

from __future__ import annotations

from torch import Tensor

from ..masks import Mask
from .arguments import check_masked_call
from .dispatch import DENSE_MAX_TOKENS, ENGINES, choose, run_engine
from .engines.dense import block_mask, dense_mask, sdpa_bool_mask

__all__ = ["BACKENDS", "DENSE_MAX_TOKENS", "block_mask", "dense_mask", "masked_attention", "sdpa_bool_mask"]

BACKENDS = ("auto", "fast", *ENGINES)


def masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Mask,
    shape: int | tuple[int, ...],
    num_prefix_tokens: int = 0,
    backend: str = "auto",
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Softmax self-attention where query i sees key j only if ``mask`` allows it.

    ``out_i = sum_{j in M(i)} softmax_j(q_i . k_j * scale) v_j``, 0 for a query that sees no key.

    Args:
        q, k, v: ``(B, heads, N, head_dim)`` with ``N = num_prefix_tokens + prod(shape)`` (v may have its own
            head_dim).
        mask: a :class:`visattn.masks.Mask`.
        shape: the spatial layout of the non-prefix tokens, row-major: ``(L,)``, ``(H, W)`` or ``(T, H, W)``.
        num_prefix_tokens: global tokens in front (they see, and are seen by, every token).
        backend: ``"auto"``, ``"fast"`` or an engine name (see the module docstring).
        scale: logit scale (a finite real number), ``head_dim ** -0.5`` by default.
        dropout_p: attention dropout probability (engines without dropout are passed over).
    """
    shape, prefix, scale = check_masked_call(q, k, v, mask, shape, num_prefix_tokens, scale)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    engine = choose(q, k, v, mask, shape, prefix, dropout_p, backend)
    return run_engine(engine, q, k, v, mask, shape, prefix, scale, dropout_p)
