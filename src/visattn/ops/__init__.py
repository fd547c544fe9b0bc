"""Functional token mixers: ``(q, k, v, shape) -> out``, no parameters."""

from . import associative_memory, reference
from .axial import axial_attention
from .block_sparse import BlockSparsePlan, block_sparse_attention, block_sparse_plan
from .flex import run_flex_attention
from .hierarchical import TokenTree, grid_tree, hierarchical_attention, token_tree
from .local_kernel import local_attention
from .masked import BACKENDS, DENSE_MAX_TOKENS, masked_attention, register_fast_path, sdpa_bool_mask
from .reference import attention
from .reweight import lssa_attention, lssa_weights, reweight_attention
from .tiled import TilePlan, tile_plan, tiled_attention

__all__ = [
    "BACKENDS",
    "DENSE_MAX_TOKENS",
    "associative_memory",
    "attention",
    "masked_attention",
    "reference",
    "register_fast_path",
    "run_flex_attention",
    "sdpa_bool_mask",
]
__all__ += ["lssa_attention", "lssa_weights", "reweight_attention"]
__all__ += ["TilePlan", "tile_plan", "tiled_attention"]
__all__ += ["TokenTree", "grid_tree", "hierarchical_attention", "token_tree"]
__all__ += ["BlockSparsePlan", "block_sparse_attention", "block_sparse_plan"]
__all__ += ["axial_attention", "local_attention"]
