"""``Attention``: multi-head self-attention with a pluggable token mixer, weight-compatible with timm's.

Parameter names follow ``timm.models.vision_transformer.Attention`` (``qkv``, ``q_norm``, ``k_norm``, ``norm``,
``gate``, ``proj``) so a timm ViT block's attention weights load into it unchanged; the mixer decides which
keys each query sees and how (softmax, neighborhood, window, ... any entry of :func:`visattn.list_mixers`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._checks import as_shape, check_attn_mask, check_tokens
from ..registry import create_mixer_for_layer
from .token_mixer import TokenMixer, mixer_inputs


class Attention(nn.Module):
    """Multi-head self-attention: ``proj(mixer(q_norm(q), k_norm(k), v, shape))`` with ``q, k, v = qkv(x)``.

    The arguments up to ``dtype`` are timm 1.0.31's ``timm.layers.Attention`` arguments in timm's order, with
    timm's names and defaults, so ``Attention(384, 6, 32)`` builds the same module in both (``attn_head_dim`` is
    timm's name for the per-head width, stored as ``head_dim``); visattn's own arguments are keyword-only.

    Args:
        dim: token channels C.
        num_heads: attention heads; ``dim`` must be divisible by it unless ``attn_head_dim`` is given.
        attn_head_dim: per-head channels (default ``dim // num_heads``).
        dim_out: output channels (default ``dim``).
        qkv_bias: bias in the qkv projection.
        qk_norm: normalise q and k per head with ``norm_layer``.
        scale_norm: normalise the mixer output before the projection.
        proj_bias: bias in the output projection.
        gated: sigmoid gate on the mixer output from ``x`` (timm's ``gated``).
        attn_drop: attention dropout, passed to the mixer.
        proj_drop: dropout after the output projection.
        norm_layer: normalisation for ``qk_norm``/``scale_norm`` (default ``nn.LayerNorm``; timm requires it).
        device, dtype: where and in which dtype the parameters are created (the mixer's too, when built here).
        mixer: a registry name (built with ``mixer_kwargs``) or a :class:`TokenMixer` instance.
        num_prefix_tokens: tokens in front of the grid (class, register tokens).
        shape: default grid of the tokens; when None, a square grid is inferred from the token count.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        attn_head_dim: int | None = None,
        dim_out: int | None = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        gated: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: type[nn.Module] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        mixer: str | TokenMixer = "softmax",
        num_prefix_tokens: int = 0,
        shape: int | tuple[int, ...] | None = None,
        **mixer_kwargs: Any,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_heads", num_heads), ("attn_head_dim", attn_head_dim),
                            ("dim_out", dim_out)):
            if value is None and name in ("attn_head_dim", "dim_out"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        head_dim = attn_head_dim
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
            head_dim = dim // num_heads
        if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}")
        dd = {"device": device, "dtype": dtype}
        norm_layer = norm_layer or nn.LayerNorm
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attn_dim = num_heads * head_dim
        self.num_prefix_tokens = num_prefix_tokens
        self.shape = as_shape(shape) if shape is not None else None

        self.qkv = nn.Linear(dim, self.attn_dim * 3, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(head_dim, **dd) if qk_norm else nn.Identity()
        if isinstance(mixer, TokenMixer):
            if mixer_kwargs:
                raise ValueError(f"mixer_kwargs apply only to a mixer name, got {sorted(mixer_kwargs)}")
            self.mixer = mixer
        elif isinstance(mixer, str):
            built = create_mixer_for_layer(mixer, dim=dim, num_heads=num_heads, head_dim=head_dim,
                                           attn_drop=attn_drop, **mixer_kwargs)
            self.mixer = built.to(**dd) if device is not None or dtype is not None else built
        else:
            raise TypeError(f"mixer must be a registry name or a TokenMixer, got {type(mixer).__name__}")
        self.norm = norm_layer(self.attn_dim, **dd) if scale_norm else nn.Identity()
        self.gate = nn.Linear(dim, self.attn_dim, bias=qkv_bias, **dd) if gated else None
        self.proj = nn.Linear(self.attn_dim, dim_out or dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def grid_shape(self, num_tokens: int, shape: int | tuple[int, ...] | None = None) -> tuple[int, ...]:
        """The token grid: ``shape``, else the module's ``shape``, else a square of ``N - num_prefix_tokens``."""
        if shape is not None:
            return as_shape(shape)
        if self.shape is not None:
            return self.shape
        grid = num_tokens - self.num_prefix_tokens
        side = round(max(grid, 0) ** 0.5)  # exact for perfect squares below 2**52, and traceable on symbolic sizes
        if grid < 1 or side * side != grid:
            raise ValueError(
                f"cannot infer a square grid from N={num_tokens} tokens with num_prefix_tokens="
                f"{self.num_prefix_tokens}; pass shape=(H, W) (or (L,), (T, H, W))"
            )
        return (side, side)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of ``x`` as ``(B, heads, N, head_dim)``, after ``q_norm`` and ``k_norm``."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False, *,
                shape: int | tuple[int, ...] | None = None) -> Tensor:
        """``x``: ``(B, N, C)``; ``attn_mask``: bool (True = attend) or additive, broadcastable to
        ``(B, heads, N, N)``; ``is_causal``: each token sees only itself and the tokens before it (prefix tokens
        first, then the grid in row-major order). ``attn_mask`` and ``is_causal`` come in timm's order.

        A mixer that computes causal attention itself (``supports_is_causal``: linear, Hedgehog, Taylor, ...)
        gets the flag; any other gets an ``N x N`` causal mask (combined with ``attn_mask``)."""
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"x must be shaped (B, N, C), got {tuple(x.shape) if isinstance(x, Tensor) else x!r}")
        if x.shape[-1] != self.qkv.in_features:
            raise ValueError(f"x has C={x.shape[-1]} channels, expected dim={self.qkv.in_features}")
        b, n, _ = x.shape
        grid = self.grid_shape(n, shape)
        check_tokens(n, grid, self.num_prefix_tokens, "x")
        check_attn_mask(attn_mask)
        if not isinstance(is_causal, bool):
            raise TypeError(f"is_causal must be a bool, got {is_causal!r}")
        attn_mask, extra = mixer_inputs(self.mixer, x, attn_mask, is_causal)
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv_heads(x)
        out = self.mixer(q, k, v, grid, attn_mask=attn_mask, **extra)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))
