"""visattn: every attention mechanism from recent vision papers, one API, tested against a naive reference.

- :mod:`visattn.masks`: which query sees which key (neighborhood, window, grid, halo, axial, radial, ...);
- :mod:`visattn.ops`: functional token mixers and the naive reference;
- :mod:`visattn.nn`: ``Attention`` with pluggable mixers, drop-in for timm, and modules per mechanism;
- :mod:`visattn.transforms`: geometric transforms (polar resampling and its inverse);
- :mod:`visattn.lens`: capture, measure and edit attention inside timm, Hugging Face and visattn models;
- :func:`list_mixers` / :func:`create_mixer`: the registry;
- :func:`clear_caches`: drop the cached masks and plans (bounded by ``$VISATTN_CACHE_BYTES``, default 512 MiB).

:mod:`visattn.lens` and :mod:`visattn.cli` are imported on first access (``visattn.lens``), not with the package,
so that ``import visattn`` stays fast.
"""

import importlib

from . import masks, nn, ops, transforms
from ._cache import clear_caches
from .nn import Attention, create_attn, get_attn, replace_attention
from .papers import PAPERS
from .registry import MixerSpec, create_mixer, create_mixer_for_layer, get_mixer_spec, list_mixers, register_mixer

__version__ = "0.1.0"

__all__ = [
    "PAPERS",
    "Attention",
    "clear_caches",
    "convert",
    "MixerSpec",
    "create_attn",
    "create_mixer",
    "create_mixer_for_layer",
    "get_attn",
    "get_mixer_spec",
    "lens",
    "list_mixers",
    "masks",
    "nn",
    "ops",
    "register_mixer",
    "replace_attention",
    "transforms",
]

_LAZY_MODULES = ("cli", "docgen", "lens")
_LAZY_FUNCTIONS = {"convert": ".train.convert"}


def __getattr__(name: str) -> object:
    """Import the heavier submodules (the lens, the command line) and the training entry points (``convert``)
    when first used."""
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(_LAZY_FUNCTIONS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_MODULES, *_LAZY_FUNCTIONS})
