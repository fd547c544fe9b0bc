"""EVA's attention with a visattn mixer: timm's ``EvaAttention`` (EVA-02, "EVA-02: A Visual Representation for
Neon Genesis", arXiv 2303.11331) keeps its projections, its rotary position embedding and its weights; only
``softmax(q k^T / sqrt(d)) v`` becomes ``mixer(q, k, v, grid)``.

EVA's layer computes ``q, k, v = x W_qkv + (b_q, 0, b_v)`` (or three projections), normalises q and k per head
(``q_norm``, ``k_norm``), rotates q and k of the grid tokens by the block's rotary embedding (RoPE, prefix tokens
left as they are), attends, normalises the output (``norm``, EVA-02's sub-LN), gates it (``gate``) and projects it.
:class:`EvaMixerAttention` does the same with the mixer in place of the attention, reusing the source module's
submodules and parameters (same names, same state dict), so with ``mixer="softmax"`` the model computes what it
computed before.

timm is imported on first use, not with visattn.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import as_shape, check_attn_mask, check_tokens
from ..registry import create_mixer_for_layer
from .token_mixer import mixer_inputs

_PARTS = ("qkv", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "norm", "gate", "proj", "proj_drop")


def _eva_attention() -> type[nn.Module]:
    from timm.models.eva import EvaAttention

    return EvaAttention


class EvaMixerAttention(nn.Module):
    """timm's ``EvaAttention`` with ``mixer`` in place of softmax attention, built from ``source`` (its submodules
    and parameters taken over, not copied).

    Args:
        source: a ``timm.models.eva.EvaAttention``.
        mixer: a registry name, built with ``mixer_kwargs`` (``attn_drop`` defaults to the source's dropout).
        shape: the token grid; None infers a square grid from the token count.
        num_prefix_tokens: tokens before the grid (class, register tokens); the source's count by default.
    """

    def __init__(self, source: nn.Module, mixer: str = "softmax", *, shape: int | tuple[int, ...] | None = None,
                 num_prefix_tokens: int | None = None, **mixer_kwargs: Any) -> None:
        super().__init__()
        if not isinstance(source, _eva_attention()):
            raise TypeError(f"source must be a timm EvaAttention, got {type(source).__name__}")
        if not isinstance(mixer, str):
            raise TypeError(f"mixer must be a registry name, got {type(mixer).__name__}")
        prefix = source.num_prefix_tokens if num_prefix_tokens is None else num_prefix_tokens
        if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
            raise ValueError(f"num_prefix_tokens must be an int >= 0, got {prefix!r}")
        self.num_heads = source.num_heads
        self.head_dim = source.head_dim
        self.attn_dim = source.num_heads * source.head_dim
        self.num_prefix_tokens = prefix
        self.rope_prefix_tokens = source.num_prefix_tokens
        self.rotate_half = bool(getattr(source, "rotate_half", False))
        self.qkv_bias_separate = source.qkv_bias_separate
        self.shape = as_shape(shape) if shape is not None else None
        for part in _PARTS:
            setattr(self, part, getattr(source, part))
        self.q_bias, self.v_bias = source.q_bias, source.v_bias
        self.register_buffer("k_bias", source.k_bias, persistent=False)
        dim = source.proj.out_features
        mixer_kwargs.setdefault("attn_drop", source.attn_drop.p)
        self.mixer = create_mixer_for_layer(mixer, dim=dim, num_heads=self.num_heads, head_dim=self.head_dim,
                                            **mixer_kwargs)
        self.mixer.to(device=source.proj.weight.device, dtype=source.proj.weight.dtype)
        self.train(source.training)

    def grid_shape(self, num_tokens: int) -> tuple[int, ...]:
        """The module's ``shape``, else a square of ``N - num_prefix_tokens``."""
        if self.shape is not None:
            return self.shape
        grid = num_tokens - self.num_prefix_tokens
        side = round(max(grid, 0) ** 0.5)
        if grid < 1 or side * side != grid:
            raise ValueError(f"cannot infer a square grid from N={num_tokens} tokens with num_prefix_tokens="
                             f"{self.num_prefix_tokens}; build the layer with shape=(H, W)")
        return (side, side)

    def qkv_heads(self, x: Tensor, rope: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """EVA's q, k, v as ``(B, heads, N, head_dim)``: projections with (b_q, 0, b_v), ``q_norm``/``k_norm``,
        then the rotary embedding on the tokens after the prefix."""
        from timm.layers import apply_rot_embed_cat

        b, n, _ = x.shape
        if self.qkv is not None:
            if self.q_bias is None:
                qkv = self.qkv(x)
            elif self.qkv_bias_separate:
                qkv = self.qkv(x) + torch.cat((self.q_bias, self.k_bias, self.v_bias))
            else:
                qkv = nn.functional.linear(x, self.qkv.weight, torch.cat((self.q_bias, self.k_bias, self.v_bias)))
            q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (proj(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
                       for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            p = self.rope_prefix_tokens
            q = torch.cat([q[:, :, :p], apply_rot_embed_cat(q[:, :, p:], rope, half=self.rotate_half)], 2).type_as(v)
            k = torch.cat([k[:, :, :p], apply_rot_embed_cat(k[:, :, p:], rope, half=self.rotate_half)], 2).type_as(v)
        return q, k, v

    def forward(self, x: Tensor, rope: Tensor | None = None, attn_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        """``x``: ``(B, N, C)``; ``rope``: the block's rotary embedding (timm's EVA passes it); ``attn_mask``:
        bool (True = attend) or additive; ``is_causal``: each token sees itself and the tokens before it."""
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"x must be shaped (B, N, C), got {tuple(x.shape) if isinstance(x, Tensor) else x!r}")
        b, n, _ = x.shape
        grid = self.grid_shape(n)
        check_tokens(n, grid, self.num_prefix_tokens, "x")
        check_attn_mask(attn_mask)
        attn_mask, extra = mixer_inputs(self.mixer, x, attn_mask, is_causal)
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv_heads(x, rope)
        out = self.norm(self.mixer(q, k, v, grid, attn_mask=attn_mask, **extra).transpose(1, 2).reshape(b, n, -1))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


def replace_eva_attention(model: nn.Module, mixer: str = "softmax", *, shape: tuple[int, ...] | None = None,
                          num_prefix_tokens: int | None = None, **mixer_kwargs: Any) -> int:
    """Replace every timm ``EvaAttention`` in ``model`` by :class:`EvaMixerAttention` running ``mixer``, in place;
    return how many were replaced (0 when timm's EVA is not loaded or the model has none)."""
    if "timm.models.eva" not in sys.modules:
        return 0
    eva_attention = _eva_attention()
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, eva_attention)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = EvaMixerAttention(module, mixer, shape=shape, num_prefix_tokens=num_prefix_tokens, **dict(mixer_kwargs))
        setattr(parent, child, new)
    return len(targets)
