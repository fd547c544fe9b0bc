"""The mixer registry: one entry per mechanism, so ``list_mixers``, the CLI and the docs tables share one source.

Each entry carries the paper it comes from (a key into :data:`visattn.papers.PAPERS`), its cost in the number
of tokens N, its family, and which of the four faces exist: ``definition`` (a mask or formula), ``fast`` (a
fast path beyond the generic backends), ``module`` (an ``nn.Module`` users put in a network) and ``timm``
(tested for equal outputs against timm's implementation on identical weights). Each mixer entry also names its
naive oracle (``MixerSpec.oracle``), the dense float64 formula the contract test (tests/test_mixer_contract.py)
holds every mixer's forward to.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .papers import PAPERS, Paper

FACES = ("definition", "fast", "module", "timm")


@dataclass(frozen=True)
class RegistryEntry:
    """What every registry entry says: its name and factory, the paper behind it, its cost, family and faces."""

    name: str
    factory: Callable[..., Any]
    paper_key: str
    complexity: str
    family: str
    faces: tuple[str, ...]
    summary: str

    @property
    def paper(self) -> Paper:
        return PAPERS[self.paper_key]


def dense_weights_oracle(mixer: Any, q: Any, k: Any, v: Any, shape: Any, **inputs: Any) -> Any:
    """The default oracle: the mixer's dense ``(B, heads, N, N)`` weights from its formula, times ``v``:
    ``mixer.attention_weights(q, k, shape, **inputs) @ v``."""
    return mixer.attention_weights(q, k, shape, **inputs) @ v


@dataclass(frozen=True)
class MixerSpec(RegistryEntry):
    """A registry entry. ``factory(**kwargs)`` builds the token mixer; ``oracle(mixer, q, k, v, shape, **inputs)``
    computes what its forward must return, naively (default :func:`dense_weights_oracle`; ``inputs`` holds
    ``x=`` for mixers with ``uses_input``)."""

    oracle: Callable[..., Any] = dense_weights_oracle

    @property
    def causal_default(self) -> bool:
        """True when the factory's ``is_causal`` defaults to True (a causal mask unless told otherwise)."""
        parameter = inspect.signature(self.factory).parameters.get("is_causal")
        return parameter is not None and parameter.default is True


_REGISTRY: dict[str, MixerSpec] = {}


def register_mixer(
    name: str,
    *,
    paper: str,
    complexity: str,
    family: str,
    faces: tuple[str, ...] = ("definition",),
    summary: str = "",
    oracle: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``factory`` as the mixer ``name``.

    Args:
        name: registry name, lowercase.
        paper: key into :data:`visattn.papers.PAPERS`.
        complexity: cost in tokens N, e.g. ``"O(N^2)"`` or ``"O(N k^d)"``.
        family: docs family, e.g. ``"structured"``.
        faces: subset of ``("definition", "fast", "module", "timm")``.
        summary: one line for tables; defaults to the factory's first docstring line.
        oracle: ``oracle(mixer, q, k, v, shape, **inputs) -> out``, the naive float64 reference of the mixer's
            forward; default :func:`dense_weights_oracle` (``attention_weights(q, k, shape) @ v``).
    """
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"name must be a non-empty lowercase string, got {name!r}")
    if paper not in PAPERS:
        raise ValueError(f"paper must be a key of visattn.papers.PAPERS, got {paper!r}")
    if oracle is not None and not callable(oracle):
        raise TypeError(f"oracle must be callable or None, got {type(oracle).__name__}")
    unknown = [f for f in faces if f not in FACES]
    if unknown:
        raise ValueError(f"faces must be drawn from {FACES}, got {faces!r}")

    def register(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"a mixer named {name!r} is already registered")
        doc = (factory.__doc__ or "").strip()
        line = summary or (doc.splitlines()[0] if doc else "")
        _REGISTRY[name] = MixerSpec(name, factory, paper, complexity, family, tuple(faces), line,
                                    oracle or dense_weights_oracle)
        return factory

    return register


def list_mixers(family: str | None = None) -> list[str]:
    """Registered mixer names, sorted; only those of ``family`` when given."""
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def get_mixer_spec(name: str) -> MixerSpec:
    """The registry entry for ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown mixer {name!r}; known mixers: {', '.join(list_mixers())}")
    return _REGISTRY[name]


def create_mixer(name: str, **kwargs: Any) -> Any:
    """Build the registered mixer ``name`` with ``kwargs``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    return get_mixer_spec(name).factory(**kwargs)


LAYER_ARGS = ("dim", "num_heads", "head_dim")


def create_mixer_for_layer(name: str, *, dim: int, num_heads: int, head_dim: int, **kwargs: Any) -> Any:
    """Build mixer ``name`` for a layer of ``dim`` channels in ``num_heads`` heads of ``head_dim``.

    Mixers with parameters (feature maps, gates, temperatures) take some of ``dim``, ``num_heads``,
    ``head_dim`` as constructor arguments; those their factory accepts are filled in unless given in ``kwargs``.
    """
    factory = get_mixer_spec(name).factory
    accepted = inspect.signature(factory).parameters
    layer = {"dim": dim, "num_heads": num_heads, "head_dim": head_dim}
    for arg, value in layer.items():
        if arg in accepted and arg not in kwargs:
            kwargs[arg] = value
    return create_mixer(name, **kwargs)


MODULE_FACES = ("definition", "official", "attn_layer")


@dataclass(frozen=True)
class ModuleSpec(RegistryEntry):
    """A feature-map module entry (``(B, C, H, W)`` in and out, not a token mixer). ``factory(channels, **kwargs)``
    builds it; faces: ``definition`` (the paper's equations), ``official`` (the released code's form as a
    variant), ``attn_layer`` (drops into timm blocks as ``attn_layer``)."""


_MODULES: dict[str, ModuleSpec] = {}


def register_module(name: str, factory: Callable[..., Any], *, paper: str, complexity: str,
                    faces: tuple[str, ...] = ("definition",), summary: str = "", family: str = "modules") -> None:
    """Register the feature-map module ``name`` (family ``"modules"``), kept apart from the token mixers so that
    :func:`list_mixers` consumers only ever see token mixers."""
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"name must be a non-empty lowercase string, got {name!r}")
    if paper not in PAPERS:
        raise ValueError(f"paper must be a key of visattn.papers.PAPERS, got {paper!r}")
    if any(f not in MODULE_FACES for f in faces):
        raise ValueError(f"faces must be drawn from {MODULE_FACES}, got {faces!r}")
    if name in _MODULES or name in _REGISTRY:
        raise ValueError(f"a mixer or module named {name!r} is already registered")
    _MODULES[name] = ModuleSpec(name, factory, paper, complexity, family, tuple(faces), summary)


def list_modules(family: str | None = None) -> list[str]:
    """Registered feature-map module names, sorted; only those of ``family`` when given."""
    return sorted(n for n, s in _MODULES.items() if family is None or s.family == family)


def get_module_spec(name: str) -> ModuleSpec:
    """The module entry for ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in _MODULES:
        raise ValueError(f"unknown module {name!r}; known modules: {', '.join(list_modules())}")
    return _MODULES[name]
