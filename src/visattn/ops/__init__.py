"""Functional token mixers: ``(q, k, v, shape) -> out``, no parameters."""

from . import associative_memory, reference
from .masked import BACKENDS, DENSE_MAX_TOKENS, masked_attention, register_fast_path, sdpa_bool_mask
from .engines.lines import axial_attention
from .engines.block_sparse import BlockSparsePlan, block_sparse_attention, block_sparse_plan
from .engines.flex import run_flex_attention
from .hierarchical import TokenTree, grid_tree, hierarchical_attention, token_tree
from .engines.per_query import local_attention
from .reference import attention
from .reweight import lssa_attention, lssa_weights, reweight_attention
from .engines.sdpa_tiles import TilePlan, tile_plan, tiled_attention
from .engines import block_sparse as _bs, flex as _fl, fused_tiles as _ft, lines as _li, per_query as _pq
from .engines import sdpa_tiles as _st, tile_autograd as _ta, tile_axis as _tx, tile_plan as _tp
import sys as _sys

for _old, _new in (("tile_kernel", _ft), ("local_kernel", _pq), ("tiled", _st), ("tiled_plan", _tp),
                   ("tiled_axis", _tx), ("tiled_autograd", _ta), ("block_sparse", _bs), ("axial", _li),
                   ("flex", _fl)):
    _sys.modules[f"{__name__}.{_old}"] = _new
    globals()[_old] = _new

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
