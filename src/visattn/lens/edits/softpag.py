"""SoftPAG: perturbed-attention guidance with a continuous strength, on chosen heads.

Ahn et al., "Fine-Grained Perturbation Guidance via Attention Head Selection" (later "Where and How to Perturb: On
the Design of Perturbation Guidance in Diffusion and Flow Models"), arXiv 2506.10978 (code: cvlab-kaist/HeadHunter).
On the selected heads of the perturbed branch the attention map moves toward a target ``A*`` by ``u in [0, 1]``:

    linear:      A' = (1 - u) A + u A*
    Fisher-Rao:  A' = ( sin((1-u) theta) sqrt(A) + sin(u theta) sqrt(A*) )^2 / sin(theta)^2,
                 cos(theta) = sum_j sqrt(A_j A*_j)   (the geodesic of the Fisher-Rao metric, row by row)

with the targets ``"identity"`` (``A* = I``: PAG, SoftPAG), ``"uniform"`` (``A* = 1/n`` over the visible keys, so
the linear path is ``(1 - u) A + u / N``) and ``"temperature"`` (``A* = softmax(z / T)``, computed from ``A``).
``u = 0`` leaves attention unchanged; ``u = 1`` gives the target. The guided prediction is
``eps = (1 + w) eps_orig - w eps_pert`` (:func:`perturbation_guidance`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..call import AttentionCall
from ..edit_base import Edit
from ._common import head_mask, indices, number, query_positions, visible_keys

TARGETS = ("identity", "uniform", "temperature")
PATHS = ("linear", "fisher_rao")


def perturbation_guidance(eps_orig: Tensor, eps_pert: Tensor, w: float) -> Tensor:
    """Perturbation guidance ``(1 + w) eps_orig - w eps_pert`` (``w`` the guidance scale, 3 in HeadHunter)."""
    if not isinstance(eps_orig, Tensor) or not isinstance(eps_pert, Tensor) or eps_orig.shape != eps_pert.shape:
        shapes = [getattr(e, "shape", type(e).__name__) for e in (eps_orig, eps_pert)]
        raise ValueError(f"eps_orig and eps_pert must be tensors of the same shape, got {shapes[0]} and {shapes[1]}")
    w = number(w, "w")
    return (1.0 + w) * eps_orig - w * eps_pert


def fisher_rao_path(a: Tensor, b: Tensor, u: float) -> Tensor:
    """Point ``u`` of the Fisher-Rao geodesic from row distributions ``a`` to ``b`` (last dim)."""
    ra, rb = a.clamp_min(0).sqrt(), b.clamp_min(0).sqrt()
    theta = torch.arccos((ra * rb).sum(-1, keepdim=True).clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    flat = sin < 1e-7
    safe = torch.where(flat, torch.ones_like(sin), sin)
    curve = (torch.sin((1.0 - u) * theta) * ra + torch.sin(u * theta) * rb) / safe
    return torch.where(flat, (1.0 - u) * ra + u * rb, curve).square()


class SoftPerturbedAttention(Edit):
    """Move the attention of chosen heads toward a perturbation target by ``u`` (SoftPAG and its variants).

    Args:
        u: interpolation strength in ``[0, 1]``.
        target: ``"identity"``, ``"uniform"`` or ``"temperature"``.
        path: ``"linear"`` or ``"fisher_rao"``.
        temperature: ``T`` of the temperature target (required with it), ``> 0``.
        batch: batch entries perturbed (the perturbed branch of a ``[orig, pert]`` batch); None = all.
        head_pairs: ``(layer, head)`` pairs, e.g. from :func:`visattn.lens.edits.head_hunter`, instead of the
            ``layers`` x ``heads`` product.
        layers, heads: where the edit acts (None = everywhere).
    """

    def __init__(self, u: float = 1.0, *, target: str = "identity", path: str = "linear",
                 temperature: float | None = None, batch: Sequence[int] | None = None,
                 head_pairs: Sequence[tuple[int, int]] | None = None, layers: Sequence[int] | None = None,
                 heads: Sequence[int] | None = None) -> None:
        pairs = None
        if head_pairs is not None:
            if layers is not None or heads is not None:
                raise ValueError("give head_pairs or layers/heads, not both")
            pairs = _pairs(head_pairs)
            layers = sorted({layer for layer, _ in pairs})
        super().__init__(layers, heads)
        self.head_pairs = pairs
        self.u = number(u, "u", 0.0, 1.0)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if (target == "temperature") != (temperature is not None):
            raise ValueError(f"temperature is needed by, and only by, target='temperature'; got target={target!r}, "
                             f"temperature={temperature!r}")
        self.target, self.path = target, path
        self.temperature = None if temperature is None else number(temperature, "temperature", 0.0, low_open=True)
        self.batch = None if batch is None else tuple(indices(batch, "batch").tolist())

    def check(self, num_layers: int, num_heads: int) -> None:
        super().check(num_layers, num_heads)
        bad = [pair for pair in self.head_pairs or () if pair[1] >= num_heads]
        if bad:
            raise ValueError(f"SoftPerturbedAttention: head_pairs {bad} out of range; the model has {num_heads} heads")

    def target_map(self, probs: Tensor, call: AttentionCall) -> Tensor:
        """``A*`` for every row of ``probs``."""
        if self.target == "identity":
            eye = torch.zeros_like(probs)
            diagonal = query_positions(call).view(1, 1, -1, 1).expand(*probs.shape[:3], 1)
            return eye.scatter(-1, diagonal, 1.0)
        if self.target == "uniform":
            visible = visible_keys(call, probs).to(probs.dtype)
            return visible / visible.sum(-1, keepdim=True).clamp_min(1.0)
        logp = torch.log(probs) / self.temperature
        empty = torch.isneginf(logp.amax(-1, keepdim=True))
        return torch.softmax(logp.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)

    def edit_probs(self, probs: Tensor, call: AttentionCall) -> Tensor:
        if self.u == 0.0:
            return probs
        target = self.target_map(probs, call)
        if self.path == "linear":
            moved = (1.0 - self.u) * probs + self.u * target
        else:
            moved = fisher_rao_path(probs, target, self.u)
        where = self._heads(call, probs)[:, None, None] & self._batch(probs)[:, None, None, None]
        live = probs.sum(-1, keepdim=True) > 0
        return torch.where(where & live, moved, probs)

    def _heads(self, call: AttentionCall, probs: Tensor) -> Tensor:
        if self.head_pairs is None:
            return head_mask(self.heads, probs.shape[1], probs.device, "SoftPerturbedAttention")
        chosen = tuple(head for layer, head in self.head_pairs if layer == call.layer)
        return head_mask(chosen, probs.shape[1], probs.device, "SoftPerturbedAttention")

    def _batch(self, probs: Tensor) -> Tensor:
        if self.batch is None:
            return torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
        bad = [b for b in self.batch if b >= probs.shape[0]]
        if bad:
            raise ValueError(f"SoftPerturbedAttention: batch entries {bad} out of range for batch size "
                             f"{probs.shape[0]}")
        mask = torch.zeros(probs.shape[0], dtype=torch.bool, device=probs.device)
        mask[list(self.batch)] = True
        return mask


def _pairs(head_pairs: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    if isinstance(head_pairs, (str, bytes)) or not isinstance(head_pairs, Sequence):
        raise TypeError(f"head_pairs must be a sequence of (layer, head) pairs, got {head_pairs!r}")
    out = []
    for pair in head_pairs:
        if (not isinstance(pair, Sequence) or len(pair) != 2
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in pair)):
            raise TypeError(f"head_pairs must contain (layer, head) pairs of non-negative ints, got {pair!r}")
        out.append((pair[0], pair[1]))
    return tuple(out)
