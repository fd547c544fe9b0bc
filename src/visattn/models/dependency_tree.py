"""DependencyViT's dependency tree: read out of the dependency masks of a forward pass, and drawn over the image.

Paper: Ding et al., "Visual Dependency Transformers: Dependency Tree Emerges from Reversed Attention"
(arXiv 2304.03282). A reversed-attention layer's dependency mask ``D = sum_h A_R`` (``D[i, j]``: what receiver ``i``
gets from sender ``j``) scores every candidate parent ``i`` of every child ``j``. Choosing each child's parent on
its own (``argmax_i D[i, j]``, the paper's readout, :func:`visattn.nn.reversed_attention.dependency_tree`) can
close cycles and leave several roots or none. :func:`tree_from_scores` returns the tree closest to it: the
spanning tree with one root ``r`` that maximises

    sum_{j != r} D[parent(j), j] + D[r, r]

(a token's "parent" score is ``D[parent, j]``; the root scores its self-dependency), found exactly with
Chu-Liu/Edmonds' maximum arborescence under a virtual super-root whose edges cost more than any tree gains, so
that it has exactly one child. Where the per-token argmax already is a tree with one self-parented root, it is that
tree. ``parent[r] = r`` marks the root, as in :func:`visattn.nn.reversed_attention.dependency_tree`.

:func:`attach_pruned` hangs the tokens DependencyViT-Lite pruned after a layer onto the tokens it kept, by the same
scores of that layer, so a pruned model still gives one tree over every patch. :func:`dependency_tree_figure` draws
a tree over the image.

The search runs on the host in float64 (a readout after the forward pass, ``O(N^3)`` at worst, milliseconds at
N = 196); results are returned on the scores' device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["attach_pruned", "dependency_tree_figure", "is_tree", "maximum_arborescence", "tree_from_scores",
           "tree_depths"]


def _find_cycle(parent: np.ndarray, root: int) -> list[int] | None:
    """A cycle of the parent graph (every node but ``root`` has a parent), or None."""
    state = np.zeros(len(parent), dtype=np.int8)  # 0 unseen, 1 on the current path, 2 done
    state[root] = 2
    for start in range(len(parent)):
        path, node = [], start
        while state[node] == 0:
            state[node] = 1
            path.append(node)
            node = int(parent[node])
        if state[node] == 1:
            return path[path.index(node):]
        state[path] = 2
    return None


def _arborescence(scores: np.ndarray, root: int) -> np.ndarray:
    """Chu-Liu/Edmonds on ``scores[parent, child]`` (float64, -inf = no edge); ``parent[root] = root``."""
    n = scores.shape[0]
    s = scores.copy()
    np.fill_diagonal(s, -np.inf)
    s[:, root] = -np.inf
    parent = s.argmax(axis=0)
    parent[root] = root
    cycle = _find_cycle(parent, root)
    if cycle is None:
        return parent
    in_cycle = np.zeros(n, dtype=bool)
    in_cycle[cycle] = True
    rest = np.flatnonzero(~in_cycle)
    cyc = np.asarray(cycle)
    m = len(rest)
    contracted = np.full((m + 1, m + 1), -np.inf)
    contracted[:m, :m] = s[np.ix_(rest, rest)]
    entering = s[np.ix_(rest, cyc)] - s[parent[cyc], cyc]  # gain of u -> v replacing v's cycle edge
    enter_at = entering.argmax(axis=1)
    contracted[:m, m] = entering[np.arange(m), enter_at]
    leaving = s[np.ix_(cyc, rest)]
    leave_from = leaving.argmax(axis=0)
    contracted[m, :m] = leaving[leave_from, np.arange(m)]
    sub = _arborescence(contracted, int(np.flatnonzero(rest == root)[0]))
    out = parent.copy()
    for p, w in enumerate(rest):
        out[w] = cyc[leave_from[p]] if sub[p] == m else rest[sub[p]]
    u = sub[m]
    out[cyc[enter_at[u]]] = rest[u]
    out[root] = root
    return out


def _check_scores(scores: Tensor, name: str = "scores") -> None:
    if not isinstance(scores, Tensor) or scores.dim() != 2 or scores.shape[0] != scores.shape[1] or scores.numel() == 0:
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"{name} must be a non-empty square (N, N) matrix of parent -> child scores, got {got}")
    if scores.device.type == "meta":
        raise ValueError(f"{name} is on the meta device: a tree needs values; run the model on a real device")


def maximum_arborescence(scores: Tensor, root: int) -> Tensor:
    """The spanning tree rooted at ``root`` maximising ``sum_{j != root} scores[parent(j), j]`` (Chu-Liu/Edmonds).

    ``scores`` ``(N, N)`` holds ``scores[i, j]`` for the edge parent ``i`` -> child ``j``; the diagonal is ignored.
    Returns ``parent`` ``(N,)`` long with ``parent[root] = root``, on ``scores.device``.
    """
    _check_scores(scores)
    n = scores.shape[0]
    if isinstance(root, bool) or not isinstance(root, int) or not 0 <= root < n:
        raise ValueError(f"root must be an int in [0, {n}), got {root!r}")
    parent = _arborescence(scores.detach().double().cpu().numpy(), root)
    return torch.as_tensor(parent, dtype=torch.long).to(scores.device)


def tree_from_scores(scores: Tensor) -> Tensor:
    """The tree with one root maximising ``sum_{j != r} scores[parent(j), j] + scores[r, r]`` (module docstring).

    ``scores``: ``(N, N)`` or a batch ``(B, N, N)`` of dependency masks ``D`` (``D[i, j]``: receiver ``i``, sender
    ``j``). Returns ``parent`` ``(N,)`` / ``(B, N)`` long, the root pointing to itself.
    """
    if isinstance(scores, Tensor) and scores.dim() == 3:
        return torch.stack([tree_from_scores(s) for s in scores]) if len(scores) else scores.new_zeros(
            scores.shape[:2], dtype=torch.long)
    _check_scores(scores)
    d = scores.detach().double().cpu().numpy()
    n = d.shape[0]
    finite = d[np.isfinite(d)]
    if finite.size != d.size:
        raise ValueError("scores must be finite")
    # A super-root n with edges D[j, j] - M: with M above any tree's spread, the best tree uses exactly one of them.
    big = (n + 1) * (float(finite.max() - finite.min()) + 1.0)
    s = np.full((n + 1, n + 1), -np.inf)
    s[:n, :n] = d
    s[n, :n] = np.diag(d) - big
    parent = _arborescence(s, n)[:n]
    parent[parent == n] = np.flatnonzero(parent == n)
    return torch.as_tensor(parent, dtype=torch.long).to(scores.device)


def attach_pruned(parent: Tensor, scores: Tensor, kept: Tensor) -> Tensor:
    """Hang pruned tokens onto kept ones: ``parent[j] = argmax_{i in kept} scores[i, j]`` for every ``j`` not in
    ``kept``, other entries unchanged (pruned tokens become leaves; no cycle can form).

    ``parent`` ``(B, N)``; ``scores`` ``(B, N, N)``, the dependency mask of the layer after which the tokens were
    pruned, over the same N positions; ``kept`` ``(B, K)`` positions kept.
    """
    b, n = parent.shape
    if scores.shape != (b, n, n) or kept.dim() != 2 or kept.shape[0] != b:
        raise ValueError(f"scores must be (B, N, N)={(b, n, n)} and kept (B, K), got {tuple(scores.shape)} and "
                         f"{tuple(kept.shape)}")
    is_kept = torch.zeros(b, n, dtype=torch.bool, device=parent.device).scatter_(1, kept, True)
    choice = scores.masked_fill(~is_kept.unsqueeze(-1), float("-inf")).argmax(dim=1)
    return torch.where(is_kept, parent, choice)


def is_tree(parent: Tensor) -> bool:
    """True when ``parent`` ``(N,)`` has exactly one root (``parent[r] = r``) and every token reaches it."""
    p = parent.tolist()
    n = len(p)
    if any(not 0 <= q < n for q in p) or sum(q == i for i, q in enumerate(p)) != 1:
        return False
    return all(_reaches_root(p, j) for j in range(n))


def _reaches_root(p: list[int], j: int) -> bool:
    for _ in range(len(p)):
        if p[j] == j:
            return True
        j = p[j]
    return p[j] == j


def tree_depths(parent: Tensor) -> Tensor:
    """Depth of every token in the tree ``parent`` ``(N,)`` (root 0); ValueError if it is not a tree."""
    if not isinstance(parent, Tensor) or parent.dim() != 1 or not is_tree(parent):
        raise ValueError("parent must be a (N,) tree: one root pointing to itself, every token reaching it")
    p = parent.tolist()
    depth = [-1] * len(p)
    for j in range(len(p)):
        path = []
        while depth[j] < 0 and p[j] != j:
            path.append(j)
            j = p[j]
        base = 0 if p[j] == j else depth[j]
        depth[j] = base
        for k, node in enumerate(reversed(path), start=1):
            depth[node] = base + k
    return torch.tensor(depth)


def dependency_tree_figure(image: np.ndarray | Tensor, parent: Tensor, grid: Sequence[int],
                           title: str = "dependency tree", cmap: str = "viridis") -> Figure:
    """The tree ``parent`` ``(H*W,)`` over a patch ``grid = (H, W)`` drawn on ``image`` (``(H_img, W_img[, 3])``,
    float in [0, 1] or uint8): an edge from each patch centre to its parent's, coloured by the child's depth (colorbar
    in tree levels), a dot per patch sized by its subtree, the root starred. Returns a Matplotlib figure built
    without pyplot, as :mod:`visattn.lens.plots` does (``fig.savefig(path)``)."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else np.clip(array.astype(np.float32), 0, 1)
    if len(grid) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
        raise ValueError(f"grid must be (H, W) patches, got {grid!r}")
    gh, gw = grid
    if not isinstance(parent, Tensor) or parent.shape != (gh * gw,):
        got = tuple(parent.shape) if isinstance(parent, Tensor) else type(parent).__name__
        raise ValueError(f"parent must be shaped (H*W,)={(gh * gw,)} for grid {tuple(grid)}, got {got}")
    depth = tree_depths(parent.cpu()).numpy()
    p = parent.cpu().numpy()
    size = np.ones(len(p))
    for j in np.argsort(-depth):
        if p[j] != j:
            size[p[j]] += size[j]
    ih, iw = array.shape[:2]
    ys = (np.arange(gh * gw) // gw + 0.5) * ih / gh
    xs = (np.arange(gh * gw) % gw + 0.5) * iw / gw
    children = np.flatnonzero(p != np.arange(len(p)))
    segments = np.stack([np.stack([xs[children], ys[children]], -1), np.stack([xs[p[children]], ys[p[children]]], -1)],
                        axis=1)
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    ax.imshow(array, cmap="gray" if array.ndim == 2 else None, extent=(0, iw, ih, 0))
    lines = LineCollection(segments, cmap=cmap, linewidths=1.6, alpha=0.9)
    lines.set_array(depth[children].astype(float))
    lines.set_clim(1, max(int(depth.max()), 1))
    ax.add_collection(lines)
    ax.scatter(xs, ys, s=6 + 40 * size / size.max(), c="white", edgecolors="black", linewidths=0.4, zorder=3)
    root = int(np.flatnonzero(p == np.arange(len(p)))[0])
    ax.scatter([xs[root]], [ys[root]], s=180, marker="*", c="red", edgecolors="white", linewidths=0.8, zorder=4)
    colorbar = fig.colorbar(lines, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("depth (tree levels below the root)")
    ax.set_xlim(0, iw)
    ax.set_ylim(ih, 0)
    ax.set_axis_off()
    ax.set_title(f"{title}\nroot * at patch {divmod(root, gw)}, {int(depth.max())} levels, "
                 "edge: child -> parent", fontsize=9)
    return fig
