"""Raptor, the block-recurrent surrogate of a ViT: ``visattn_raptor{2,3,4}_base_patch14_reg4_dinov2`` and
``visattn_raptor_{small,base}_patch16_224``.

Jacobs, Fel, Hakim et al., "Block-Recurrent Dynamics in Vision Transformers", arXiv 2512.19941. The ``L`` blocks of
a trained ViT fall into a few contiguous *phases* of layers that compute alike (found by max-cut of the layer
dissimilarity, :func:`visattn.lens.metrics.phases.max_cut_phases`). Raptor replaces each phase by ONE block applied
recurrently, once per layer of the phase, so a ViT of depth ``L`` becomes ``k << L`` distinct blocks run ``L``
times in all. Step ``l`` (1-based: it produces the teacher's layer-``l`` output from its layer-``l-1`` state) runs
the block of the phase holding layer ``l - 1`` with time ``t = l``::

    g1, g2, g3 = 1 + t_proj(t)                        t_proj = Linear(1, 16) - SiLU - Linear(16, 3 D)
    x = x + g1 * LS1(Attn(LN1(x)))                    LS: LayerScale (init 1e-5)
    x = x + g2 * LS2(SwiGLU(LN2(x)))
    out = g3 * x

(``t_proj``'s last layer is initialised N(0, 1e-4), so every step starts as the identity; the paper's time is the
raw layer index, not normalised). The patch embedding, prefix tokens, position embedding, final norm and head are
those of timm's :class:`~timm.models.vision_transformer.VisionTransformer`, whose class Raptor extends: built with
:func:`raptor_from_teacher` they are the teacher's own, as in the paper, where only the recurrent blocks are fitted
(:func:`visattn.train.raptor.fit_raptor`).

The network keeps timm's ViT layout: ``model.blocks`` holds ``L`` :class:`RecurrentStep` modules (so
``forward_intermediates``, ``feature_info``, grad checkpointing and hooks see one entry per layer, as in the
teacher) that all call the ``k`` shared :class:`RaptorBlock` modules of ``model.recurrent_blocks``; the steps own no
parameters, so the state dict and the parameter count hold each shared block once. The lens unrolls the recurrence
(:mod:`visattn.lens.adapters.recurrent`): one attention layer per applied step, ``L`` in all, named
``recurrent_blocks.P.attn@tT``.

Phases are lists of 0-based layer indices covering ``range(L)`` once each, as :func:`max_cut_phases` returns them.
The paper's phases are contiguous; a non-contiguous phase (which max-cut can give) is accepted and means the same
block runs at each of its layers. The registered DINOv2 sizes carry the paper's segmentation of DINOv2-B/14-reg
(official runs: ``raptor2`` layers 1-7 | 8-12, ``raptor3`` 1-7 | 8-10 | 11-12, ``raptor4`` 1-4 | 5-7 | 8-10 |
11-12); the ViT-S/B ``patch16`` sizes default to the 3-phase one (pass ``phases=`` from your teacher).

The registered DINOv2 sizes follow the official release (github.com/KempnerInstitute/raptor, ``raptor/block.py``,
``raptor/raptor.py``, ``imagenet_probes/raptor_wrapper.py``) where it differs from a plain timm ViT: the shared blocks'
LayerNorms use ``eps=1e-5`` (``nn.LayerNorm``'s default; the teacher's own norms keep DINOv2's 1e-6), and the
classifier is DINOv2's linear-probe head, ``Linear(2 D, classes)`` on the final-normed class token concatenated with
the mean of the patch tokens (``token_patch_head=True``). ``pretrained=True`` loads the released Raptor blocks
(:mod:`visattn.models.raptor_release`: key mapping, file names); the ViT-S/B ``patch16`` sizes have no released
weights and raise ``NotImplementedError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from timm.layers import LayerNorm, LayerScale, Mlp, SwiGLU, get_norm_layer
from timm.layers.attention import Attention
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ._pretrained import timm_pretrained_cfg

__all__ = ["PAPER_PHASES", "RELEASE_FILES", "TEACHERS", "Raptor", "RaptorBlock", "RecurrentStep", "TimeGates",
           "check_phases", "phases_from_sizes", "raptor_from_teacher"]

Phases = tuple[tuple[int, ...], ...]


def phases_from_sizes(sizes: Sequence[int]) -> Phases:
    """Contiguous phases of ``sizes[i]`` layers each, in order: ``(7, 3, 2) -> ((0..6), (7, 8, 9), (10, 11))``."""
    if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence) or not sizes:
        raise TypeError(f"sizes must be a non-empty sequence of positive ints, got {sizes!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"sizes must be positive ints, got {list(sizes)}")
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    return tuple(tuple(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True))


PAPER_PHASES: dict[int, Phases] = {
    2: phases_from_sizes((7, 5)),
    3: phases_from_sizes((7, 3, 2)),
    4: phases_from_sizes((4, 3, 3, 2)),
}
"""The paper's max-cut phases of DINOv2-B/14-reg (0-based layers), as its released training runs use them."""


