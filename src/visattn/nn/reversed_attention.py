"""DependencyViT's reversed attention: children send messages to the parents they choose.

Paper: Ding et al., "Visual Dependency Transformers: Dependency Tree Emerges from Reversed Attention"
(arXiv 2304.03282; code read from timm PR #2062, the paper names dingmyu/DependencyViT). Per head ``h``:

    A_F = softmax(q k^T d^-1/2)                      (row j: the parent distribution child j chooses)
    p   = softmax_h(W_p x / 0.1)                     (head selector, per token)
    m   = m_prev * sigmoid(MLP(x))                   (message controller, dim -> dim/2 -> 1, GELU, no bias)
    A_R[i, j] = A_F[j, i] * p_h,j * m_j              (sender column j is scaled)
    out = A_R V

``m`` is cumulative over layers (``m_1 m_2 ... m_l``). Here it flows explicitly: :class:`ReversedAttention` and
:class:`ReversedBlock` take ``message`` (``(B, N)``, None = all ones) and return ``(out, message)``, and
:class:`ReversedEncoder` chains blocks. The registry mixer ``"reversed"`` (for :class:`~visattn.nn.Attention`,
which passes only ``x``) starts every layer from ``m_prev = 1`` unless ``message=`` is passed to it.

The dependency mask ``D = sum_h A_R`` gives each token ``j`` one parent ``argmax_i D[i, j]``
(:func:`dependency_tree`). DependencyViT-Lite prunes tokens at layers 2, 5, 8, 11 (1-based) with ratio 0.16,
keeping the tokens with the largest ``m`` (the paper's criterion; the timm PR scores by ``D.sum(-1)`` instead).
The counts follow the timm PR: the k-th pruning keeps ``floor(N_prev (1 - k r) / (1 - (k - 1) r))`` tokens, about
``1 - k r`` of the original N (:func:`lite_keep_counts`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._checks import as_shape
from ..ops.reversed_attention import reversed_attention, reversed_weights
from ..registry import register_mixer
from .attention import Attention
from .token_mixer import TokenMixer

__all__ = [
    "ReversedAttention",
    "ReversedBlock",
    "ReversedEncoder",
    "ReversedMixer",
    "dependency_mask",
    "dependency_tree",
    "lite_keep_counts",
    "prune_tokens",
]

LITE_LAYERS = (2, 5, 8, 11)
LITE_RATIO = 0.16


def dependency_mask(weights: Tensor) -> Tensor:
    """``D = sum_h A_R``: ``(B, N, N)`` from reversed weights ``(B, heads, N, N)``; ``D[i, j]`` is what receiver
    ``i`` gets from sender ``j``."""
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"weights must be reversed attention weights (B, heads, N, N), got {tuple(weights.shape)}")
    return weights.sum(dim=1)


def dependency_tree(weights: Tensor, exclude_self: bool = False) -> Tensor:
    """One parent per token: ``parent[b, j] = argmax_i D[b, i, j]`` with ``D = sum_h A_R`` (``(B, N)`` long).

    ``weights`` are reversed weights ``(B, heads, N, N)`` or a dependency mask ``(B, N, N)``. A token whose
    parent is itself is a root; ``exclude_self`` forbids that (every token then points elsewhere; needs N >= 2).
    As in the paper, the parents are chosen independently per token, so the graph is not forced to be acyclic.
    """
    if not isinstance(weights, Tensor) or weights.dim() not in (3, 4) or weights.shape[-1] != weights.shape[-2]:
        got = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights must be (B, heads, N, N) reversed weights or a (B, N, N) dependency mask, "
                         f"got {got}")
    mask = dependency_mask(weights) if weights.dim() == 4 else weights
    if exclude_self:
        n = mask.shape[-1]
        if n < 2:
            raise ValueError(f"exclude_self needs at least 2 tokens, got N={n}")
        eye = torch.eye(n, dtype=torch.bool, device=mask.device)
        mask = mask.masked_fill(eye, float("-inf"))
    return mask.argmax(dim=-2)


def _check_ratio(ratio: float, num_prunes: int) -> None:
    if isinstance(num_prunes, bool) or not isinstance(num_prunes, int) or num_prunes < 0:
        raise ValueError(f"num_prunes must be an int >= 0, got {num_prunes!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio * max(num_prunes, 1) < 1:
        raise ValueError(f"ratio must be > 0 with num_prunes * ratio < 1, got ratio={ratio!r}, num_prunes={num_prunes}")


def lite_keep_counts(num_tokens: int, num_prunes: int = len(LITE_LAYERS), ratio: float = LITE_RATIO) -> list[int]:
    """Tokens kept after each of ``num_prunes`` Lite prunings of ``num_tokens`` tokens.

    The k-th pruning keeps ``floor(n_{k-1} (1 - k ratio) / (1 - (k - 1) ratio))`` of the ``n_{k-1}`` tokens left
    (timm PR #2062), i.e. about ``1 - k ratio`` of the original tokens: 196 -> 164, 132, 100, 69 with the defaults.
    """
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
    _check_ratio(ratio, num_prunes)
    counts, left = [], num_tokens
    for k in range(1, num_prunes + 1):
        left = max(1, math.floor(left * (1 - k * ratio) / (1 - (k - 1) * ratio)))
        counts.append(left)
    return counts


def prune_tokens(x: Tensor, message: Tensor, keep: int, num_prefix_tokens: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the prefix tokens and the ``keep`` other tokens with the largest ``message``, in their original order.

    Returns ``(x, message, index)`` with ``index`` ``(B, num_prefix_tokens + keep)`` the kept positions.
    """
    b, n, c = x.shape
    if message.shape != (b, n):
        raise ValueError(f"message must be shaped (B, N)={(b, n)}, got {tuple(message.shape)}")
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n - num_prefix_tokens:
        raise ValueError(f"keep must be an int in [1, {n - num_prefix_tokens}], got {keep!r}")
    top = message[:, num_prefix_tokens:].topk(keep, dim=-1).indices.sort(dim=-1).values + num_prefix_tokens
    prefix = torch.arange(num_prefix_tokens, device=x.device).expand(b, -1)
    index = torch.cat((prefix, top), dim=-1)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, c)), message.gather(1, index), index


