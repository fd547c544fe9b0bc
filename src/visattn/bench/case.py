"""What to benchmark: a registry mixer name with keyword arguments, parsed from ``name`` or ``name:key=value,...``."""

from __future__ import annotations

import ast
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..registry import LAYER_ARGS, create_mixer, get_mixer_spec


@dataclass(frozen=True)
class BenchPreset:
    """How the benchmark sets up a registered mixer whose registry defaults do not fit the benchmark's grids.

    ``kwargs`` are added to the registry defaults; ``grid_kwargs(shape)`` adds arguments that depend on the grid
    (the mixer is then built once per size); ``layout`` fixes the layout (otherwise inferred from the mixer).
    Arguments given by the user take precedence over both.
    """

    kwargs: dict[str, Any] = field(default_factory=dict)
    grid_kwargs: Callable[[tuple[int, ...]], dict[str, Any]] | None = None
    layout: str | None = None


def _polar_grid(shape: tuple[int, ...]) -> dict[str, Any]:
    return {"num_rings": shape[0], "num_angles": shape[-1]}


def _token_count(shape: tuple[int, ...]) -> dict[str, Any]:
    return {"num_tokens": math.prod(shape)}


BENCH_PRESETS: dict[str, BenchPreset] = {
    "window": BenchPreset({"window_size": 8}),
    "sparsifiner": BenchPreset(grid_kwargs=_token_count),
    "grid": BenchPreset({"grid_size": 8}),
    "radial_strip": BenchPreset(grid_kwargs=_polar_grid, layout="2d"),
}
"""Presets by registry name. MaxViT's partitions need the partition size to divide every axis, and the registry
default 7 divides none of the benchmark's default sides (multiples of 8); radial strips run on a polar grid of
``(num_rings, num_angles)`` tokens, which the benchmark takes to be the grid itself; Sparsifiner's learned key
projection is sized by the token count."""

@dataclass(frozen=True)
class BenchCase:
    """One mixer to benchmark: its registry ``name`` and the ``kwargs`` given for it."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``name`` or ``name(key=value, ...)``: names the case in tables, plots and the JSON exponents."""
        if not self.kwargs:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"


def parse_case(text: str) -> BenchCase:
    """Parse ``"neighborhood"`` or ``"neighborhood:kernel_size=(3,7,7),dilation=2"`` into a :class:`BenchCase`.

    Values are Python literals; a bare word is taken as a string (``radial:rule=code``). The name is checked
    against the registry (``ValueError`` listing the known names).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"mixer must be a non-empty string like 'name' or 'name:key=value', got {text!r}")
    name, _, args = text.strip().partition(":")
    get_mixer_spec(name)
    if not args:
        return BenchCase(name)
    try:
        call = ast.parse(f"f({args})", mode="eval").body
    except SyntaxError as err:
        raise ValueError(f"mixer arguments must look like key=value,key=value, got {args!r} in {text!r}") from err
    if not isinstance(call, ast.Call) or call.args or any(kw.arg is None for kw in call.keywords):
        raise ValueError(f"mixer arguments must all be key=value, got {args!r} in {text!r}")
    return BenchCase(name, {kw.arg: _literal(kw.value, text) for kw in call.keywords})


def _literal(node: ast.expr, text: str) -> Any:
    if isinstance(node, ast.Name):
        return node.id
    try:
        return ast.literal_eval(node)
    except ValueError as err:
        message = f"mixer argument values must be Python literals, got {ast.unparse(node)!r} in {text!r}"
        raise ValueError(message) from err


def preset_for(name: str) -> BenchPreset:
    """The preset of registry mixer ``name`` (an empty one for most mixers)."""
    return BENCH_PRESETS.get(name, BenchPreset())


def mixer_kwargs(case: BenchCase, heads: int, head_dim: int, shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The keyword arguments the benchmark calls the factory with: the preset's (with its grid arguments for
    ``shape`` when given), then the case's, then the layer arguments ``dim = heads * head_dim``, ``num_heads``,
    ``head_dim`` where the factory takes them and they are missing (as
    :func:`visattn.registry.create_mixer_for_layer` fills them). Preset arguments the factory does not take are
    dropped."""
    params = inspect.signature(get_mixer_spec(case.name).factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    preset = preset_for(case.name)
    defaults = dict(preset.kwargs)
    if preset.grid_kwargs is not None and shape is not None:
        defaults.update(preset.grid_kwargs(shape))
    kwargs = {k: v for k, v in defaults.items() if takes_any or k in params}
    kwargs.update(case.kwargs)
    layer = {"dim": heads * head_dim, "num_heads": heads, "head_dim": head_dim}
    for key in LAYER_ARGS:
        if key in params and key not in kwargs:
            kwargs[key] = layer[key]
    return kwargs


def build_mixer(case: BenchCase, heads: int, head_dim: int,
                shape: tuple[int, ...] | None = None) -> tuple[Any, dict[str, Any]]:
    """Create the case's mixer (for ``shape`` where its preset depends on the grid); return it with the keyword
    arguments it was created with."""
    kwargs = mixer_kwargs(case, heads, head_dim, shape)
    return create_mixer(case.name, **kwargs), kwargs
