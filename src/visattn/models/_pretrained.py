"""Pretrained configurations of visattn's models: those taken from their timm counterparts (the same weights, timm's
Hugging Face hub ids, input sizes and normalisation, so ``pretrained=True`` loads what timm users already have) and
those of the paper models timm lacks (:func:`paper_cfg`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg

__all__ = ["counterpart_cfgs", "paper_cfg", "timm_pretrained_cfg"]


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


def paper_cfg(arxiv: str, *, input_size: int = 224, num_classes: int = 1000, crop_pct: float = 0.875,
              interpolation: str = "bicubic", mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
              std: tuple[float, ...] = IMAGENET_DEFAULT_STD, url: str = "", **fields: Any) -> dict[str, Any]:
    """Pretrained configuration of a model from the paper ``arXiv:{arxiv}`` that timm does not have, for
    ``timm.models.generate_default_cfgs``: no weights unless ``url`` names them, a square ``input_size`` side, the
    ImageNet-1k evaluation settings unless given, and ``fields`` (``first_conv``, ``classifier``, ``pool_size``,
    ``origin_url``, ``notes`` ...) as timm's ``PretrainedCfg`` names them."""
    return dict(url=url, num_classes=num_classes, input_size=(3, input_size, input_size), crop_pct=crop_pct,
                interpolation=interpolation, mean=mean, std=std, paper_ids=f"arXiv:{arxiv}", **fields)