class ReversedMixer(TokenMixer):
    """Reversed attention as a token mixer; needs the layer input ``x`` (``uses_input = True``).

    Parameters: ``head_selector`` (``W_p``, ``dim -> num_heads``, no bias) and ``message_controller``
    (timm ``Mlp`` ``dim -> dim/2 -> 1``, GELU, no bias). ``forward(..., x=, message=)`` uses ``message`` as
    ``m_prev`` (``(B, N)``; None = ones); :meth:`forward_with_message` also returns the new ``m``.
    """

    uses_input = True

    def __init__(self, dim: int = 64, num_heads: int = 8, temperature: float = 0.1, scale: float | None = None,
                 attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        for name, value in (("dim", dim), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.temperature = float(temperature)
        self.scale = scale
        self.head_selector = nn.Linear(dim, num_heads, bias=False)
        from timm.layers import Mlp

        self.message_controller = Mlp(dim, max(dim // 2, 1), 1, act_layer=nn.GELU, bias=False)

    def _check_x(self, x: Tensor | None, q: Tensor) -> Tensor:
        if x is None:
            raise ValueError("x (the (B, N, C) layer input) is required: reversed attention computes its head "
                             "selector and message controller from it; use visattn.Attention(..., mixer='reversed')")
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim or x.shape[:2] != (q.shape[0],
                                                                                                   q.shape[2]):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be shaped (B, N, C)={(q.shape[0], q.shape[2], self.dim)}, got {got}")
        return x

    def head_weights(self, x: Tensor) -> Tensor:
        """Head selector ``p = softmax_h(W_p x / temperature)``: ``(B, heads, N)``."""
        return torch.softmax(self.head_selector(x) / self.temperature, dim=-1).transpose(1, 2)

    def message(self, x: Tensor, message: Tensor | None = None) -> Tensor:
        """Message controller ``m = m_prev sigmoid(MLP(x))``: ``(B, N)``; ``m_prev`` defaults to ones."""
        gate = torch.sigmoid(self.message_controller(x)).squeeze(-1)
        if message is None:
            return gate
        if not isinstance(message, Tensor) or message.shape != gate.shape:
            got = tuple(message.shape) if isinstance(message, Tensor) else type(message).__name__
            raise ValueError(f"message must be shaped (B, N)={tuple(gate.shape)}, got {got}")
        return message.to(gate.dtype) * gate

    def forward_with_message(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...], x: Tensor,
                             message: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(A_R v, m)`` with ``m = message * sigmoid(MLP(x))``."""
        self.prepare(q, k, v, shape)
        x = self._check_x(x, q)
        m = self.message(x, message)
        out = reversed_attention(q, k, v, self.head_weights(x).to(q.dtype), m.to(q.dtype), self.scale,
                                 self.dropout_p)
        return out, m

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None, x: Tensor | None = None, message: Tensor | None = None) -> Tensor:
        self._no_attn_mask(attn_mask)
        return self.forward_with_message(q, k, v, shape, x, message)[0]

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...], x: Tensor | None = None,
                          message: Tensor | None = None) -> Tensor:
        """Reversed weights ``A_R`` ``(B, heads, N, N)``; needs ``x``."""
        self.prepare(q, k, k, shape)
        x = self._check_x(x, q)
        return reversed_weights(q, k, self.head_weights(x).to(q.dtype), self.message(x, message).to(q.dtype),
                                self.scale)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, temperature={self.temperature}"


@register_mixer("reversed", paper="dependency_vit", complexity="O(N^2)", family="reformulated",
                faces=("definition", "module"))
def reversed_mixer(dim: int = 64, num_heads: int = 8, temperature: float = 0.1, scale: float | None = None,
                   attn_drop: float = 0.0) -> ReversedMixer:
    """DependencyViT reversed attention: A_F^T scaled by head selector p_j and message m_j of each sender j."""
    return ReversedMixer(dim, num_heads, temperature, scale, attn_drop)


class ReversedAttention(Attention):
    """Reversed self-attention on ``(B, N, C)`` tokens that carries the message ``m`` between layers.

    timm-style projections (``qkv``, ``q_norm``, ``k_norm``, ``proj``) around a :class:`ReversedMixer` (``mixer``).
    ``forward(x, message=None, shape=None)`` returns ``(out, m)`` with ``m = message * sigmoid(MLP(x))``.
    Reversed attention does not use the grid, so tokens need not form a square (after Lite pruning they do not);
    ``shape`` defaults to the 1-D layout of the tokens after the prefix.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, temperature: float = 0.1, **kwargs) -> None:
        mixer = ReversedMixer(dim, num_heads, temperature, attn_drop=attn_drop)
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, attn_drop=attn_drop, proj_drop=proj_drop,
                         mixer=mixer, **kwargs)

    def forward(self, x: Tensor, message: Tensor | None = None,  # type: ignore[override]
                shape: int | tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"x must be shaped (B, N, C), got {tuple(x.shape) if isinstance(x, Tensor) else x!r}")
        b, n, _ = x.shape
        grid = as_shape(shape) if shape is not None else (max(n - self.num_prefix_tokens, 1),)
        q, k, v = self.qkv_heads(x)
        out, m = self.mixer.forward_with_message(q, k, v, grid, x, message)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj_drop(self.proj(out)), m


class ReversedBlock(nn.Module):
    """Pre-norm transformer block with reversed attention: ``x + ls1(attn(norm1(x), m))``, then the MLP.

    ``forward(x, message=None)`` returns ``(x, m)``. Layer scale (``init_values``) and drop path as in timm.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 init_values: float | None = None, drop_path: float = 0.0, temperature: float = 0.1,
                 norm_layer: type[nn.Module] = nn.LayerNorm) -> None:
        from timm.layers import DropPath, LayerScale, Mlp

        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = ReversedAttention(dim, num_heads, qkv_bias=qkv_bias, temperature=temperature)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, message: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, m = self.attn(self.norm1(x), message)
        x = x + self.drop_path1(self.ls1(out))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), m


class ReversedEncoder(nn.Module):
    """A stack of :class:`ReversedBlock` carrying ``m`` through the layers, with DependencyViT-Lite pruning.

    After each block whose 1-based index is in ``prune_layers``, the tokens with the smallest ``m`` are dropped
    (prefix tokens are always kept) down to :func:`lite_keep_counts`. ``forward(x)`` returns ``(x, m, index)``:
    the final tokens, their messages and their positions in the input. Lite: ``prune_layers=(2, 5, 8, 11)``,
    ``prune_ratio=0.16``.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 init_values: float | None = 1e-6, prune_layers: Sequence[int] = (), prune_ratio: float = LITE_RATIO,
                 num_prefix_tokens: int = 0, temperature: float = 0.1) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        layers = sorted(set(prune_layers))
        if any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= depth for i in layers):
            raise ValueError(f"prune_layers must be 1-based layer indices in [1, {depth}], got {tuple(prune_layers)}")
        _check_ratio(prune_ratio, len(layers))
        self.prune_layers = tuple(layers)
        self.prune_ratio = float(prune_ratio)
        self.num_prefix_tokens = num_prefix_tokens
        self.blocks = nn.ModuleList(
            ReversedBlock(dim, num_heads, mlp_ratio, qkv_bias, init_values, temperature=temperature)
            for _ in range(depth)
        )

    def forward(self, x: Tensor, message: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        grid_tokens = n - self.num_prefix_tokens
        keep = iter(lite_keep_counts(grid_tokens, len(self.prune_layers), self.prune_ratio))
        index = torch.arange(n, device=x.device).expand(b, -1)
        m = message
        for layer, block in enumerate(self.blocks, start=1):
            x, m = block(x, m)
            if layer in self.prune_layers:
                x, m, kept = prune_tokens(x, m, next(keep), self.num_prefix_tokens)
                index = index.gather(1, kept)
        return x, m, index