def check_phases(phases: Sequence[Sequence[int]], depth: int | None = None) -> Phases:
    """``phases`` as a tuple of sorted tuples ordered by first layer, after checking that they partition
    ``range(depth)`` (``depth`` = the number of layers named when None); ``ValueError``/``TypeError`` naming what
    is wrong otherwise."""
    if isinstance(phases, str | bytes) or not isinstance(phases, Sequence) or not phases:
        raise TypeError(f"phases must be a non-empty sequence of sequences of layer indices, got {phases!r}")
    groups = []
    for phase in phases:
        if isinstance(phase, str | bytes) or not isinstance(phase, Sequence) or not phase:
            raise ValueError(f"phases must hold non-empty sequences of layer indices, got {phase!r} in {phases!r}")
        if any(isinstance(i, bool) or not isinstance(i, int) for i in phase):
            raise TypeError(f"phases must hold int layer indices, got {list(phase)!r}")
        groups.append(tuple(sorted(phase)))
    layers = sorted(i for g in groups for i in g)
    total = len(layers) if depth is None else depth
    if layers != list(range(total)):
        missing = sorted(set(range(total)) - set(layers))
        repeated = sorted({i for i in layers if layers.count(i) > 1})
        outside = sorted(i for i in set(layers) if not 0 <= i < total)
        raise ValueError(f"phases must cover layers 0..{total - 1} once each (depth {total}), got {phases!r}: "
                         f"missing {missing}, repeated {repeated}, out of range {outside}")
    return tuple(sorted(groups, key=lambda g: g[0]))


