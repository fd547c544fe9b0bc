"""Lens metrics: pure tensor functions on captured attention maps, head outputs and hidden states.

Shapes follow the lens records: probabilities ``(B, heads, Nq, Nk)`` per layer (stacked: ``(layers, ...)``),
per-head outputs ``(B, heads, N, head_dim)``, hidden states ``(B, N, C)``. Each function names its paper and
equation; bad shapes raise ``ValueError`` / ``TypeError`` naming the argument.
"""

from .distance import grid_positions, mean_attention_distance
from .entropy import attention_entropy, visual_attention_entropy
from .phases import cut_value, max_cut, max_cut_phases
from .rollout import attention_rollout, fuse_heads, gradient_rollout, rollout, token_map
from .similarity import layer_dissimilarity, layer_summary
from .sinks import SINK_TAU, massive_activation_dims, rms_ratio, sink_scores, sink_tokens
from .vas import visual_attention_score
from .vhd import total_vhd, vhd_outliers, vision_head_divergence

__all__ = [
    "SINK_TAU",
    "attention_entropy",
    "attention_rollout",
    "cut_value",
    "fuse_heads",
    "gradient_rollout",
    "grid_positions",
    "layer_dissimilarity",
    "layer_summary",
    "massive_activation_dims",
    "max_cut",
    "max_cut_phases",
    "mean_attention_distance",
    "rms_ratio",
    "rollout",
    "sink_scores",
    "sink_tokens",
    "token_map",
    "total_vhd",
    "vhd_outliers",
    "vision_head_divergence",
    "visual_attention_entropy",
    "visual_attention_score",
]
