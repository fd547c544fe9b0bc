"""Deconstructing Attention: controlled variants that each relax one principle of dot-product attention.

Paper: Xue, Moosavi & Aletras, "Deconstructing Attention: Investigating Design Principles for Effective Language
Modeling" (arXiv 2510.11602; code HUIYINXUE/DeconAttn, which was not available to us: the forms below follow the
paper notes). ``V = H W_V`` in every variant; a hybrid model uses a variant in odd layers only.

* no token mixing — :class:`GatedMLP`: ``FC_down(SiLU(FC_gate H) * FC_up H)`` in place of attention.
* approximate form — ``"taylor"`` (:class:`TaylorMixer`): softmax's ``exp(x)`` replaced by its 2nd-order Taylor
  expansion ``1 + x + x^2/2`` with ``x = q' . k' / sqrt(f)`` as in Based, where ``q' = P_q q``, ``k' = P_k k``
  project each head to ``f = feature_dim`` channels (16, Based's default), linearised by the feature map
  ``phi(x) = [1, x / f^(1/4), (x (x) x) / sqrt(2 f)]`` so that ``phi(q') . phi(k') = 1 + x + x^2/2`` (> 0):
  ``out_i = phi(q'_i) sum_j phi(k'_j) v_j^T / phi(q'_i) . sum_j phi(k'_j)``, O(N f^2 d), causal by chunked prefix
  sums (:mod:`visattn.ops.taylor`).
* non-approximate form — ``"elementwise_qk"`` (:class:`ElementwiseQKMixer`): ``A = softmax((Q * K) 1^T /
  sqrt(d_h))`` with ``Q = SiLU(H W_Q)`` and ``*`` the elementwise product; see the class for how the product is
  contracted (:mod:`visattn.ops.elementwise_qk`).
* Q, K decoupled from the evolving hidden state — :class:`DecoupledQKAttention` with ``source`` ``"random"``
  (RndEmbQK), ``"fixed"`` (FixedSeqQK) or ``"static"`` (StaticEmbQK).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_heads
from ..ops.elementwise_qk import (
    SCORE_AXES,
    elementwise_qk_attention,
    elementwise_qk_state_bytes,
    elementwise_qk_weights,
)
from ..ops.linear_attention import check_chunk_size
from ..ops.recurrent_state import layout
from ..ops.taylor import taylor_attention, taylor_state_bytes, taylor_weights
from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = [
    "DecoupledQKAttention",
    "ElementwiseQKMixer",
    "GatedMLP",  # noqa: F822  (resolved by the module __getattr__)
    "TaylorMixer",
]

BASED_FEATURE_DIM = 16
"""Based's feature dimension (``feature_dim=16`` in its released ``LinearAttention``), the default of ``taylor``."""


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class TaylorMixer(TokenMixer):
    """2nd-order Taylor softmax approximation (Deconstructing Attention's "approximate" variant, as in Based).

    Args:
        is_causal: causal prefix sums over the token order (the paper's language-model setting).
        chunk_size: tokens per chunk (memory O(chunk_size f^2)).
        feature_dim: ``f``, the width q and k are projected to per head before the Taylor feature map (Based's
            ``feature_dim``, default 16 as in its released code); the recurrent state is then
            ``(1 + f + f^2)(Dv + 1)`` numbers per head. ``None`` applies the map to the full head dimension without
            a projection -- the behaviour before this option existed (state ``(1 + d + d^2)(Dv + 1)``, larger than
            a key-value cache of 2048 tokens at ``d = 64``).
        num_heads, head_dim: layout of q and k (the projections are per head; filled in by
            :class:`~visattn.nn.Attention`). Ignored when ``feature_dim`` is None.
        learn_projection: the projections ``q_proj``, ``k_proj`` ``(heads, f, head_dim)`` are parameters (as Based's
            ``proj_q``/``proj_k``); False keeps them fixed (buffers). Both start as the same random orthonormal map
            scaled so that ``q' . k' / sqrt(f)`` has the expectation of ``q . k / sqrt(d)``.
    """

    supports_is_causal = True
    uses_attn_drop = False

    def __init__(self, is_causal: bool = False, chunk_size: int = 128, attn_drop: float = 0.0, *,
                 feature_dim: int | None = BASED_FEATURE_DIM, num_heads: int = 8, head_dim: int = 64,
                 learn_projection: bool = True) -> None:
        super().__init__(attn_drop)
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
        self.is_causal = is_causal
        self.chunk_size = check_chunk_size(chunk_size)
        self.feature_dim = None if feature_dim is None else _positive(feature_dim, "feature_dim")
        self.num_heads, self.head_dim = _positive(num_heads, "num_heads"), _positive(head_dim, "head_dim")
        self.learn_projection = bool(learn_projection)
        if self.feature_dim is None:
            self.q_proj = self.k_proj = None
            return
        weight = torch.empty(num_heads, self.feature_dim, head_dim)
        with torch.no_grad():
            for h in range(num_heads):
                nn.init.orthogonal_(weight[h])
            ratio = head_dim / self.feature_dim
            weight.mul_((ratio if ratio >= 1 else 1 / ratio) ** 0.25)
        for name, value in (("q_proj", weight), ("k_proj", weight.clone())):
            if self.learn_projection:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def _project(self, x: Tensor, weight: Tensor | None) -> Tensor:
        if weight is None:
            return x
        if x.shape[1] != self.num_heads or x.shape[-1] != self.head_dim:
            raise ValueError(f"q and k must be shaped (B, heads={self.num_heads}, N, head_dim={self.head_dim}) for "
                             f"feature_dim={self.feature_dim}, got {tuple(x.shape)}")
        return x @ weight.to(x.dtype).transpose(-2, -1)

    def features(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """``q' = P_q q``, ``k' = P_k k`` per head (``(B, heads, N, f)``), or ``q, k`` when ``feature_dim`` is None."""
        return self._project(q, self.q_proj), self._project(k, self.k_proj)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        self._no_attn_mask(attn_mask)
        self.prepare(q, k, v, shape)
        return taylor_attention(*self.features(q, k), v, self.is_causal or is_causal, self.chunk_size)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...], is_causal: bool = False) -> Tensor:
        """Dense ``(B, heads, N, N)`` normalised kernel weights, computed in O(N^2) for the lens; ``is_causal`` as in
        ``forward``."""
        self.prepare(q, k, k, shape)
        return taylor_weights(*self.features(q, k), self.is_causal or is_causal)

    def state_bytes(self, batch_size: int = 1, num_heads: int | None = None, head_dim: int | None = None,
                    value_dim: int | None = None, dtype: torch.dtype = torch.float32) -> int:
        """Recurrent state ``(1 + f + f^2)(Dv + 1)`` elements per head, ``f = feature_dim`` (or ``head_dim`` when
        ``feature_dim`` is None; :func:`~visattn.ops.taylor.taylor_state_bytes`)."""
        num_heads, head_dim, value_dim = layout(num_heads, head_dim, value_dim, default_heads=self.num_heads,
                                                default_head_dim=self.head_dim)
        return taylor_state_bytes(batch_size, num_heads, self.feature_dim or head_dim, value_dim, dtype)

    def extra_repr(self) -> str:
        return f"is_causal={self.is_causal}, chunk_size={self.chunk_size}, feature_dim={self.feature_dim}"


