"""Hierarchical Self-Attention as a token mixer (Amizadeh et al., arXiv 2509.15448).

``out = HSA(q, k, v; tree)``: softmax attention's closest (in KL) block-constant approximation on a tree of
tokens, computed by the dynamic programme of :func:`visattn.ops.hierarchical.hierarchical_attention`.
The tree is given explicitly (:func:`visattn.ops.hierarchical.token_tree`) or, by default, built from the grid:
``group`` cells per axis merge level by level (:func:`visattn.ops.hierarchical.grid_tree`), prefix tokens under
the root.
"""

from __future__ import annotations

from torch import Tensor

from ..ops.hierarchical import TokenTree, grid_tree, hierarchical_attention, hierarchical_weights
from ..registry import register_mixer
from .token_mixer import TokenMixer

__all__ = ["HierarchicalMixer"]


class HierarchicalMixer(TokenMixer):
    """HSA (arXiv 2509.15448) over ``tree`` (a :class:`TokenTree`), or over ``grid_tree(shape, group)``.

    O(M b^2 d) + O(N d) for M internal nodes of branching b. ``attn_drop`` is accepted for timm compatibility
    but there is no weight matrix to drop entries from (warns once in training when > 0).
    """

    uses_attn_drop = False

    def __init__(self, tree: TokenTree | None = None, group: int = 2, scale: float | None = None,
                 attn_drop: float = 0.0) -> None:
        super().__init__(attn_drop)
        if tree is not None and not isinstance(tree, TokenTree):
            raise TypeError(f"tree must be a TokenTree or None, got {type(tree).__name__}")
        if isinstance(group, bool) or not isinstance(group, int) or group < 2:
            raise ValueError(f"group must be an int >= 2, got {group!r}")
        self.tree, self.group, self.scale = tree, group, scale
        self._grid_trees: dict[tuple[tuple[int, ...], int], TokenTree] = {}

    def tree_for(self, shape: tuple[int, ...], num_prefix_tokens: int) -> TokenTree:
        """The given tree, or the (cached) grid tree of ``shape``."""
        if self.tree is not None:
            return self.tree
        key = (shape, num_prefix_tokens)
        if key not in self._grid_trees:
            self._grid_trees[key] = grid_tree(shape, self.group, num_prefix_tokens)
        return self._grid_trees[key]

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        grid, prefix = self.prepare(q, k, v, shape)
        self._no_attn_mask(attn_mask)
        return hierarchical_attention(q, k, v, self.tree_for(grid, prefix), self.scale)

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        """Dense ``(B, heads, N, N)`` HSA weights, O(N^2)."""
        grid, prefix = self.prepare(q, k, k, shape)
        return hierarchical_weights(q, k, self.tree_for(grid, prefix), self.scale)


@register_mixer("hierarchical", paper="hierarchical_attention", complexity="O(M b^2 d + N d)",
                family="reformulated", faces=("definition", "fast", "module"))
def hierarchical(tree: TokenTree | None = None, group: int = 2, scale: float | None = None,
                 attn_drop: float = 0.0) -> HierarchicalMixer:
    """Hierarchical self-attention: the KL-closest block-constant softmax on a token tree, by dynamic programming."""
    return HierarchicalMixer(tree, group, scale, attn_drop)
