"""Deconstructing Attention: controlled variants that each relax one principle of dot-product attention.

Paper: Xue, Moosavi & Aletras, "Deconstructing Attention: Investigating Design Principles for Effective Language
Modeling" (arXiv 2510.11602; code HUIYINXUE/DeconAttn, which was not available to us: the forms below follow the
paper notes). ``V = H W_V`` in every variant; a hybrid model uses a variant in odd layers only.

* no token mixing — :class:`GatedMLP`: ``FC_down(SiLU(FC_gate H) * FC_up H)`` in place of attention.
* approximate form — ``"taylor"`` (:class:`TaylorMixer`): softmax's ``exp(x)`` replaced by its 2nd-order Taylor
  expansion ``1 + x + x^2/2`` with ``x = q . k / sqrt(d)`` (as in Based), linearised by the feature map
  ``phi(x) = [1, x / d^(1/4), (x (x) x) / sqrt(2 d)]`` so that ``phi(q) . phi(k) = 1 + x + x^2/2`` (> 0):
  ``out_i = phi(q_i) sum_j phi(k_j) v_j^T / phi(q_i) . sum_j phi(k_j)``, O(N d^3), causal by chunked prefix sums.
* non-approximate form — ``"elementwise_qk"`` (:class:`ElementwiseQKMixer`): ``A = softmax((Q * K) 1^T /
  sqrt(d_h))`` with ``Q = SiLU(H W_Q)`` and ``*`` the elementwise product; see the class for how the product is
  contracted.
* Q, K decoupled from the evolving hidden state — :class:`DecoupledQKAttention` with ``source`` ``"random"``
  (RndEmbQK), ``"fixed"`` (FixedSeqQK) or ``"static"`` (StaticEmbQK).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = [
    "DecoupledQKAttention",
    "ElementwiseQKMixer",
    "GatedMLP",  # noqa: F822  (resolved by the module __getattr__)
    "TaylorMixer",
    "elementwise_qk_attention",
    "elementwise_qk_weights",
    "taylor_attention",
    "taylor_feature_map",
    "taylor_weights",
]


def _check_chunk(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def _no_weight_dropout(attn_drop: float, name: str) -> float:
    if attn_drop != 0.0:
        raise ValueError(f"attn_drop must be 0 for {name}: it never materialises the attention weights to drop, "
                         f"got {attn_drop!r}")
    return attn_drop


def _causal(n: int, device: torch.device) -> Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def taylor_feature_map(x: Tensor) -> Tensor:
    """``phi(x) = [1, x / d^(1/4), vec(x x^T) / sqrt(2 d)]`` (``1 + d + d^2`` features) so that
    ``phi(q) . phi(k) = 1 + s + s^2 / 2`` with ``s = q . k / sqrt(d)``."""
    d = x.shape[-1]
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / math.sqrt(2.0 * d)
    return torch.cat((torch.ones_like(x[..., :1]), x / d ** 0.25, outer), dim=-1)


def taylor_weights(q: Tensor, k: Tensor, is_causal: bool = False) -> Tensor:
    """Dense normalised weights ``(1 + s + s^2/2) / sum_l (...)`` with ``s = q k^T / sqrt(d)`` (O(N^2))."""
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    kernel = 1.0 + s + 0.5 * s * s
    if is_causal:
        kernel = kernel.masked_fill(~_causal(q.shape[-2], q.device), 0.0)
    return kernel / kernel.sum(dim=-1, keepdim=True)


def taylor_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, chunk_size: int = 128) -> Tensor:
    """2nd-order Taylor linear attention ``phi(q) (phi(K)^T V) / phi(q) . sum phi(K)`` in O(N d^3) time.

    Tokens are processed ``chunk_size`` at a time, so memory is O(chunk_size d^2 + d^3), never N x N or N x d^2.
    Causal: within a chunk the kernel ``1 + s + s^2/2`` is computed directly on the ``chunk x chunk`` block (masked),
    and earlier chunks enter through the running state ``sum_j phi(k_j) v_j^T`` and ``sum_j phi(k_j)``.
    """
    chunk_size = _check_chunk(chunk_size)
    n = q.shape[-2]
    state = q.new_zeros(*q.shape[:-2], 1 + q.shape[-1] + q.shape[-1] ** 2, v.shape[-1])
    norm = q.new_zeros(*q.shape[:-2], 1, state.shape[-2])
    if not is_causal:
        for start in range(0, n, chunk_size):
            phi_k = taylor_feature_map(k[..., start:start + chunk_size, :])
            state = state + phi_k.transpose(-2, -1) @ v[..., start:start + chunk_size, :]
            norm = norm + phi_k.sum(dim=-2, keepdim=True)
        out = []
        for start in range(0, n, chunk_size):
            phi_q = taylor_feature_map(q[..., start:start + chunk_size, :])
            out.append((phi_q @ state) / (phi_q @ norm.transpose(-2, -1)))
        return torch.cat(out, dim=-2)
    out = []
    scale = 1.0 / math.sqrt(q.shape[-1])
    for start in range(0, n, chunk_size):
        qc, kc, vc = (t[..., start:start + chunk_size, :] for t in (q, k, v))
        s = (qc @ kc.transpose(-2, -1)) * scale
        kernel = (1.0 + s + 0.5 * s * s).masked_fill(~_causal(qc.shape[-2], q.device), 0.0)
        phi_q, phi_k = taylor_feature_map(qc), taylor_feature_map(kc)
        numerator = kernel @ vc + phi_q @ state
        denominator = kernel.sum(dim=-1, keepdim=True) + phi_q @ norm.transpose(-2, -1)
        out.append(numerator / denominator)
        state = state + phi_k.transpose(-2, -1) @ vc
        norm = norm + phi_k.sum(dim=-2, keepdim=True)
    return torch.cat(out, dim=-2)


class TaylorMixer(TokenMixer):
    """2nd-order Taylor softmax approximation (Deconstructing Attention's "approximate" variant, as in Based).

    Args:
        is_causal: causal prefix sums over the token order (the paper's language-model setting).
        chunk_size: tokens per chunk (memory O(chunk_size d^2)).
    """

    def __init__(self, is_causal: bool = False, chunk_size: int = 128, attn_drop: float = 0.0) -> None:
        super().__init__(_no_weight_dropout(attn_drop, "taylor"))
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
        self.is_causal = is_causal
        self.chunk_size = _check_chunk(chunk_size)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        self._no_attn_mask(attn_mask)
        self.prepare(q, k, v, shape)
        return taylor_attention(q, k, v, self.is_causal, self.chunk_size)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        """Dense ``(B, heads, N, N)`` normalised kernel weights, computed in O(N^2) for the lens."""
        self.prepare(q, k, k, shape)
        return taylor_weights(q, k, self.is_causal)

    def extra_repr(self) -> str:
        return f"is_causal={self.is_causal}, chunk_size={self.chunk_size}"


@register_mixer("taylor", paper="decon_attention", complexity="O(N d^3)", family="reformulated",
                faces=("definition", "fast", "module"))
def taylor(is_causal: bool = False, chunk_size: int = 128, attn_drop: float = 0.0) -> TaylorMixer:
    """2nd-order Taylor softmax 1 + s + s^2/2 linearised by its feature map (as in Based); O(N) in tokens."""
    return TaylorMixer(is_causal, chunk_size, attn_drop)


SCORE_AXES = ("key", "query")


def _elementwise_scores(q: Tensor, k: Tensor, query_activation: bool) -> Tensor:
    q = F.silu(q) if query_activation else q
    return (q * k).sum(dim=-1) / math.sqrt(q.shape[-1])


def elementwise_qk_weights(q: Tensor, k: Tensor, is_causal: bool = False, score_axis: str = "key",
                           query_activation: bool = True) -> Tensor:
    """Dense weights ``(..., N, N)`` of the non-approximate variant (O(N^2)); see :class:`ElementwiseQKMixer`."""
    if score_axis not in SCORE_AXES:
        raise ValueError(f"score_axis must be one of {SCORE_AXES}, got {score_axis!r}")
    s = _elementwise_scores(q, k, query_activation)
    n = s.shape[-1]
    logits = s.unsqueeze(-2).expand(*s.shape[:-1], n, n) if score_axis == "key" \
        else s.unsqueeze(-1).expand(*s.shape, n)
    if is_causal:
        logits = logits.masked_fill(~_causal(n, s.device), float("-inf"))
    return torch.softmax(logits, dim=-1)


def _causal_key_softmax(s: Tensor, v: Tensor, chunk_size: int) -> Tensor:
    """``out_i = sum_{j<=i} exp(s_j) v_j / sum_{j<=i} exp(s_j)`` in O(N d) memory, stable for any range of ``s``.

    A running (max, sum exp, sum exp v) state carries earlier chunks; inside a chunk each row is referenced to its
    own running maximum, so no term overflows and the carried sum is never below ``exp(0)``.
    """
    n = s.shape[-1]
    run_max = s.new_full((*s.shape[:-1], 1), float("-inf"))
    run_den = s.new_zeros(*s.shape[:-1], 1)
    run_num = v.new_zeros(*v.shape[:-2], 1, v.shape[-1])
    out = []
    for start in range(0, n, chunk_size):
        sc, vc = s[..., start:start + chunk_size], v[..., start:start + chunk_size, :]
        reference = torch.maximum(torch.cummax(sc, dim=-1).values, run_max).detach()
        tril = _causal(sc.shape[-1], s.device)
        weights = torch.where(tril, sc.unsqueeze(-2) - reference.unsqueeze(-1), float("-inf")).exp()
        carry = (run_max - reference).exp()
        numerator = weights @ vc + carry.unsqueeze(-1) * run_num
        denominator = weights.sum(dim=-1) + carry * run_den
        out.append(numerator / denominator.unsqueeze(-1))
        new_max = torch.maximum(run_max, sc.amax(dim=-1, keepdim=True)).detach()
        decay = (run_max - new_max).exp()
        scaled = (sc - new_max).exp()
        run_num = decay.unsqueeze(-1) * run_num + scaled.unsqueeze(-2) @ vc
        run_den = decay * run_den + scaled.sum(dim=-1, keepdim=True)
        run_max = new_max
    return torch.cat(out, dim=-2)


def elementwise_qk_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, score_axis: str = "key",
                             query_activation: bool = True, chunk_size: int = 128) -> Tensor:
    """Output of the non-approximate variant in O(N d) (see :class:`ElementwiseQKMixer`)."""
    if score_axis not in SCORE_AXES:
        raise ValueError(f"score_axis must be one of {SCORE_AXES}, got {score_axis!r}")
    chunk_size = _check_chunk(chunk_size)
    n = q.shape[-2]
    if score_axis == "query":
        if is_causal:
            return v.cumsum(dim=-2) / torch.arange(1, n + 1, device=v.device, dtype=v.dtype).unsqueeze(-1)
        return v.mean(dim=-2, keepdim=True).expand_as(v)
    s = _elementwise_scores(q, k, query_activation)
    if is_causal:
        return _causal_key_softmax(s, v, chunk_size)
    pooled = torch.softmax(s, dim=-1).unsqueeze(-2) @ v
    return pooled.expand(*v.shape[:-2], n, v.shape[-1])


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
    (``query_activation``).
    """

    def __init__(self, is_causal: bool = False, score_axis: str = "key", query_activation: bool = True,
                 chunk_size: int = 128, attn_drop: float = 0.0) -> None:
        super().__init__(_no_weight_dropout(attn_drop, "elementwise_qk"))
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
        if score_axis not in SCORE_AXES:
            raise ValueError(f"score_axis must be one of {SCORE_AXES}, got {score_axis!r}")
        self.is_causal = is_causal
        self.score_axis = score_axis
        self.query_activation = bool(query_activation)
        self.chunk_size = _check_chunk(chunk_size)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        self._no_attn_mask(attn_mask)
        self.prepare(q, k, v, shape)
        return elementwise_qk_attention(q, k, v, self.is_causal, self.score_axis, self.query_activation,
                                        self.chunk_size)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        """Dense ``(B, heads, N, N)`` weights, O(N^2), for the lens."""
        self.prepare(q, k, k, shape)
        return elementwise_qk_weights(q, k, self.is_causal, self.score_axis, self.query_activation)

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
        for name, value in (("dim", dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
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
