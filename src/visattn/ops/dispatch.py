"""The one place that decides which engine computes masked attention, and says why.

Every public entry that computes softmax attention under a :class:`~visattn.masks.Mask` (``masked_attention``,
``tiled_attention``, ``local_attention``, the ``nn`` modules and mixers) comes here. :func:`choose` looks at the
mask, the grid, the prefix tokens, the dtype and device of the tensors, whether autograd records the call and
whether attention dropout is on, and returns the first engine of ``AUTO_ORDER`` that can run the call, or the
engine the caller forced. :func:`explain` answers the same question without tensors, with the reason every other
engine was passed over.

Engines (``ENGINES``; how each computes is in :mod:`visattn.ops.engines`):

- ``sdpa``, ``sdpa_causal``: plain or causal ``scaled_dot_product_attention`` (full and causal masks);
- ``fused_tiles``: the C++ tile kernel (CPU, float32/float64), forward and backward, for masks whose per-axis key
  sets are arithmetic progressions (neighborhood, window, grid, halo, axial, strip, sliding window);
- ``per_query``: the C++ per-query kernel for the same masks (forced only; ``fused_tiles`` hands training to it
  where tiles share keys and deterministic algorithms are on, or its gradient copies would not fit);
- ``sdpa_lines``: axial masks as one SDPA call over all lines (any device);
- ``sdpa_tiles``: separable and sliding-window masks as batched SDPA over tiles (any device), where the tiles
  compute fewer scores than dense attention;
- ``block_sparse``: radial masks over their present blocks (kernel forward on the CPU, SDPA otherwise), where the
  blocks cover at most ``MAX_BLOCK_DENSITY`` of the scores;
- ``dense``: SDPA with the materialised bool mask, up to ``DENSE_MAX_TOKENS`` tokens (beyond, where FlexAttention
  cannot run: dropout, training on the CPU);
- ``flex``: FlexAttention with a block mask, beyond (no dropout, no CPU backward);
- ``reference``: the naive dense oracle (forced only).

On CUDA and MPS tensors the kernels refuse, so structured masks run on SDPA lines, SDPA tiles or FlexAttention.
Under ``torch.compile`` the decision is made once while tracing (it depends on nothing the graph computes) and the
kernels are custom operators (:mod:`visattn.ops.engines.kernel_ops`), so they stay in the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import Shape, num_tokens
from ..masks import AxialMask, CausalMask, FullMask, Mask, RadialMask, SeparableMask, SequenceMask, SlidingWindowMask
from .engines import block_sparse, sdpa_tiles
from .engines.availability import kernel_refusal, mark_constant
from .engines.layout import local_layout
from .engines.run import run_engine
from .native import needs_grad

__all__ = ["AUTO_ORDER", "DENSE_MAX_TOKENS", "ENGINES", "MAX_BLOCK_DENSITY", "Decision", "choose", "decide",
           "clear_decisions", "explain", "kernel_refusal", "run_engine", "structured"]

DENSE_MAX_TOKENS = 16384
MAX_BLOCK_DENSITY = 0.9


@dataclass(frozen=True)
class Facts:
    """What the decision depends on: no tensor data, so it can be made (and cached) once per kind of call."""

    mask: Mask
    shape: Shape
    num_prefix_tokens: int
    dtype: torch.dtype
    device_type: str
    needs_grad: bool
    dropout: bool

    @property
    def tokens(self) -> int:
        return self.num_prefix_tokens + num_tokens(self.shape)


Refusal = Callable[[Facts], "str | None"]


@dataclass(frozen=True)
class Engine:
    """An engine's name, what it is, when it cannot run (``refusal`` returns the reason, or None), and when ``auto``
    passes it over although it could run (``auto_refusal``: it would not pay)."""

    name: str
    summary: str
    refusal: Refusal
    auto_refusal: Refusal | None = None

    def auto_reason(self, facts: Facts) -> str | None:
        """Why ``auto`` does not pick this engine for ``facts`` (None: it does, unless an earlier one takes it)."""
        refusal = self.refusal(facts)
        if refusal is None and self.auto_refusal is not None:
            refusal = self.auto_refusal(facts)
        return refusal


@dataclass(frozen=True)
class Decision:
    """The engine :func:`choose` picked, and why each engine before it in the order was passed over."""

    engine: str
    reason: str
    passed_over: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        lines = [f"engine: {self.engine} ({self.reason})"]
        lines += [f"  not {name}: {why}" for name, why in self.passed_over]
        return "\n".join(lines)


def _kernel_refusal(facts: Facts) -> str | None:
    if facts.dropout:
        return "attention dropout (dropout_p > 0): the kernels have none"
    if local_layout(facts.mask, facts.shape) is None:
        return "the mask's key sets are not arithmetic progressions along every axis"
    libraries = ("tile_attention", "tile_attention_backward") if facts.needs_grad else ("tile_attention",)
    return kernel_refusal(facts.dtype, facts.device_type, libraries)


def _progression_mask(facts: Facts) -> str | None:
    if not isinstance(facts.mask, (SeparableMask, SlidingWindowMask)):
        return f"{type(facts.mask).__name__} is not separable per axis"
    return None


def _fused_tiles(facts: Facts) -> str | None:
    return _progression_mask(facts) or _kernel_refusal(facts)


def _per_query(facts: Facts) -> str | None:
    refusal = (_progression_mask(facts) or _kernel_refusal(facts)
               or kernel_refusal(facts.dtype, facts.device_type, ("local_attention",)))
    if refusal is None and facts.needs_grad and local_layout(facts.mask, facts.shape).transposed is None:
        return "training needs the queries that see each key to be progressions, and they are not"
    return refusal


def _sdpa(facts: Facts) -> str | None:
    return None if isinstance(facts.mask, FullMask) else "the mask is not the full mask"


def _sdpa_causal(facts: Facts) -> str | None:
    if not isinstance(facts.mask, CausalMask):
        return "the mask is not the causal mask"
    return "prefix tokens see every token, SDPA's causal mask does not" if facts.num_prefix_tokens else None


def _sdpa_lines(facts: Facts) -> str | None:
    return None if isinstance(facts.mask, AxialMask) else "the mask is not axial"


def _sdpa_tiles(facts: Facts) -> str | None:
    if isinstance(facts.mask, SequenceMask) and not isinstance(facts.mask, SlidingWindowMask):
        return "full and causal sequence masks gain nothing from tiles"
    if not isinstance(facts.mask, (SeparableMask, SlidingWindowMask)):
        return f"{type(facts.mask).__name__} is not separable per axis"
    return None


def _sdpa_tiles_pays(facts: Facts) -> str | None:
    plan = sdpa_tiles.tile_plan(facts.mask, facts.shape, facts.num_prefix_tokens)
    if plan.score_elements > facts.tokens**2:
        return f"its tiles would compute {plan.score_elements} scores, more than dense attention's {facts.tokens**2}"
    return None


def _block_sparse(facts: Facts) -> str | None:
    return "attention dropout (dropout_p > 0): the block-sparse engine has none" if facts.dropout else None


def _block_sparse_pays(facts: Facts) -> str | None:
    if not isinstance(facts.mask, RadialMask):
        return "only radial masks are block-sparse enough to pay"
    plan = block_sparse.block_sparse_plan(facts.mask, facts.shape, facts.num_prefix_tokens,
                                          *block_sparse.default_blocks(facts.mask, facts.shape))
    if plan.block_density > MAX_BLOCK_DENSITY:
        return f"its blocks cover {plan.block_density:.0%} of the scores (dense attention is as fast)"
    return None


def _dense_fits(facts: Facts) -> str | None:
    if facts.tokens > DENSE_MAX_TOKENS and _flex(facts) is None:
        gib = facts.tokens**2 / 2**30
        return f"{facts.tokens} tokens: the N x N bool mask would take {gib:.1f} GiB (limit {DENSE_MAX_TOKENS} tokens)"
    return None


def _flex(facts: Facts) -> str | None:
    if facts.dropout:
        return "attention dropout (dropout_p > 0): FlexAttention has none"
    if facts.needs_grad and facts.device_type == "cpu":
        return "training on the CPU: FlexAttention has no CPU backward"
    return None


def _any(facts: Facts) -> str | None:
    return None


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("sdpa", "scaled_dot_product_attention without a mask", _sdpa),
    Engine("sdpa_causal", "scaled_dot_product_attention with is_causal=True", _sdpa_causal),
    Engine("fused_tiles", "C++ tile kernel, forward and backward", _fused_tiles),
    Engine("per_query", "C++ per-query kernel, forward and backward", _per_query),
    Engine("sdpa_lines", "scaled_dot_product_attention over the lines of an axis", _sdpa_lines),
    Engine("sdpa_tiles", "scaled_dot_product_attention over query tiles and their key windows", _sdpa_tiles,
           _sdpa_tiles_pays),
    Engine("block_sparse", "attention over the present (query block, key block) pairs", _block_sparse,
           _block_sparse_pays),
    Engine("dense", "scaled_dot_product_attention with the materialised bool mask", _any, _dense_fits),
    Engine("flex", "FlexAttention with a block mask", _flex),
    Engine("reference", "naive dense attention (the oracle)", _any),
)}
AUTO_ORDER = ("sdpa", "sdpa_causal", "fused_tiles", "sdpa_lines", "sdpa_tiles", "block_sparse", "dense", "flex")
GENERIC = ("dense", "flex", "reference")


def decide(facts: Facts, backend: str = "auto") -> Decision:
    """The engine for ``facts``: ``backend`` itself when it names an engine (ValueError if it cannot run), else the
    first engine of ``AUTO_ORDER`` that can (``"fast"``: the same, excluding the generic dense engines)."""
    if backend in ENGINES:
        refusal = ENGINES[backend].refusal(facts)
        if refusal is not None:
            raise ValueError(f"backend={backend!r} cannot run this call: {refusal}")
        return Decision(backend, "forced by backend", ())
    if backend not in ("auto", "fast"):
        raise ValueError(f"backend must be 'auto', 'fast' or one of {tuple(ENGINES)}, got {backend!r}")
    passed: list[tuple[str, str]] = []
    for name in AUTO_ORDER:
        if backend == "fast" and name in GENERIC:
            break
        refusal = ENGINES[name].auto_reason(facts)
        if refusal is None:
            return Decision(name, ENGINES[name].summary, tuple(passed))
        passed.append((name, refusal))
    reasons = "; ".join(f"{name}: {why}" for name, why in passed)
    raise ValueError(f"no fast path (structured engine) accepts mask={facts.mask!r} on shape={facts.shape} "
                     f"({reasons}); use backend='auto'")


def structured(mask: Mask) -> bool:
    """Whether ``mask`` has a structured engine (memory O(attended pairs), not O(N^2)) where it accepts the call."""
    return isinstance(mask, (SeparableMask, SlidingWindowMask, RadialMask))


_DECISIONS: dict[tuple, str] = {}
MAX_DECISIONS = 1024


@mark_constant
def _chosen(mask_key: str, shape: Shape, num_prefix_tokens: int, dtype: torch.dtype, device_type: str,
            needs_grad: bool, dropout: bool, backend: str) -> str:
    """:func:`decide`'s engine, remembered per kind of call (a plain dict, which dynamo does not trace into: the
    function is evaluated once while tracing and its result kept as a constant)."""
    key = (mask_key, shape, num_prefix_tokens, dtype, device_type, needs_grad, dropout, backend)
    engine = _DECISIONS.get(key)
    if engine is None:
        facts = Facts(Mask.from_key(mask_key), shape, num_prefix_tokens, dtype, device_type, needs_grad, dropout)
        engine = decide(facts, backend).engine
        if len(_DECISIONS) >= MAX_DECISIONS:
            _DECISIONS.clear()
        _DECISIONS[key] = engine
    return engine


def clear_decisions() -> None:
    """Forget the remembered decisions (after the kernels' availability changed)."""
    _DECISIONS.clear()


@mark_constant
def _chosen_without_grid(mask_key: str, dtype: torch.dtype, device_type: str, needs_grad: bool, dropout: bool,
                         backend: str) -> str | None:
    """The engine while ``torch.compile`` traces, where the grid may be symbolic (dynamic shapes): engines that plan
    at run time (the kernels, whose operators plan inside) or need no plan (SDPA, SDPA lines); None where the choice
    needs the grid (which must then be static)."""
    mask = Mask.from_key(mask_key)
    if backend in ("fused_tiles", "per_query", "sdpa", "sdpa_causal", "sdpa_lines"):
        return backend
    if isinstance(mask, FullMask):
        return "sdpa"
    libraries = ("tile_attention", "tile_attention_backward") if needs_grad else ("tile_attention",)
    if (_closed_form(mask) and not dropout and kernel_refusal(dtype, device_type, libraries) is None):
        return "fused_tiles"
    return "sdpa_lines" if isinstance(mask, AxialMask) else None


def _closed_form(mask: Mask) -> bool:
    """Whether ``mask`` is one of visattn's own separable or sliding-window masks, whose rules all give their key
    sets in closed form on every grid (``tests/ops/engines/test_per_query.py``); a user's subclass may not, so its
    engine is chosen on the concrete grid."""
    return isinstance(mask, (SeparableMask, SlidingWindowMask)) and type(mask).__module__.startswith("visattn.masks.")


def choose(q: Tensor, k: Tensor, v: Tensor, mask: Mask, shape: Shape, num_prefix_tokens: int, dropout_p: float,
           backend: str = "auto") -> str:
    """The engine that computes this call (see :func:`decide`), cached per kind of call."""
    grad = needs_grad(q, k, v)
    if torch.compiler.is_compiling():
        engine = _chosen_without_grid(mask.key, q.dtype, q.device.type, grad, bool(dropout_p), backend)
        if engine is not None:
            return engine
    return _chosen(mask.key, tuple(shape), num_prefix_tokens, q.dtype, q.device.type, grad, bool(dropout_p), backend)


def explain(mask: Mask, shape: int | tuple[int, ...], num_prefix_tokens: int = 0, *,
            dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", requires_grad: bool = False,
            dropout_p: float = 0.0, backend: str = "auto") -> Decision:
    """Which engine ``masked_attention`` would run for ``mask`` on ``shape`` with tensors of ``dtype`` on
    ``device``, and why every engine before it was passed over. ``print(explain(...))`` gives one line each.

    >>> from visattn import masks, ops
    >>> ops.explain(masks.neighborhood_mask(7), (64, 64)).engine  # doctest: +SKIP
    'fused_tiles'
    """
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be a visattn.masks.Mask, got {type(mask).__name__}")
    from .._checks import as_shape

    shape, prefix = mask.bind(as_shape(shape), num_prefix_tokens)
    facts = Facts(mask, shape, prefix, dtype, torch.device(device).type, requires_grad, bool(dropout_p))
    return decide(facts, backend)
