"""Hierarchical Self-Attention (HSA) on a tree of tokens, by dynamic programming.

Paper: Amizadeh, Abdali, Li & Koishida, "Hierarchical Self-Attention: Generalizing Neural Attention Mechanics to
Multi-Scale Problems" (arXiv 2509.15448). No public code; the formulation below is our derivation of the
paper's stated principle, written out so it can be checked.

The tokens are the leaves of a tree. For queries ``i`` and keys ``j`` in different children ``a != b`` of their
lowest common ancestor, the attention is constant on the block ``a x b``: ``A_ij = w_ab``; the self pair
``(i, i)`` is its own block. Among such block-constant row-stochastic ``A``, HSA is the one closest in KL to
softmax attention, summed over the queries:

    A* = argmin_A  sum_i KL(A_i || softmax(s_i)),     s_ij = q_i . k_j * scale

Stationarity gives ``w_ab = exp(s_ab) g_a`` with ``s_ab = scale q_a . k_b`` (``q_a, k_b``: mean query and key of
the subtrees, since the block mean of a bilinear score is the score of the means) and ``log g_a`` the mean of
the leaves' log-normalisers in ``a``. The row constraints are solved exactly by two passes:

    bottom-up   log F_leaf = s_ii;   for node u with children c_1..c_b:
                L_k = log(F_{c_k} + sum_{l != k} |c_l| exp(s_{c_k c_l})),   log F_u = sum_k |c_k| / |u| L_k
    top-down    log m_root = 0;   log g_{c_k} = log m_u - L_k,   log m_{c_k} = log g_{c_k} + log F_{c_k}
    output      out_i = m_i v_i + sum over ancestors u of i (i in child c_k) sum_{l != k} w_{c_k c_l} |c_l| v_{c_l}

Cost O(M b^2 d) for the M internal nodes of branching b, plus O(N d) for the subtree means and the leaves;
no N x N matrix. A flat tree (every token a child of the root) has singleton blocks and gives exactly softmax
attention. Tree format: :func:`token_tree`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import as_shape, check_qkv

__all__ = ["TokenTree", "grid_tree", "hierarchical_attention", "hierarchical_weights", "token_tree"]


@dataclass(frozen=True)
class TokenTree:
    """A rooted tree whose leaves ``0..num_tokens-1`` are the tokens in order; nodes ``num_tokens..`` are internal.

    Attributes:
        parents: parent of every node, ``-1`` for the root.
        num_tokens: number of leaves (tokens).
        children: children of every node (empty for the tokens).
        internal: internal nodes, children before parents (a post-order).
        sizes: number of tokens under every node.
        leaves: the tokens under every node.
    """

    parents: tuple[int, ...]
    num_tokens: int
    children: tuple[tuple[int, ...], ...]
    internal: tuple[int, ...]
    sizes: tuple[int, ...]
    leaves: tuple[tuple[int, ...], ...]

    @property
    def root(self) -> int:
        return self.parents.index(-1)


def token_tree(parents: Sequence[int] | Tensor, num_tokens: int) -> TokenTree:
    """Validate a parent-index tree and precompute its layout.

    ``parents[u]`` is the parent of node ``u`` (``-1`` for the one root). Nodes ``0..num_tokens-1`` are the tokens
    and must be leaves; every other node must have at least one child, so the leaves are exactly the tokens.
    """
    if isinstance(parents, Tensor):
        parents = parents.tolist()
    if isinstance(parents, str) or not isinstance(parents, Sequence):
        raise TypeError(f"parents must be a sequence of ints, got {type(parents).__name__}")
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
    total = len(parents)
    if total <= num_tokens:
        raise ValueError(f"parents has {total} nodes; a tree over num_tokens={num_tokens} tokens needs them plus "
                         f"at least one internal node (the root)")
    for u, p in enumerate(parents):
        if isinstance(p, bool) or not isinstance(p, int) or not -1 <= p < total or p == u:
            raise ValueError(f"parents[{u}] must be -1 or another node index in [0, {total}), got {p!r}")
    roots = [u for u, p in enumerate(parents) if p == -1]
    if len(roots) != 1:
        raise ValueError(f"parents must have exactly one root (-1), got {len(roots)}: nodes {roots}")
    children: list[list[int]] = [[] for _ in range(total)]
    for u, p in enumerate(parents):
        if p >= 0:
            children[p].append(u)
    tokens_with_children = [u for u in range(num_tokens) if children[u]]
    if tokens_with_children:
        raise ValueError(f"tokens must be leaves, but tokens {tokens_with_children} have children")
    childless = [u for u in range(num_tokens, total) if not children[u]]
    if childless:
        raise ValueError(f"the tree does not cover the tokens: internal nodes {childless} have no children "
                         f"(leaves must be exactly the tokens 0..{num_tokens - 1})")
    order: list[int] = []
    stack = [(roots[0], False)]
    while stack:
        u, done = stack.pop()
        if done:
            order.append(u)
            continue
        stack.append((u, True))
        stack.extend((c, False) for c in children[u])
    if len(order) != total:
        unreached = sorted(set(range(total)) - set(order))
        raise ValueError(f"the tree does not cover the tokens: nodes {unreached[:10]} are not connected to the root "
                         f"(a cycle)")
    leaves: list[tuple[int, ...]] = [(u,) if u < num_tokens else () for u in range(total)]
    for u in order:
        if u >= num_tokens:
            leaves[u] = tuple(t for c in children[u] for t in leaves[c])
    return TokenTree(tuple(parents), num_tokens, tuple(tuple(c) for c in children),
                     tuple(u for u in order if u >= num_tokens), tuple(len(t) for t in leaves), tuple(leaves))


def grid_tree(shape: int | Sequence[int], group: int = 2, num_prefix_tokens: int = 0) -> TokenTree:
    """A tree over a row-major grid: blocks of ``group`` cells per axis merge level by level up to one root;
    prefix tokens are children of the root."""
    shape = as_shape(shape)
    if isinstance(group, bool) or not isinstance(group, int) or group < 2:
        raise ValueError(f"group must be an int >= 2, got {group!r}")
    cells = itertools.product(*(range(s) for s in shape))
    parents = [-1] * (num_prefix_tokens + math.prod(shape))
    current = {cell: num_prefix_tokens + i for i, cell in enumerate(cells)}
    while len(current) > 1 or len(parents) == num_prefix_tokens + math.prod(shape):
        coarse: dict[tuple[int, ...], int] = {}
        for cell, node in current.items():
            key = tuple(x // group for x in cell)
            if key not in coarse:
                coarse[key] = len(parents)
                parents.append(-1)
            parents[node] = coarse[key]
        current = coarse
    for t in range(num_prefix_tokens):
        parents[t] = len(parents) - 1
    return token_tree(parents, num_prefix_tokens + math.prod(shape))


def _passes(q: Tensor, k: Tensor, v: Tensor | None, tree: TokenTree, scale: float):
    """Bottom-up pass: subtree means of q, k (and v), ``log F`` per node, and per internal node its children's
    block scores ``(B, H, b, b)`` (diagonal -inf) and ``L_k`` ``(B, H, b)``."""
    n = tree.num_tokens
    total = len(tree.parents)
    qs: list[Tensor | None] = [None] * total
    ks: list[Tensor | None] = [None] * total
    vs: list[Tensor | None] = [None] * total
    log_f: list[Tensor | None] = [None] * total
    for t in range(n):
        qs[t], ks[t] = q[:, :, t], k[:, :, t]
        vs[t] = v[:, :, t] if v is not None else None
        log_f[t] = (q[:, :, t] * k[:, :, t]).sum(-1) * scale
    log_sizes = {u: torch.tensor([math.log(tree.sizes[c]) for c in tree.children[u]], dtype=q.dtype,
                                 device=q.device) for u in tree.internal}
    scores, big_l = {}, {}
    for u in tree.internal:
        ch = tree.children[u]
        frac = torch.tensor([tree.sizes[c] / tree.sizes[u] for c in ch], dtype=q.dtype, device=q.device)
        qc, kc = torch.stack([qs[c] for c in ch], 2), torch.stack([ks[c] for c in ch], 2)
        s = (qc @ kc.transpose(-2, -1)) * scale
        s = s.masked_fill(torch.eye(len(ch), dtype=torch.bool, device=q.device), float("-inf"))
        log_e = torch.logsumexp(s + log_sizes[u], dim=-1)
        big_l[u] = torch.logaddexp(torch.stack([log_f[c] for c in ch], -1), log_e)
        log_f[u] = (big_l[u] * frac).sum(-1)
        scores[u] = s
        qs[u], ks[u] = (qc * frac[:, None]).sum(2), (kc * frac[:, None]).sum(2)
        if v is not None:
            vs[u] = (torch.stack([vs[c] for c in ch], 2) * frac[:, None]).sum(2)
    return qs, ks, vs, log_f, scores, big_l


def _check_tree(q: Tensor, tree: TokenTree) -> None:
    if not isinstance(tree, TokenTree):
        raise TypeError(f"tree must be a TokenTree (see visattn.ops.hierarchical.token_tree), got "
                        f"{type(tree).__name__}")
    if q.shape[2] != tree.num_tokens:
        raise ValueError(f"the tree does not cover the tokens: it has {tree.num_tokens} leaves but q has "
                         f"N={q.shape[2]} tokens")


def hierarchical_attention(q: Tensor, k: Tensor, v: Tensor, tree: TokenTree, scale: float | None = None) -> Tensor:
    """HSA output ``(B, heads, N, head_dim_v)`` by the two-pass dynamic programme (module docstring)."""
    check_qkv(q, k, v)
    _check_tree(q, tree)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    _, _, vs, log_f, scores, big_l = _passes(q, k, v, tree, scale)
    log_m: dict[int, Tensor] = {tree.root: torch.zeros(q.shape[:2], dtype=q.dtype, device=q.device)}
    acc: dict[int, Tensor] = {tree.root: torch.zeros(*q.shape[:2], v.shape[-1], dtype=v.dtype, device=v.device)}
    for u in reversed(tree.internal):
        ch = tree.children[u]
        log_g = log_m[u].unsqueeze(-1) - big_l[u]
        weights = torch.exp(scores[u] + log_g.unsqueeze(-1))
        sizes = torch.tensor([float(tree.sizes[c]) for c in ch], dtype=v.dtype, device=v.device)
        msgs = weights @ (torch.stack([vs[c] for c in ch], 2) * sizes[:, None])
        for i, c in enumerate(ch):
            log_m[c] = log_g[..., i] + log_f[c]
            acc[c] = acc[u] + msgs[:, :, i]
    return torch.stack([acc[t] + log_m[t].exp().unsqueeze(-1) * v[:, :, t] for t in range(tree.num_tokens)], 2)


def hierarchical_weights(q: Tensor, k: Tensor, tree: TokenTree, scale: float | None = None) -> Tensor:
    """The dense HSA weights ``(B, heads, N, N)`` from the same passes (for the lens and tests), O(N^2)."""
    check_qkv(q, k, k)
    _check_tree(q, tree)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    _, _, _, log_f, scores, big_l = _passes(q, k, None, tree, scale)
    n = tree.num_tokens
    out = q.new_zeros(*q.shape[:2], n, n)
    log_m = {tree.root: q.new_zeros(q.shape[:2])}
    for u in reversed(tree.internal):
        ch = tree.children[u]
        log_g = log_m[u].unsqueeze(-1) - big_l[u]
        weights = torch.exp(scores[u] + log_g.unsqueeze(-1))
        for i, a in enumerate(ch):
            log_m[a] = log_g[..., i] + log_f[a]
            rows = torch.tensor(tree.leaves[a], device=q.device)
            for j, b in enumerate(ch):
                if i != j:
                    cols = torch.tensor(tree.leaves[b], device=q.device)
                    out[:, :, rows[:, None], cols] = weights[:, :, i, j, None, None]
    idx = torch.arange(n, device=q.device)
    out[:, :, idx, idx] = torch.stack([log_m[t].exp() for t in range(n)], -1)
    return out