@register_mixer("taylor", paper="decon_attention", complexity="O(N f^2 d)", family="reformulated",
                faces=("definition", "fast", "module"))
def taylor(is_causal: bool = False, chunk_size: int = 128, attn_drop: float = 0.0,
           feature_dim: int | None = BASED_FEATURE_DIM, num_heads: int = 8, head_dim: int = 64,
           learn_projection: bool = True) -> TaylorMixer:
    """2nd-order Taylor softmax 1 + s + s^2/2 on q, k projected to feature_dim (16, as in Based); O(N) in tokens."""
    return TaylorMixer(is_causal, chunk_size, attn_drop, feature_dim=feature_dim, num_heads=num_heads,
                       head_dim=head_dim, learn_projection=learn_projection)


class ElementwiseQKMixer(TokenMixer):
    """Deconstructing Attention's non-approximate variant: ``A = softmax((Q * K) 1^T / sqrt(d_h))``, ``Q = SiLU(q)``.

    ``Q * K`` is elementwise, so token ``t`` gets one score ``s_t = SiLU(q_t) . k_t / sqrt(d_h)`` instead of a score
    per pair. The product with the all-ones matrix can be read two ways:

    * ``score_axis="key"`` (default): ``A_ij = softmax_j(s_j)`` -- every query pools the (visible) values with
      weights set by each key token's own score. Output in O(N d): one pooled vector (non-causal) or a stable
      running softmax over the prefix (causal).
    * ``score_axis="query"``: the literal row-constant matrix ``S_ij = s_i``; softmax over keys then makes every
      row uniform, so the output is the (causal) mean of ``v`` and ``q``, ``k`` receive no gradient. Kept only to
      compare with the literal equation.

    ``q`` arrives as ``H W_Q`` from :class:`~visattn.nn.Attention`; the mixer applies SiLU to it
    (``query_activation``). ``forward(..., is_causal=True)`` runs the causal form for one call; ``attn_drop`` is
    accepted for timm compatibility and has no weights to drop (warns once in training when > 0).
    """

    supports_is_causal = True
    uses_attn_drop = False

    def __init__(self, is_causal: bool = False, score_axis: str = "key", query_activation: bool = True,
                 chunk_size: int = 128, attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
        if score_axis not in SCORE_AXES:
            raise ValueError(f"score_axis must be one of {SCORE_AXES}, got {score_axis!r}")
        self.is_causal = is_causal
        self.score_axis = score_axis
        self.query_activation = bool(query_activation)
        self.chunk_size = check_chunk_size(chunk_size)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        self._no_attn_mask(attn_mask)
        self.prepare(q, k, v, shape)
        return elementwise_qk_attention(q, k, v, self.is_causal or is_causal, self.score_axis, self.query_activation,
                                        self.chunk_size)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...], is_causal: bool = False) -> Tensor:
        """Dense ``(B, heads, N, N)`` weights, O(N^2), for the lens; ``is_causal`` as in ``forward``."""
        self.prepare(q, k, k, shape)
        return elementwise_qk_weights(q, k, self.is_causal or is_causal, self.score_axis, self.query_activation)

    def state_bytes(self, batch_size: int = 1, num_heads: int | None = None, head_dim: int | None = None,
                    value_dim: int | None = None, dtype: torch.dtype = torch.float32) -> int:
        """Causal scan state (running max, ``sum exp``, ``sum exp v``): ``Dv + 2`` elements per head."""
        num_heads, _, value_dim = layout(num_heads, head_dim, value_dim)
        return elementwise_qk_state_bytes(batch_size, num_heads, value_dim, dtype)

    def extra_repr(self) -> str:
        return f"is_causal={self.is_causal}, score_axis={self.score_axis!r}"


