"""Loading the released Raptor weights (Jacobs, Fel, Hakim et al., "Block-Recurrent Dynamics in Vision Transformers",
arXiv 2512.19941) into :class:`visattn.models.raptor.Raptor`.

The official repository (github.com/KempnerInstitute/raptor) links its trained models from ``docs/index.md`` (a
Google Drive archive, "Pretrained Weights & Demo"). Its trainer (``raptor/trainer.py``) saves them with
``torch.save(model)``: a *pickled module*, not a state dict, of its ``Raptor(blocks, thresholds)`` class holding
``blocks``, a ``ModuleList`` of its ``Block`` class. Nothing else is in the file: the patch embedding, class and
register tokens, position embedding and final norm are those of DINOv2 ViT-B/14 with registers
(``torch.hub`` ``dinov2_vitb14_reg``; timm's ``vit_base_patch14_reg4_dinov2``), the classifier Meta's DINOv2 linear
head ``dinov2_vitb14_reg4_linear_head.pth`` (``weight`` 1000 x 1536, ``bias``) or a probe the release trains
(``{variant}_classifier_modelseed_{seed}_probeseed_{seed}.pt``, the state dict of that ``Linear``).

One official block (``raptor/block.py``; ``D`` the width, ``H = 4 D`` the MLP width) and where its entries land in
ours, ``recurrent_blocks.{i}.`` + (``blocks.{i}.`` + official name -> our name)::

    norm1.{weight,bias}          nn.LayerNorm(D) (eps 1e-5)          -> norm1.{weight,bias}
    attn.in_proj_{weight,bias}   nn.MultiheadAttention, q|k|v packed -> attn.qkv.{weight,bias}   (same q|k|v order)
    attn.out_proj.{weight,bias}                                      -> attn.proj.{weight,bias}
    ls1.gamma, ls2.gamma         LayerScale                          -> ls1.gamma, ls2.gamma
    norm2.{weight,bias}                                              -> norm2.{weight,bias}
    mlp.0.{weight,bias}          Linear(D, 2 H), silu(first) * second -> mlp.fc1_g = rows [:H], mlp.fc1_x = rows [H:]
                                 (GELU blocks: Linear(D, H))         -> mlp.fc1
    mlp.2.{weight,bias}          Linear(H, D)                        -> mlp.fc2
    t_proj.0.{weight,bias}       Linear(1, 16) - SiLU -              -> gates.fc1
    t_proj.2.{weight,bias}       Linear(16, 3 D), gates = 1 + out   -> gates.fc2

and ``classifier.{weight,bias}`` (the probe wrapper's, or a bare linear head's ``weight``/``bias``) -> ``head``. The
wrapper's prefix ``raptor.`` is stripped; its ``dino.*`` entries (DINOv2's own layout) are refused: load the teacher
through timm. A block trained alone (``final_..._start_{a}_end_{b}_..._step_312500.pt``: a pickled ``Block``, keys
without ``blocks.{i}.``) maps onto a one-phase model, or onto phase ``phase`` with :func:`release_to_visattn`.

The official model picks block ``i`` for step ``t`` (1-based) at the first threshold ``t <= thresholds[i]``
(``raptor2``: (7,), ``raptor3``: (7, 10), ``raptor4``: (4, 7, 10); :data:`RELEASE_THRESHOLDS`) and feeds it the
raw ``t`` as time: our phases :data:`visattn.models.raptor.PAPER_PHASES` and ``RecurrentStep.time``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import SwiGLU
from torch import Tensor, nn

from .raptor import RELEASE_FILES, Raptor, phases_from_sizes

__all__ = ["RELEASE_FILES", "RELEASE_THRESHOLDS", "RELEASE_URL", "checkpoint_filter_fn", "load_release",
           "load_pretrained", "phases_from_thresholds", "read_release", "release_to_visattn"]

_logger = logging.getLogger(__name__)

RELEASE_URL = "https://drive.google.com/file/d/1LRldgST9T6-s7dIR06z4SfafR_l2LSQQ/view?usp=sharing"
"""The archive ``docs/index.md`` of KempnerInstitute/raptor links ("Pretrained Weights & Demo")."""

DINOV2_LINEAR_HEAD_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_linear_head.pth"
"""Meta's DINOv2 ViT-B/14-reg linear head, the classifier the release starts its probes from."""

