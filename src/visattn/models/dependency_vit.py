"""DependencyViT-Tiny/Small and DependencyViT-Lite: a plain ViT whose blocks use reversed attention.

Paper: Ding et al., "Visual Dependency Transformers: Dependency Tree Emerges from Reversed Attention"
(arXiv 2304.03282). The authors released no code or weights; the configurations follow the from-scratch timm
implementation (huggingface/pytorch-image-models PR #2062, unmerged), read for facts. Each block (visattn's
:class:`~visattn.nn.reversed_attention.ReversedBlock`) is pre-norm with LayerScale (init 1e-6)::

    A_F = softmax(q k^T d^-1/2)         p = softmax_h(W_p x / 0.1)         m_l = m_{l-1} sigmoid(MLP(x))
    A_R[i, j] = A_F[j, i] p_h,j m_l,j   x = x + ls1(proj(A_R V)),          x = x + ls2(MLP(LN(x)))

with ``q, k, v, W_p x, MLP(x)`` read from ``LN(x)`` and the message ``m`` (``m_0 = 1``) carried through the
blocks. Patch embedding 16 x 16, learned absolute position embedding, no class token, no qkv bias; the head
averages the final tokens ``LN(x) * m`` (the message weighs the pooling, as the timm PR) and applies a linear layer.
Tiny: 192 channels, 12 blocks, 12 heads; Small: 384, 12, 12 (the PR's configs).

DependencyViT-Lite (dynamic token pooling): after blocks 2, 5, 8 and 11 (1-based) only the tokens with the largest
message ``m`` stay (the paper: leaves that rarely send messages are pruned; the timm PR scores by the messages
received instead), ``196 -> 164, 132, 100, 69`` at 224 (:func:`~visattn.nn.reversed_attention.lite_keep_counts`).
``forward_intermediates`` puts the tokens back on the patch grid (pruned positions zero).

:meth:`DependencyViT.dependency_tree` reads a tree over the patches out of a forward pass (one root, no cycles;
:mod:`visattn.models.dependency_tree`), :func:`~visattn.models.dependency_tree.dependency_tree_figure` draws it.
``pretrained=True, pretrained_cfg_overlay=dict(file=path)`` loads a checkpoint in our layout or in the timm PR's
(:func:`checkpoint_filter_fn`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import PatchEmbed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from torch import Tensor, nn

from .._checks import check_image_batch
from ..nn.reversed_attention import LITE_LAYERS, LITE_RATIO, ReversedBlock, lite_keep_counts, prune_tokens
from ._head import ChannelsLastHead, check_global_pool
from ._init import trunc_normal_init
from ._pretrained import paper_cfg
from .dependency_tree import attach_pruned, tree_from_scores

__all__ = ["DEPENDENCY_VIT_ARGS", "DependencyViT", "checkpoint_filter_fn"]

DEPENDENCY_VIT_ARGS: dict[str, dict[str, Any]] = {
    "visattn_dependencyvit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=12),
    "visattn_dependencyvit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=12),
    "visattn_dependencyvit_lite_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=12,
                                                        prune_layers=LITE_LAYERS, prune_ratio=LITE_RATIO),
}
"""Sizes, as timm PR #2062's ``dependencyvit_{tiny,small,lite_tiny}_patch16_224``."""