class TimeGates(nn.Module):
    """``(g1, g2, g3) = 1 + W2 SiLU(W1 t + b1) + b2``: three per-channel gates from the (scalar) step time ``t``,
    each of shape ``(B, 1, D)``; ``W2, b2`` start at N(0, ``init_std``) so the gates start at 1."""

    def __init__(self, dim: int, hidden: int = 16, init_std: float = 1e-4, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.init_std = init_std
        self.fc1 = nn.Linear(1, hidden, **dd)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, 3 * dim, **dd)
        self.init_weights()

    def init_weights(self) -> None:
        """The output layer at N(0, init_std) (weights and bias), as the paper's code."""
        nn.init.normal_(self.fc2.weight, std=self.init_std)
        nn.init.normal_(self.fc2.bias, std=self.init_std)

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``t``: ``(B,)`` step times -> three gates ``(B, 1, D)``."""
        gates = self.fc2(self.act(self.fc1(t.reshape(-1, 1, 1)))) + 1
        g1, g2, g3 = gates.chunk(3, dim=-1)
        return g1, g2, g3


class RaptorBlock(nn.Module):
    """The shared, time-conditioned block of one phase (module docstring for the equations).

    Args:
        dim, num_heads, mlp_ratio: width, heads and MLP hidden ratio (the paper: the teacher's, 4.0).
        mlp: ``"swiglu"`` (the paper's, ``silu(W_g x) * (W_x x)`` with ``mlp_ratio * dim`` hidden units) or
            ``"gelu"`` (timm's ``Mlp``).
        init_values: LayerScale init (the paper: 1e-5).
        time_hidden: hidden width of the time projection (16).
        time_gates: False drops the gates (``x + LS(attn) + LS(mlp)``, the paper's ablation without ``t_scale``).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, mlp: str = "swiglu",
                 init_values: float = 1e-5, time_hidden: int = 16, time_gates: bool = True, qkv_bias: bool = True,
                 proj_bias: bool = True, qk_norm: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 norm_layer: Any = LayerNorm, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if mlp not in ("swiglu", "gelu"):
            raise ValueError(f"mlp must be 'swiglu' or 'gelu', got {mlp!r}")
        if isinstance(init_values, bool) or not isinstance(init_values, int | float) or init_values <= 0:
            raise ValueError(f"init_values must be a number > 0 (LayerScale init), got {init_values!r}")
        dd = {"device": device, "dtype": dtype}
        hidden = int(dim * mlp_ratio)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm,
                              attn_drop=attn_drop, proj_drop=proj_drop, norm_layer=norm_layer, **dd)
        self.ls1 = LayerScale(dim, init_values=init_values, **dd)
        self.norm2 = norm_layer(dim, **dd)
        if mlp == "swiglu":
            self.mlp = SwiGLU(dim, hidden_features=hidden, drop=proj_drop, **dd)
        else:
            self.mlp = Mlp(dim, hidden_features=hidden, drop=proj_drop, **dd)
        self.ls2 = LayerScale(dim, init_values=init_values, **dd)
        self.gates = TimeGates(dim, time_hidden, **dd) if time_gates else None

    def init_weights(self) -> None:
        """After timm's per-module ViT init: LayerScale back to ``init_values``, the time gates back to 1."""
        self.ls1.reset_parameters()
        self.ls2.reset_parameters()
        if self.gates is not None:
            self.gates.init_weights()

    def forward(self, x: Tensor, t: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """``x`` ``(B, N, D)``, ``t`` ``(B,)`` step times -> ``(B, N, D)``."""
        attn = self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
        if self.gates is None:
            x = x + attn
            return x + self.ls2(self.mlp(self.norm2(x)))
        g1, g2, g3 = self.gates(t.to(x.dtype))
        x = x + g1 * attn
        x = x + g2 * self.ls2(self.mlp(self.norm2(x)))
        return g3 * x


class RecurrentStep(nn.Module):
    """Step ``time`` (1-based layer index) of the recurrence: the shared ``block`` of phase ``phase`` at that time.

    The block is referenced, not registered (the model registers it once, in ``recurrent_blocks``), so the step has
    no parameters of its own."""

    def __init__(self, block: RaptorBlock, phase: int, time: int) -> None:
        super().__init__()
        self._shared = (block,)
        self.phase = phase
        self.time = time

    @property
    def block(self) -> RaptorBlock:
        """The shared block this step runs."""
        return self._shared[0]

    def extra_repr(self) -> str:
        return f"phase={self.phase}, time={self.time}"

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        t = x.new_full((x.shape[0],), float(self.time))
        return self.block(x, t, attn_mask=attn_mask, is_causal=is_causal)


_BLOCK_ONLY = ("block_fn", "mlp_layer", "attn_layer", "drop_path_rate", "scale_attn_norm", "scale_mlp_norm",
               "fix_init")


class Raptor(VisionTransformer):
    """timm's ViT whose ``L`` blocks are ``len(phases)`` shared :class:`RaptorBlock` modules applied recurrently.

    Args:
        phases: lists of 0-based layer indices partitioning ``range(depth)``, one shared block each (default: the
            paper's 3-phase DINOv2-B segmentation, depth 12).
        mlp, init_values, time_hidden, time_gates, mlp_ratio, qkv_bias, proj_bias, qk_norm: of each block
            (:class:`RaptorBlock`).
        block_norm_eps: eps of the shared blocks' LayerNorms (None: the ViT's ``norm_layer``; the release: 1e-5).
        token_patch_head: DINOv2's linear-probe head: ``head(cat(x[:, 0], mean(x[:, num_prefix_tokens:])))`` on the
            final-normed tokens, ``2 D`` features (needs the class token and ``global_pool="token"``).
        **kwargs: timm's :class:`VisionTransformer` (image size, patch size, width, heads, prefix tokens, pooling,
            classes ...); ``depth``, if given, must equal the number of layers of ``phases``. The block-building
            keywords of the ViT (``block_fn``, ``drop_path_rate``, ...) are refused.
    """

    def __init__(self, phases: Sequence[Sequence[int]] = PAPER_PHASES[3], *, mlp: str = "swiglu",
                 init_values: float = 1e-5, time_hidden: int = 16, time_gates: bool = True, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, proj_bias: bool = True, qk_norm: bool = False, attn_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, weight_init: str = "", block_norm_eps: float | None = None,
                 token_patch_head: bool = False, **kwargs: Any) -> None:
        checked = check_phases(phases)
        depth = sum(len(p) for p in checked)
        if kwargs.get("depth", depth) != depth:
            raise ValueError(f"depth={kwargs['depth']!r} disagrees with phases, which cover {depth} layers")
        kwargs.pop("depth", None)
        refused = [k for k in _BLOCK_ONLY if kwargs.get(k)]
        if refused:
            raise ValueError(f"Raptor builds its own blocks; {refused} cannot be set (got "
                             f"{ {k: kwargs[k] for k in refused} })")
        for key in _BLOCK_ONLY:
            kwargs.pop(key, None)
        num_heads = kwargs.pop("num_heads", 12)
        super().__init__(depth=0, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_bias=proj_bias,
                         qk_norm=qk_norm, weight_init="skip", **kwargs)
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        norm_layer = get_norm_layer(kwargs.get("norm_layer")) or LayerNorm
        if block_norm_eps is not None:
            if isinstance(block_norm_eps, bool) or not isinstance(block_norm_eps, int | float) or block_norm_eps <= 0:
                raise ValueError(f"block_norm_eps must be a number > 0 or None, got {block_norm_eps!r}")
            norm_layer = partial(norm_layer, eps=float(block_norm_eps))
        self.token_patch_head = bool(token_patch_head)
        if self.token_patch_head:
            if self.cls_token is None or self.global_pool != "token":
                raise ValueError("token_patch_head=True needs class_token=True and global_pool='token', got "
                                 f"class_token={self.cls_token is not None}, global_pool={self.global_pool!r}")
            self.head_hidden_size = 2 * self.embed_dim
            self.head = nn.Linear(self.head_hidden_size, self.num_classes, **dd) if self.num_classes else nn.Identity()
        self.phases = checked
        self.recurrent_blocks = nn.ModuleList([
            RaptorBlock(self.embed_dim, num_heads, mlp_ratio=mlp_ratio, mlp=mlp, init_values=init_values,
                        time_hidden=time_hidden, time_gates=time_gates, qkv_bias=qkv_bias, proj_bias=proj_bias,
                        qk_norm=qk_norm, attn_drop=attn_drop_rate, proj_drop=proj_drop_rate,
                        norm_layer=norm_layer, **dd)
            for _ in checked])
        phase_of = {layer: p for p, phase in enumerate(checked) for layer in phase}
        self.blocks = nn.Sequential(*[
            RecurrentStep(self.recurrent_blocks[phase_of[layer]], phase_of[layer], layer + 1)
            for layer in range(depth)])
        patch = self.patch_embed
        reduction = patch.feat_ratio() if hasattr(patch, "feat_ratio") else patch.patch_size[0]
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=self.embed_dim, reduction=reduction)
                             for i in range(depth)]
        self.weight_init_mode = "reset" if weight_init == "skip" else weight_init
        if weight_init != "skip":
            self.init_weights(needs_reset=False)

    def pool(self, x: Tensor, pool_type: str | None = None) -> Tensor:
        """timm's pooling, or with ``token_patch_head`` (and no ``pool_type``) DINOv2's linear-probe features
        ``cat(x[:, 0], mean(x[:, num_prefix_tokens:]))``."""
        if not self.token_patch_head or pool_type is not None:
            return super().pool(x, pool_type)
        return torch.cat([x[:, 0], x[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's reset; with ``token_patch_head`` (and ``global_pool`` None or ``"token"``) the new head reads the
        ``2 D`` concatenated features; another ``global_pool`` (``""`` for features_only ...) turns that head off and
        pools as timm does."""
        if global_pool not in (None, "token") and self.token_patch_head:
            self.token_patch_head = False
            self.head_hidden_size = self.embed_dim
        if not self.token_patch_head:
            super().reset_classifier(num_classes, global_pool)
            return
        reference = self.cls_token
        self.num_classes = num_classes
        self.head = (nn.Linear(self.head_hidden_size, num_classes, device=reference.device, dtype=reference.dtype)
                     if num_classes > 0 else nn.Identity())

    @property
    def num_phases(self) -> int:
        """The number of shared blocks."""
        return len(self.phases)

    @property
    def depth(self) -> int:
        """The number of recurrent steps (the teacher's depth)."""
        return len(self.blocks)


def _norm_of(teacher: VisionTransformer) -> Any:
    """The norm class of the teacher's blocks with their eps (timm's LayerNorm when none is found)."""
    norm = getattr(teacher.blocks[0], "norm1", None) if len(teacher.blocks) else None
    if isinstance(norm, nn.LayerNorm):
        return partial(type(norm), eps=norm.eps)
    return LayerNorm


def raptor_from_teacher(teacher: VisionTransformer, phases: Sequence[Sequence[int]], **kwargs: Any) -> Raptor:
    """A :class:`Raptor` shaped like ``teacher`` (a timm ``VisionTransformer``: ViT, DeiT, DINOv2 ...) whose
    patch embedding, prefix tokens, position embedding, final norms and head are copies of the teacher's, and whose
    ``len(phases)`` recurrent blocks are new (``kwargs``: :class:`RaptorBlock` options such as ``mlp``,
    ``mlp_ratio``, ``init_values``). On the teacher's device and dtype."""
    if not isinstance(teacher, VisionTransformer) or isinstance(teacher, Raptor):
        raise TypeError(f"teacher must be a timm VisionTransformer (ViT, DeiT, DINOv2, ...), got "
                        f"{type(teacher).__name__}")
    checked = check_phases(phases, len(teacher.blocks))
    attn = getattr(teacher.blocks[0], "attn", None)
    num_heads = getattr(attn, "num_heads", None)
    if not isinstance(num_heads, int):
        raise TypeError(f"teacher's blocks have no attn.num_heads to copy ({type(teacher.blocks[0]).__name__})")
    qkv = getattr(attn, "qkv", None)
    identity = (nn.Identity,)
    shape = dict(
        img_size=teacher.patch_embed.img_size, patch_size=teacher.patch_embed.patch_size,
        in_chans=teacher.patch_embed.proj.in_channels, num_classes=teacher.num_classes,
        global_pool=teacher.global_pool, embed_dim=teacher.embed_dim, num_heads=num_heads,
        class_token=teacher.cls_token is not None, reg_tokens=teacher.num_reg_tokens,
        no_embed_class=teacher.no_embed_class, pos_embed="learn" if teacher.pos_embed is not None else "none",
        pre_norm=not isinstance(teacher.norm_pre, identity), fc_norm=not isinstance(teacher.fc_norm, identity),
        final_norm=not (isinstance(teacher.norm, identity) and isinstance(teacher.fc_norm, identity)),
        dynamic_img_size=teacher.dynamic_img_size, pool_include_prefix=teacher.pool_include_prefix,
        norm_layer=_norm_of(teacher), qkv_bias=qkv is None or qkv.bias is not None,
    )
    reference = next(iter(teacher.parameters()))
    surrogate = Raptor(checked, **dict(shape, **kwargs)).to(device=reference.device, dtype=reference.dtype)
    ours = surrogate.state_dict()
    theirs = teacher.state_dict()
    shared = [k for k in ours if not k.startswith("recurrent_blocks.")]
    absent = [k for k in shared if k not in theirs or theirs[k].shape != ours[k].shape]
    absent += [k for k in theirs if not k.startswith("blocks.") and k not in ours]
    if absent:
        raise ValueError(f"teacher ({type(teacher).__name__}) and its Raptor disagree on the embedding/head "
                         f"entries {absent}")
    surrogate.load_state_dict({k: theirs[k] for k in shared}, strict=False)
    return surrogate


_ARGS: dict[str, dict[str, Any]] = {
    **{f"visattn_raptor{k}_base_patch14_reg4_dinov2": dict(
        patch_size=14, embed_dim=768, num_heads=12, reg_tokens=4, no_embed_class=True, phases=PAPER_PHASES[k],
        block_norm_eps=1e-5, token_patch_head=True)
       for k in (2, 3, 4)},
    "visattn_raptor_small_patch16_224": dict(patch_size=16, embed_dim=384, num_heads=6, phases=PAPER_PHASES[3]),
    "visattn_raptor_base_patch16_224": dict(patch_size=16, embed_dim=768, num_heads=12, phases=PAPER_PHASES[3]),
}
"""The architecture of each registered size (the teacher's shape and the default phases)."""

TEACHERS: dict[str, str] = {
    **{f"visattn_raptor{k}_base_patch14_reg4_dinov2": "vit_base_patch14_reg4_dinov2" for k in (2, 3, 4)},
    "visattn_raptor_small_patch16_224": "vit_small_patch16_224",
    "visattn_raptor_base_patch16_224": "vit_base_patch16_224",
}
"""visattn model name -> the timm ViT whose shape (and, fitted, whose computation) it takes."""

_RELEASED = {f"visattn_raptor{k}_base_patch14_reg4_dinov2": k for k in (2, 3, 4)}
"""The sizes of the official release (KempnerInstitute/raptor) -> its number of blocks."""

_SEEDS = {2: 1001, 3: 1101, 4: 1201}
"""The first of the three seeds of the release's ``raptor/runs/00{2,3,4}_raptor{k}_pretrained.sh`` (the first model
its probes read)."""

RELEASE_FILES: dict[int, str] = {
    k: (f"final_raptor{k}_weighted_True_autoregressive_True_distillation_False_teacher_False_mse_False_cosine_False_"
        f"t_scale_True_swiglu_True_sigma_0.0_start_0_end_12_lr_0.0003_cls_weight_0.45_reg_weight_0.1_"
        f"patch_weight_0.45_seed_{seed}_step_312500.pt")
    for k, seed in _SEEDS.items()
}
"""Number of blocks -> the name the release's ``raptor/trainer.py`` gives that run's final model
(``make_fname_base``; 20 epochs of 1,000,000 // 64 steps), the one ``raptor/utils.py`` ``find_raptor_checkpoint``
looks for. The Drive archive itself could not be opened here: pass the path of the file you downloaded as
``pretrained_cfg_overlay=dict(file=...)``."""

default_cfgs = generate_default_cfgs({
    name: timm_pretrained_cfg(teacher, url="", hf_hub_id=None, notes=(
        f"a Raptor surrogate of timm's {teacher}; no weights were released: fit one with "
        "visattn.train.raptor.fit_raptor",)) if name not in _RELEASED else
    timm_pretrained_cfg(teacher, url="", hf_hub_id=None, file=RELEASE_FILES[_RELEASED[name]],
                        origin_url="https://github.com/KempnerInstitute/raptor", paper_ids="arXiv:2512.19941", notes=(
        "blocks: the official release (docs/index.md's Google Drive archive; pass the unpacked file as "
        "pretrained_cfg_overlay=dict(file=...)), embedding and norm: timm's pretrained teacher, head (num_classes="
        "1000): Meta's DINOv2 linear head; key mapping in visattn.models.raptor_release",))
    for name, teacher in TEACHERS.items()
})


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> Raptor:
    teacher = kwargs.pop("teacher", None)
    linear_head = kwargs.pop("linear_head", None)
    if pretrained and variant not in _RELEASED:
        raise NotImplementedError(f"{variant}: no Raptor weights were released for this teacher (only "
                                  f"{sorted(_RELEASED)}); fit one with visattn.train.raptor.fit_raptor")
    if not pretrained and (teacher is not None or linear_head is not None):
        raise ValueError("teacher= and linear_head= are read only with pretrained=True")
    args = dict(_ARGS[variant])
    phases = kwargs.pop("phases", args.pop("phases"))
    args.pop("phases", None)
    out_indices = kwargs.pop("out_indices", 3)
    model = build_model_with_cfg(Raptor, variant, False, feature_cfg=dict(out_indices=out_indices,
                                                                          feature_cls="getter"),
                                 phases=phases, **dict(args, **kwargs))
    if pretrained:
        from .raptor_release import load_pretrained

        load_pretrained(model, teacher=teacher, linear_head=linear_head, teacher_name=TEACHERS[variant])
    return model


@register_model
def visattn_raptor2_base_patch14_reg4_dinov2(pretrained: bool = False, **kwargs: Any) -> Raptor:
    """Raptor with 2 recurrent blocks (layers 1-7, 8-12) in the shape of DINOv2 ViT-B/14 with 4 registers."""
    return _create("visattn_raptor2_base_patch14_reg4_dinov2", pretrained, kwargs)


@register_model
def visattn_raptor3_base_patch14_reg4_dinov2(pretrained: bool = False, **kwargs: Any) -> Raptor:
    """Raptor with 3 recurrent blocks (layers 1-7, 8-10, 11-12) in the shape of DINOv2 ViT-B/14 with 4 registers."""
    return _create("visattn_raptor3_base_patch14_reg4_dinov2", pretrained, kwargs)


@register_model
def visattn_raptor4_base_patch14_reg4_dinov2(pretrained: bool = False, **kwargs: Any) -> Raptor:
    """Raptor with 4 recurrent blocks (layers 1-4, 5-7, 8-10, 11-12) in the shape of DINOv2 ViT-B/14 with 4
    registers."""
    return _create("visattn_raptor4_base_patch14_reg4_dinov2", pretrained, kwargs)


@register_model
def visattn_raptor_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> Raptor:
    """Raptor in the shape of ViT-S/16 (default phases: the paper's 3-phase segmentation; pass ``phases=``)."""
    return _create("visattn_raptor_small_patch16_224", pretrained, kwargs)


@register_model
def visattn_raptor_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> Raptor:
    """Raptor in the shape of ViT-B/16 (default phases: the paper's 3-phase segmentation; pass ``phases=``)."""
    return _create("visattn_raptor_base_patch16_224", pretrained, kwargs)
