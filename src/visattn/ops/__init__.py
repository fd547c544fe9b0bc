"""Functional token mixers: ``(q, k, v, shape) -> out``, no parameters."""

from . import reference
from .flex import run_flex_attention
from .masked import BACKENDS, DENSE_MAX_TOKENS, masked_attention, register_fast_path, sdpa_bool_mask
from .reference import attention

__all__ = [
    "BACKENDS",
    "DENSE_MAX_TOKENS",
    "attention",
    "masked_attention",
    "reference",
    "register_fast_path",
    "run_flex_attention",
    "sdpa_bool_mask",
]