RELEASE_THRESHOLDS: dict[int, tuple[int, ...]] = {2: (7,), 3: (7, 10), 4: (4, 7, 10)}
"""``raptor/trainer.py`` ``build_model``: the last step of each block but the last."""

def phases_from_thresholds(thresholds: tuple[int, ...] | list[int], depth: int = 12) -> tuple[tuple[int, ...], ...]:
    """Our 0-based phases from the release's thresholds: block ``i`` runs steps ``thresholds[i-1] + 1 ..
    thresholds[i]``, i.e. produces layers from the states ``thresholds[i-1] .. thresholds[i] - 1``."""
    bounds = [0, *thresholds, depth]
    if any(b <= a for a, b in zip(bounds[:-1], bounds[1:], strict=True)):
        raise ValueError(f"thresholds must increase strictly within 1..{depth - 1}, got {list(thresholds)}")
    return phases_from_sizes([b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


class _Stand(nn.Module):
    """Holds the parameters of an unpickled official module (``Raptor``, ``Block``, ``SwiGLU``, ``LayerScale``);
    never run."""


_STANDS = {name: type(name, (_Stand,), {"__module__": __name__}) for name in ("Raptor", "Block", "SwiGLU",
                                                                              "LayerScale")}
_RELEASE_CLASSES = {f"{module}.{name}": cls for name, cls in _STANDS.items()
                    for module in (("raptor", "raptor.raptor") if name == "Raptor" else ("block", "raptor.block"))}
"""The class paths ``torch.save(model)`` recorded (run from ``raptor/``: ``block.Block``; as a package:
``raptor.block.Block``) -> parameter holders."""
_TORCH_CLASSES = (nn.ModuleList, nn.Sequential, nn.LayerNorm, nn.MultiheadAttention, nn.Linear,
                  nn.modules.linear.NonDynamicallyQuantizableLinear, nn.SiLU, nn.GELU, nn.Identity, set)


def read_release(file: str | os.PathLike[str] | Mapping[str, Any] | nn.Module) -> dict[str, Tensor]:
    """The official state dict of a release file, read with ``torch.load(weights_only=True)``: the pickled modules
    ``torch.save(model)`` wrote are rebuilt as parameter holders (only the release's four classes and the torch
    modules they contain are allowed, nothing is executed), or a saved state dict is taken as is (unwrapped from
    ``"state_dict"``/``"model"``). A module or mapping given directly is read the same way."""
    obj: Any = file
    if isinstance(file, str | os.PathLike):
        allowed = [(cls, name) for name, cls in _RELEASE_CLASSES.items()] + list(_TORCH_CLASSES)
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping | nn.Module):
                return read_release(obj[key])
        bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
        if bad:
            raise TypeError(f"a release state dict maps names to tensors; {bad[:5]} are not tensors")
        return dict(obj)
    raise TypeError(f"file must be a path, a state dict or a module, got {type(obj).__name__}")


_BLOCK_MAP = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias", "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight", "attn.out_proj.bias": "attn.proj.bias", "ls1.gamma": "ls1.gamma",
    "ls2.gamma": "ls2.gamma", "mlp.2.weight": "mlp.fc2.weight", "mlp.2.bias": "mlp.fc2.bias",
    "t_proj.0.weight": "gates.fc1.weight", "t_proj.0.bias": "gates.fc1.bias", "t_proj.2.weight": "gates.fc2.weight",
    "t_proj.2.bias": "gates.fc2.bias",
}


def _map_block(name: str, tensor: Tensor, prefix: str, swiglu: bool) -> dict[str, Tensor] | None:
    if name in _BLOCK_MAP:
        return {prefix + _BLOCK_MAP[name]: tensor}
    if name in ("mlp.0.weight", "mlp.0.bias"):
        kind = name.rsplit(".", 1)[1]
        if not swiglu:
            return {f"{prefix}mlp.fc1.{kind}": tensor}
        gate, value = tensor.chunk(2, dim=0)
        return {f"{prefix}mlp.fc1_g.{kind}": gate, f"{prefix}mlp.fc1_x.{kind}": value}
    return None