class DependencyViT(ChannelsLastHead):
    """DependencyViT (Ding et al., arXiv 2304.03282) with timm's model interface (module docstring).

    Args:
        img_size, patch_size, in_chans, num_classes: as timm's ViT (the image size is fixed by the position
            embedding).
        global_pool: ``"avg"`` (mean over the remaining tokens) or ``""`` (logits per token).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, init_values (LayerScale; None = none).
        temperature: of the head selector's softmax over heads (0.1, the paper's appendix D.1).
        prune_layers: 1-based blocks after which Lite prunes (``()`` = none); ``prune_ratio``: 0.16.
        weight_by_message: multiply the final tokens by ``m`` before pooling (the timm PR); False pools ``LN(x)``.
        drop_rate (before the classifier), pos_drop_rate, drop_path_rate (linear over the blocks).
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "avg", embed_dim: int = 192, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False, init_values: float | None = 1e-6,
                 temperature: float = 0.1, prune_layers: Sequence[int] = (), prune_ratio: float = LITE_RATIO,
                 weight_by_message: bool = True, drop_rate: float = 0.0, pos_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads),
                            ("patch_size", patch_size), ("in_chans", in_chans)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim}, "
                             f"num_heads={num_heads}")
        check_global_pool(global_pool)
        layers = tuple(sorted(set(prune_layers)))
        if any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= depth for i in layers):
            raise ValueError(f"prune_layers must be 1-based block indices in [1, {depth}], got {tuple(prune_layers)}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0
        self.weight_by_message = weight_by_message
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = tuple(self.patch_embed.grid_size)
        num_patches = self.patch_embed.num_patches
        self.prune_layers = layers
        self.prune_ratio = float(prune_ratio)
        self.keep_counts = lite_keep_counts(num_patches, len(layers), prune_ratio) if layers else []
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            ReversedBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, init_values, rates[i], temperature, norm_layer)
            for i in range(depth))
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(trunc_normal_init)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _embed(self, x: Tensor) -> Tensor:
        check_image_batch(x, self.in_chans)
        expected = tuple(self.patch_embed.img_size)
        if tuple(x.shape[-2:]) != expected:
            raise ValueError(f"x must have the image size the position embedding was built for, {expected}, got "
                             f"{tuple(x.shape[-2:])}")
        return self.pos_drop(self.patch_embed(x) + self.pos_embed)

    def _block(self, index: int, x: Tensor, m: Tensor | None) -> tuple[Tensor, Tensor]:
        block = self.blocks[index]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(block, x, m)
        return block(x, m)

    def _run(self, x: Tensor, stop: int, take: Sequence[int] = (), track: bool = False,
             dependencies: bool = False) -> dict[str, Any]:
        """Blocks ``0 .. stop`` on embedded tokens ``x``. Returns ``x``, ``m``, ``taken`` (``(index, tokens,
        positions)`` after each block in ``take``) and, with ``dependencies``, ``masks`` (``(block, D, positions)``
        for every pruning block up to ``stop`` and for ``stop``). Positions are tracked when asked or needed."""
        b, n, _ = x.shape
        track = track or bool(take) or dependencies
        index = torch.arange(n, device=x.device).expand(b, -1) if track else None
        keep = iter(self.keep_counts)
        m, taken, masks = None, [], []
        for i in range(stop + 1):
            if dependencies and (i == stop or i + 1 in self.prune_layers):
                masks.append((i, self._dependency_mask(i, x, m), index))
            x, m = self._block(i, x, m)
            if i + 1 in self.prune_layers:
                x, m, kept = prune_tokens(x, m, next(keep))
                if track:
                    index = index.gather(1, kept)
            if i in take:
                taken.append((i, x, index))
        return dict(x=x, m=m, taken=taken, masks=masks, index=index)

    def _dependency_mask(self, i: int, x: Tensor, m: Tensor | None) -> Tensor:
        """``D = sum_h A_R`` of block ``i`` on its input tokens ``x`` with incoming message ``m``."""
        attn = self.blocks[i].attn
        y = self.blocks[i].norm1(x)
        q, k, _ = attn.qkv_heads(y)
        return attn.mixer.attention_weights(q, k, (y.shape[1],), x=y, message=m).sum(dim=1)

    def _finish(self, x: Tensor, m: Tensor) -> Tensor:
        x = self.norm(x)
        return x * m.unsqueeze(-1).to(x.dtype) if self.weight_by_message else x

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` images -> the final tokens ``LN(x) * m`` ``(B, N_kept, embed_dim)``."""
        out = self._run(self._embed(x), len(self.blocks) - 1)
        return self._finish(out["x"], out["m"])

    def _to_grid(self, tokens: Tensor, index: Tensor) -> Tensor:
        """Tokens at ``index`` back on the patch grid, NCHW, zero where pruned."""
        b, _, c = tokens.shape
        h, w = self.grid_size
        full = tokens.new_zeros(b, h * w, c).scatter(1, index.unsqueeze(-1).expand(-1, -1, c), tokens)
        return full.transpose(1, 2).reshape(b, c, h, w)

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's ``forward_intermediates``: block outputs as NCHW maps over the patch grid (Lite: pruned patches
        zero) or ``"NLC"`` tokens (Lite: only the tokens kept); ``norm`` applies the final LayerNorm to them. Returns
        also the ``forward_features`` output unless ``intermediates_only``."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        last = len(self.blocks) - 1
        out = self._run(self._embed(x), max_index if stop_early or intermediates_only else last, take_indices)
        intermediates = []
        for _, tokens, index in out["taken"]:
            tokens = self.norm(tokens) if norm else tokens
            intermediates.append(self._to_grid(tokens, index) if output_fmt == "NCHW" else tokens)
        if intermediates_only:
            return intermediates
        return self._finish(out["x"], out["m"]), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the norm and head when asked); return the indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.prune_layers = tuple(i for i in self.prune_layers if i <= max_index + 1)
        self.keep_counts = self.keep_counts[:len(self.prune_layers)]
        self.prune_norm_and_head(prune_norm, prune_head)
        return take_indices

    @torch.no_grad()
    def dependency_masks(self, x: Tensor, layer: int = -1) -> list[tuple[int, Tensor, Tensor]]:
        """``(block, D, positions)`` for every pruning block before ``layer`` and for ``layer`` itself: ``D = sum_h
        A_R`` ``(B, N_l, N_l)`` over the tokens entering that block, at patch ``positions`` ``(B, N_l)``."""
        depth = len(self.blocks)
        if isinstance(layer, bool) or not isinstance(layer, int) or not -depth <= layer < depth:
            raise ValueError(f"layer must be a block index in [{-depth}, {depth}), got {layer!r}")
        return self._run(self._embed(x), layer % depth, dependencies=True)["masks"]

    @torch.no_grad()
    def dependency_tree(self, x: Tensor, layer: int = -1) -> Tensor:
        """The parent of every patch ``(B, H*W)`` long (row-major patches; the root is its own parent), read out of
        a forward pass: the best tree (:func:`~visattn.models.dependency_tree.tree_from_scores`) under block
        ``layer``'s dependency mask over the tokens that reach it, with the tokens Lite pruned earlier hung on the
        tokens kept, each by the mask of the block after which it was pruned (pruned tokens are leaves)."""
        masks = self.dependency_masks(x, layer)
        _, final, positions = masks[-1]
        b, n = x.shape[0], self.patch_embed.num_patches
        parent = torch.arange(n, device=final.device).expand(b, -1).clone()
        parent.scatter_(1, positions, positions.gather(1, tree_from_scores(final)))
        for _, scores, where in reversed(masks[:-1]):
            full = scores.new_zeros(b, n, n)
            full[torch.arange(b, device=full.device)[:, None, None], where[:, :, None], where[:, None, :]] = scores
            present = torch.zeros(b, n, dtype=torch.bool, device=full.device).scatter_(1, where, True)
            parent = torch.where(present, attach_pruned(parent, full, positions), parent)
            positions = where
        return parent


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Map a checkpoint in timm PR #2062's layout (``{"model": ...}``, ``{"state_dict": ...}`` or bare) onto
    :class:`DependencyViT`: ``blocks.{i}.attn.head_selector.*`` -> ``blocks.{i}.attn.mixer.head_selector.*`` and
    ``blocks.{i}.attn.message_controller.*`` -> ``blocks.{i}.attn.mixer.message_controller.*``; every other key
    (``patch_embed``, ``pos_embed``, ``norm1``, ``attn.qkv``, ``attn.proj``, ``ls1.gamma``, ``mlp``, ``norm``,
    ``head``) is named alike. Our own layout passes unchanged. The load that follows is strict."""
    for key in ("model", "model_ema", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    return {re.sub(r"\.attn\.(head_selector|message_controller)\.", r".attn.mixer.\1.", k): v
            for k, v in state_dict.items()}


default_cfgs = generate_default_cfgs({name: paper_cfg(
    "2304.03282", crop_pct=0.9, fixed_input_size=True, mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD,
    first_conv="patch_embed.proj", classifier="head",
    notes=("no released weights (the authors published no code or checkpoints); configs from timm PR #2062",))
    for name in DEPENDENCY_VIT_ARGS})


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> DependencyViT:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(DependencyViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
                                **dict(DEPENDENCY_VIT_ARGS[variant], **kwargs))


@register_model
def visattn_dependencyvit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> DependencyViT:
    """DependencyViT-Tiny: 192 channels, 12 blocks, 12 heads."""
    return _create("visattn_dependencyvit_tiny_patch16_224", pretrained, kwargs)


@register_model
def visattn_dependencyvit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> DependencyViT:
    """DependencyViT-Small: 384 channels, 12 blocks, 12 heads."""
    return _create("visattn_dependencyvit_small_patch16_224", pretrained, kwargs)


@register_model
def visattn_dependencyvit_lite_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> DependencyViT:
    """DependencyViT-Lite-Tiny: Tiny with tokens pruned after blocks 2, 5, 8, 11 (ratio 0.16)."""
    return _create("visattn_dependencyvit_lite_tiny_patch16_224", pretrained, kwargs)
