"""Functional token mixers: ``(q, k, v, shape) -> out``, no parameters."""

from . import associative_memory, reference
from .dispatch import ENGINES, Decision, explain
from .engines.block_sparse import BlockSparsePlan, block_sparse_plan
from .engines.flex import run_flex_attention
from .engines.sdpa_tiles import TilePlan, tile_plan
from .hierarchical import TokenTree, grid_tree, hierarchical_attention, token_tree
from .masked import BACKENDS, DENSE_MAX_TOKENS, masked_attention, sdpa_bool_mask
from .reference import attention
from .reweight import lssa_attention, lssa_weights, reweight_attention
from .structured import axial_attention, block_sparse_attention, index_attention, local_attention, tiled_attention

__all__ = [
    "BACKENDS",
    "DENSE_MAX_TOKENS",
    "associative_memory",
    "attention",
    "masked_attention",
    "reference",
    "run_flex_attention",
    "sdpa_bool_mask",
]
__all__ += ["lssa_attention", "lssa_weights", "reweight_attention"]
__all__ += ["TilePlan", "tile_plan", "tiled_attention"]
__all__ += ["TokenTree", "grid_tree", "hierarchical_attention", "token_tree"]
__all__ += ["BlockSparsePlan", "block_sparse_attention", "block_sparse_plan"]
__all__ += ["axial_attention", "index_attention", "local_attention"]
__all__ += ["ENGINES", "Decision", "explain"]
