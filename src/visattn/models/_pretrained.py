"""Pretrained configurations of visattn's models taken from their timm counterparts: the same weights (timm's
Hugging Face hub ids), input sizes and normalisation, so ``pretrained=True`` loads what timm users already have."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from timm.models import get_pretrained_cfg

__all__ = ["counterpart_cfgs", "timm_pretrained_cfg"]


def timm_pretrained_cfg(timm_name: str, **updates: Any) -> dict[str, Any]:
    """timm's default pretrained configuration of ``timm_name`` as a dict, without its ``architecture`` and
    ``tag``, with ``custom_load=False`` and ``updates`` applied."""
    cfg = asdict(get_pretrained_cfg(timm_name))
    for key in ("architecture", "tag"):
        cfg.pop(key)
    cfg.update(custom_load=False, **updates)
    return cfg


def counterpart_cfgs(counterparts: Mapping[str, str], **updates: Any) -> dict[str, dict[str, Any]]:
    """``{"name.tag": cfg}`` for each visattn ``name`` -> timm ``timm_name`` of ``counterparts``, the tag being timm's
    default one (none when timm's configuration has none), for ``timm.models.generate_default_cfgs``."""
    out = {}
    for name, timm_name in counterparts.items():
        tag = get_pretrained_cfg(timm_name).tag
        out[f"{name}.{tag}" if tag else name] = timm_pretrained_cfg(timm_name, **updates)
    return out