@register_mixer("elementwise_qk", paper="decon_attention", complexity="O(N d)", family="reformulated",
                faces=("definition", "fast", "module"))
def elementwise_qk(is_causal: bool = False, score_axis: str = "key", query_activation: bool = True,
                   chunk_size: int = 128, attn_drop: float = 0.0) -> ElementwiseQKMixer:
    """Non-approximate variant: softmax over keys of per-token scores SiLU(q_t) . k_t / sqrt(d); O(N d)."""
    return ElementwiseQKMixer(is_causal, score_axis, query_activation, chunk_size, attn_drop)


QK_SOURCES = ("random", "fixed", "static")


class DecoupledQKAttention(nn.Module):
    """Softmax attention whose queries and keys do not come from the current hidden state ``x``.

    ``out = proj(softmax(Q K^T / sqrt(d_h)) V)`` with ``V = x W_V`` and ``Q = E W_Q``, ``K = E W_K``, where ``E``:

    * ``source="random"`` (RndEmbQK): rows of a frozen random embedding table (``num_embeddings x dim``, N(0, 1),
      drawn once from ``seed``) looked up by ``token_ids`` -- token identity without learned meaning;
    * ``source="fixed"`` (FixedSeqQK): a frozen random sequence (``max_len x dim``), the same for every input, so
      the weights do not depend on the input at all;
    * ``source="static"`` (StaticEmbQK): ``qk_source``, the static token embeddings (the model's input embeddings,
      not the layer's hidden state), passed in by the caller.

    The paper's code was not available to us; "random" and "fixed" follow our reading of the variant names.
    """

    def __init__(self, dim: int, num_heads: int = 8, source: str = "static", num_embeddings: int | None = None,
                 max_len: int | None = None, qkv_bias: bool = False, is_causal: bool = False, seed: int = 0) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        if source not in QK_SOURCES:
            raise ValueError(f"source must be one of {QK_SOURCES}, got {source!r}")
        size = {"random": ("num_embeddings", num_embeddings), "fixed": ("max_len", max_len)}.get(source)
        if size is not None and (isinstance(size[1], bool) or not isinstance(size[1], int) or size[1] < 1):
            raise ValueError(f"source={source!r} needs {size[0]} as a positive int, got {size[1]!r}")
        self.dim, self.num_heads, self.source, self.is_causal = dim, num_heads, source, bool(is_causal)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if size is not None:
            gen = torch.Generator().manual_seed(seed)
            self.register_buffer("qk_table", torch.randn(size[1], dim, generator=gen))

    def qk_input(self, x: Tensor, qk_source: Tensor | None = None, token_ids: Tensor | None = None) -> Tensor:
        """The ``(B, N, dim)`` input ``E`` that queries and keys are computed from."""
        b, n, _ = x.shape
        if self.source == "static":
            if not isinstance(qk_source, Tensor) or qk_source.shape != x.shape:
                got = tuple(qk_source.shape) if isinstance(qk_source, Tensor) else qk_source
                raise ValueError(f"source='static' needs qk_source, the static embeddings shaped {tuple(x.shape)}, "
                                 f"got {got}")
            return qk_source
        if self.source == "random":
            if not isinstance(token_ids, Tensor) or token_ids.shape != (b, n) or token_ids.dtype != torch.long:
                got = f"{token_ids.dtype} {tuple(token_ids.shape)}" if isinstance(token_ids, Tensor) else token_ids
                raise ValueError(f"source='random' needs token_ids, a long tensor shaped {(b, n)}, got {got}")
            if bool((token_ids < 0).any()) or bool((token_ids >= self.qk_table.shape[0]).any()):
                raise ValueError(f"token_ids must lie in [0, num_embeddings={self.qk_table.shape[0]})")
            return self.qk_table[token_ids].to(x.dtype)
        if n > self.qk_table.shape[0]:
            raise ValueError(f"source='fixed' holds max_len={self.qk_table.shape[0]} positions, got N={n} tokens")
        return self.qk_table[:n].to(x.dtype).expand(b, -1, -1)

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.dim // self.num_heads).transpose(1, 2)

    def forward(self, x: Tensor, qk_source: Tensor | None = None, token_ids: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be shaped (B, N, C={self.dim}), got {got}")
        e = self.qk_input(x, qk_source, token_ids)
        q, k, v = self._heads(self.q(e)), self._heads(self.k(e)), self._heads(self.v(x))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.is_causal)
        return self.proj(out.transpose(1, 2).reshape(x.shape))


def __getattr__(name: str) -> object:
    """``GatedMLP`` (a timm ``SwiGLU``) lives in :mod:`.gated_mlp`, imported on first access: timm takes seconds."""
    if name == "GatedMLP":
        from .gated_mlp import GatedMLP

        return GatedMLP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