def _is_single_block(state_dict: Mapping[str, Tensor]) -> bool:
    """A checkpoint of one official ``Block`` (its entries not under ``blocks.{i}.``)."""
    return any(k.removeprefix("raptor.") in _BLOCK_MAP for k in state_dict)


def release_to_visattn(state_dict: Mapping[str, Tensor], model: Raptor, phase: int | None = None
                       ) -> tuple[dict[str, Tensor], list[str]]:
    """``(mapped, unmatched)``: the official entries of ``state_dict`` under our names (table in the module
    docstring), and the official names nothing maps. Entries already in our layout pass through. ``phase``: the
    phase a single block's checkpoint goes to (default 0, allowed only on a one-phase model)."""
    swiglu = all(isinstance(b.mlp, SwiGLU) for b in model.recurrent_blocks)
    ours = model.state_dict()
    mapped: dict[str, Tensor] = {}
    unmatched: list[str] = []
    single = _is_single_block(state_dict)
    if single:
        if phase is None and model.num_phases != 1:
            raise ValueError(f"a single block's checkpoint needs phase=0..{model.num_phases - 1} on a "
                             f"{model.num_phases}-phase Raptor")
        phase = 0 if phase is None else phase
        if isinstance(phase, bool) or not isinstance(phase, int) or not 0 <= phase < model.num_phases:
            raise ValueError(f"phase must be in 0..{model.num_phases - 1}, got {phase!r}")
    for key, tensor in state_dict.items():
        name = key.removeprefix("raptor.")
        if name in ours and not name.startswith("blocks."):
            mapped[name] = tensor
            continue
        if name.startswith("dino."):
            unmatched.append(key)
            continue
        if name in ("classifier.weight", "classifier.bias"):
            mapped["head." + name.split(".")[1]] = tensor
            continue
        if single:
            out = _map_block(name, tensor, f"recurrent_blocks.{phase}.", swiglu)
        else:
            parts = name.split(".", 2)
            out = None
            if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
                out = _map_block(parts[2], tensor, f"recurrent_blocks.{parts[1]}.", swiglu)
        if out is None:
            unmatched.append(key)
        else:
            mapped.update(out)
    return mapped, unmatched


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: Raptor) -> dict[str, Tensor]:
    """timm-style filter: the release's state dict (or a bare linear head ``{weight, bias}``) in our layout;
    ``ValueError`` naming the entries that map nowhere."""
    if set(state_dict) == {"weight", "bias"}:
        return {"head.weight": state_dict["weight"], "head.bias": state_dict["bias"]}
    mapped, unmatched = release_to_visattn(state_dict, model)
    if unmatched:
        raise ValueError(f"release entries with no place in {type(model).__name__}: {unmatched[:8]}"
                         f"{' ...' if len(unmatched) > 8 else ''} ({len(unmatched)} in all)")
    return mapped


