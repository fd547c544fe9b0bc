"""ConsistEdit: Q/K/V control in the joint text-image attention of multimodal diffusion transformers.

Yin et al., "ConsistEdit: Highly Consistent and Precise Training-free Visual Editing", arXiv 2510.17803
(SIGGRAPH Asia 2025; code: zxYin/ConsistEdit_Code). A source and a target generation run side by side in one
batch. On the vision tokens of the target, with ``M`` the edit mask (1 = edited region):

    steps t < int(alpha T):  Q_tgt <- Q_src,                     K_tgt <- K_src
    later steps:             Q_tgt <- M Q_tgt + (1 - M) Q_src,   K_tgt <- M K_tgt + (1 - M) K_src
    every step:              V_tgt <- M V_tgt + (1 - M) V_src

The switch is at step ``int(alpha T)`` as in the official code (``TEST_QK_STEP = int(steps * alpha)``, source Q/K
while ``step in range(0, TEST_QK_STEP)``): with alpha 0.3 and T 28 steps 0-7 take the source Q/K, step 8 already
fuses. Text tokens keep the target's Q, K, V. ``alpha`` is the consistency strength (1 in the paper's structure-keeping
edits, 0.3 for style changes). ``M`` comes from the source pass's image -> text attention for the edited words,
averaged over heads, summed over those words, min-max normalised over the image and thresholded at 0.1
(:func:`edit_region_mask`). Give ``mask=`` (e.g. from captured source attention averaged over layers and steps,
as the code does in a separate mask pass) or let each call compute ``M`` from its own source Q and K.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..call import AttentionCall
from ..edit_base import Edit
from ._common import head_mask, indices, number, sequence_positions

MINMAX_EPS = 1e-6


def edit_region_mask(probs: Tensor, image_tokens: Sequence[int] | Tensor, text_tokens: Sequence[int] | Tensor,
                     edit_tokens: Sequence[int] | Tensor, threshold: float = 0.1) -> Tensor:
    """ConsistEdit's edit mask ``M`` (bool ``(B, n_img)``) from source attention.

    Args:
        probs: source attention ``(B, heads, N, N)`` (averaged over heads) or ``(B, N, N)``.
        image_tokens, text_tokens: positions of the image and text tokens in the joint sequence.
        edit_tokens: indices into ``text_tokens`` of the words being edited (summed).
        threshold: on the min-max normalised map (0.1).
    """
    if not isinstance(probs, Tensor) or probs.dim() not in (3, 4) or not probs.is_floating_point():
        raise TypeError(f"probs must be a float (B, heads, N, N) or (B, N, N) tensor, got "
                        f"{getattr(probs, 'shape', type(probs).__name__)}")
    number(threshold, "threshold", 0.0, 1.0)
    mean = probs.mean(1) if probs.dim() == 4 else probs
    n = mean.shape[-1]
    image, text, edit = (indices(v, name) for v, name in ((image_tokens, "image_tokens"), (text_tokens, "text_tokens"),
                                                           (edit_tokens, "edit_tokens")))
    for name, idx, limit in (("image_tokens", image, n), ("text_tokens", text, n), ("edit_tokens", edit, text.numel())):
        if int(idx.max()) >= limit:
            raise ValueError(f"{name} {idx[idx >= limit].tolist()} out of range ({limit})")
    device = mean.device
    scores = mean[:, image.to(device)][..., text[edit].to(device)].sum(-1)
    low, high = scores.amin(-1, keepdim=True), scores.amax(-1, keepdim=True)
    return (scores - low) / (high - low + MINMAX_EPS) > threshold


class ConsistEditControl(Edit):
    """ConsistEdit's Q/K/V fusion between source and target generations (see the module docstring).

    Args:
        text_tokens: positions of the text tokens in the joint sequence; the other positions are vision tokens.
        num_steps: the number of denoising steps ``T``.
        consistency: ``alpha``, the share of steps with source Q/K on vision tokens (1.0 by default in the code);
            steps ``0 .. int(alpha T) - 1`` take them.
        mask: fixed edit mask ``(n_img,)`` or ``(pairs, n_img)`` (bool or float in [0, 1]); None computes it per
            call from the source Q and K with ``edit_tokens`` and ``threshold``.
        edit_tokens: indices into ``text_tokens`` of the edited words (needed without ``mask``).
        threshold: mask threshold (0.1).
        pairs: ``(source, target)`` batch index pairs; None = first half of the batch is the source, second half
            the target (e.g. ``[uncond_src, cond_src, uncond_tgt, cond_tgt]`` -> pairs ``(0, 2), (1, 3)``).
        layers, heads: where the edit acts.

    Set the current denoising step with :meth:`set_step` before each step (0-based).
    """

    def __init__(self, text_tokens: Sequence[int] | Tensor, *, num_steps: int, consistency: float = 1.0,
                 mask: Tensor | None = None, edit_tokens: Sequence[int] | Tensor | None = None,
                 threshold: float = 0.1, pairs: Sequence[tuple[int, int]] | None = None,
                 layers: Sequence[int] | None = None, heads: Sequence[int] | None = None) -> None:
        super().__init__(layers, heads)
        self.text_tokens = indices(text_tokens, "text_tokens")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        self.num_steps = num_steps
        self.consistency = number(consistency, "consistency", 0.0, 1.0)
        if (mask is None) == (edit_tokens is None):
            raise ValueError("ConsistEditControl needs exactly one of mask (the edit region) or edit_tokens (to "
                             "compute it from the source attention)")
        if mask is not None and (not isinstance(mask, Tensor) or mask.dim() not in (1, 2)):
            raise TypeError(f"mask must be a (n_img,) or (pairs, n_img) tensor, got "
                            f"{getattr(mask, 'shape', type(mask).__name__)}")
        self.mask = mask
        self.edit_tokens = None if edit_tokens is None else indices(edit_tokens, "edit_tokens")
        self.threshold = number(threshold, "threshold", 0.0, 1.0)
        self.pairs = None if pairs is None else [tuple(indices(p, "pairs").tolist()) for p in pairs]
        if self.pairs is not None and not all(len(p) == 2 for p in self.pairs):
            raise ValueError(f"pairs must be (source, target) index pairs, got {pairs!r}")
        self.step = 0

    @property
    def switch_step(self) -> int:
        """The first step that fuses Q/K: ``int(alpha T)``, as the official code."""
        return int(self.consistency * self.num_steps)

    def set_step(self, step: int) -> None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        self.step = step

    def _pairs(self, batch: int) -> tuple[Tensor, Tensor]:
        if self.pairs is None:
            if batch % 2:
                raise ValueError(f"ConsistEditControl needs a batch of source and target halves, got batch size "
                                 f"{batch}; pass pairs=[(source, target), ...]")
            return torch.arange(batch // 2), torch.arange(batch // 2, batch)
        bad = [p for p in self.pairs if max(p) >= batch]
        if bad:
            raise ValueError(f"ConsistEditControl: pairs {bad} out of range for batch size {batch}")
        source, target = zip(*self.pairs, strict=True)
        return torch.tensor(source), torch.tensor(target)

    def edit_qkv(self, call: AttentionCall) -> AttentionCall:
        q, k, v = call.q, call.k, call.v
        if q.shape[-2] != k.shape[-2]:
            raise ValueError(f"ConsistEditControl acts on joint self-attention (Nq == Nk); layer {call.layer} has "
                             f"Nq={q.shape[-2]}, Nk={k.shape[-2]}")
        text = sequence_positions(self.text_tokens, call, "text_tokens")
        vision = torch.ones(k.shape[-2], dtype=torch.bool, device=k.device)
        vision[text] = False
        image = vision.nonzero().reshape(-1)
        src, tgt = self._pairs(q.shape[0])
        region = self._region(call, src, image, text).to(q.dtype)
        full = torch.zeros(len(src), k.shape[-2], dtype=q.dtype, device=q.device)
        full[:, image] = region
        keep_v = full[:, None, :, None]
        keep_qk = torch.zeros_like(keep_v) if self.step < self.switch_step else keep_v
        vision_qk = vision[None, None, :, None]
        heads = head_mask(self.heads, q.shape[1], q.device, "ConsistEditControl")[None, :, None, None]

        def fuse(x: Tensor, keep: Tensor, only_vision: Tensor) -> Tensor:
            fused = torch.where(only_vision, keep * x[tgt] + (1 - keep) * x[src], x[tgt])
            out = x.clone()
            out[tgt] = torch.where(heads, fused, x[tgt])
            return out

        return call.with_qkv(fuse(q, keep_qk, vision_qk), fuse(k, keep_qk, vision_qk), fuse(v, keep_v, vision_qk))

    def _region(self, call: AttentionCall, src: Tensor, image: Tensor, text: Tensor) -> Tensor:
        """``M`` over the vision tokens, ``(pairs, n_img)``."""
        if self.mask is not None:
            if self.mask.shape[-1] != image.numel():
                raise ValueError(f"ConsistEditControl: mask covers {self.mask.shape[-1]} vision tokens, layer "
                                 f"{call.layer} has {image.numel()}")
            return self.mask.to(call.q.device).float().expand(len(src), -1)
        logits = (call.q[src] @ call.k[src].transpose(-2, -1)) * call.scale
        if call.bias is not None:
            bias = call.bias if call.bias.shape[0] == 1 else call.bias[src]
            logits = logits + bias.to(logits.dtype)
        return edit_region_mask(torch.softmax(logits, dim=-1), image, text, self.edit_tokens, self.threshold)