def load_release(model: Raptor, file: str | os.PathLike[str] | Mapping[str, Any] | nn.Module,
                 phase: int | None = None) -> list[str]:
    """Load a release file (path, state dict or module; :func:`read_release`) into ``model``. Every recurrent
    block of the model must be filled (for a single block's checkpoint: the ``phase`` one) with tensors of the right
    shapes, and every official entry must land, else ``ValueError`` naming the entries; returns our entries the
    file left as they were (the embedding, norm and head, which the release takes from DINOv2)."""
    state = read_release(file)
    if set(state) == {"weight", "bias"}:
        mapped, unmatched = checkpoint_filter_fn(state, model), []
    else:
        mapped, unmatched = release_to_visattn(state, model, phase)
    if unmatched:
        raise ValueError(f"release entries with no place in {type(model).__name__}: {unmatched[:8]}"
                         f"{' ...' if len(unmatched) > 8 else ''} ({len(unmatched)} in all)")
    ours = model.state_dict()
    shapes = [f"{k}: release {tuple(v.shape)} vs model {tuple(ours[k].shape)}" for k, v in mapped.items()
              if k in ours and v.shape != ours[k].shape]
    if shapes:
        raise ValueError(f"release tensors of the wrong shape (is the model's width/MLP/head the release's?): "
                         f"{shapes[:6]}")
    target = f"recurrent_blocks.{0 if phase is None else phase}." if _is_single_block(state) else "recurrent_blocks."
    wanted = [k for k in ours if k.startswith(target)] if any(k.startswith("recurrent_blocks.") for k in mapped) else []
    missing_blocks = [k for k in wanted if k not in mapped]
    if missing_blocks:
        raise ValueError(f"the release file leaves recurrent-block entries unset: {missing_blocks[:8]} "
                         f"({len(missing_blocks)} in all; a gate-less or LayerScale-less release block needs "
                         "time_gates=False / the matching model)")
    result = model.load_state_dict(mapped, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"release entries the model lacks: {result.unexpected_keys[:8]}")
    left = [k for k in result.missing_keys if not k.startswith("recurrent_blocks.")]
    _logger.info("Raptor release loaded: %d tensors; left as they were: %s", len(mapped), left)
    return left


def _copy_teacher(model: Raptor, teacher: nn.Module) -> None:
    """The patch embedding, prefix tokens, position embedding and final norms of ``teacher`` (a timm ViT of the
    model's shape) copied into ``model``; ``ValueError`` naming what does not match."""
    ours, theirs = model.state_dict(), teacher.state_dict()
    wanted = [k for k in ours if not k.startswith(("recurrent_blocks.", "head."))]
    bad = [k for k in wanted if k not in theirs or theirs[k].shape != ours[k].shape]
    if bad:
        raise ValueError(f"teacher ({type(teacher).__name__}) lacks or misshapes the entries {bad[:8]} of the Raptor")
    model.load_state_dict({k: theirs[k] for k in wanted}, strict=False)


def load_pretrained(model: Raptor, teacher: nn.Module | None = None,
                    linear_head: str | os.PathLike[str] | Mapping[str, Tensor] | None = None,
                    teacher_name: str = "vit_base_patch14_reg4_dinov2") -> Raptor:
    """``pretrained=True`` of the registered DINOv2 sizes: the recurrent blocks from the release file named by
    ``model.pretrained_cfg["file"]`` (``pretrained_cfg_overlay=dict(file=path)``: the archive at
    :data:`RELEASE_URL` is a Google Drive download timm cannot fetch), the embedding and final norm from ``teacher``
    (default: timm's pretrained ``teacher_name``, downloaded from the Hugging Face hub), and, when
    the model has classes, the head from ``linear_head`` (a path or state dict of a ``Linear(2 D, classes)``;
    default for 1000 classes: Meta's DINOv2 linear head, :data:`DINOV2_LINEAR_HEAD_URL`)."""
    file = model.pretrained_cfg.get("file")
    if not file or not os.path.isfile(file):
        raise FileNotFoundError(f"no Raptor release file at {file!r}: download the archive at {RELEASE_URL}, unpack "
                                "it and pass its model as pretrained_cfg_overlay=dict(file='/path/to/final_raptor..."
                                ".pt')")
    load_release(model, file)
    if teacher is None:
        import timm

        teacher = timm.create_model(teacher_name, pretrained=True, num_classes=0,
                                    img_size=model.patch_embed.img_size)
    _copy_teacher(model, teacher)
    if model.num_classes:
        if linear_head is None:
            if model.num_classes != 1000:
                raise ValueError(f"num_classes={model.num_classes}: give linear_head= (DINOv2's head has 1000)")
            linear_head = torch.hub.load_state_dict_from_url(DINOV2_LINEAR_HEAD_URL, map_location="cpu",
                                                             weights_only=True)
        head = read_release(linear_head)
        load_release(model, head if set(head) == {"weight", "bias"} else {
            k: v for k, v in head.items() if k.startswith("classifier.")})
    return model
