"""The ``Mask`` contract: which query may see which key, over tokens laid out on a grid.

A mask is a specification, independent of the grid. Bound to a grid ``shape`` (row-major spatial layout)
and a number of prefix tokens it yields:

- ``mask_mod(shape, num_prefix_tokens)``: a FlexAttention ``mask_mod(b, h, q_idx, kv_idx)``, vectorised over
  broadcastable index tensors;
- ``rows(shape, start, stop, num_prefix_tokens)``: the bool rows ``[stop - start, N]`` of the dense mask, the
  primitive that ``materialize``, ``pair_count`` and ``to_block_mask`` are built on, so none of them needs
  more than a few rows of N at a time.

Prefix tokens (class, register, text) come first; they see every token and every token sees them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import Shape, as_shape, num_tokens

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
SpatialMod = Callable[[Tensor, Tensor], Tensor]

ROW_BUDGET = 1 << 24


def unravel(index: Tensor, shape: Shape) -> list[Tensor]:
    """Row-major coordinates of linear token indices on ``shape`` (one tensor per axis)."""
    coords = []
    stride = num_tokens(shape)
    for size in shape:
        stride //= size
        coords.append((index // stride) % size)
    return coords


_BY_KEY: dict[str, Mask] = {}


class Mask:
    """Base class of every mask. Subclasses implement ``_spatial_mod`` and may override the fast hooks
    ``_spatial_rows`` and ``_spatial_pair_count``; ``check`` raises ``ValueError`` on a grid the mask cannot use.

    Every mask has a :attr:`key`, a string that names it (equal masks, equal keys) for code that cannot hold
    objects, such as the arguments of a ``torch.library`` custom operator; :meth:`from_key` finds the mask again.
    Dataclass masks get it when constructed (so reading it under ``torch.compile`` is an attribute read).
    """

    max_dims: int | None = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None:
            def post_init(self: Mask) -> None:
                own(self)
                self._remember()

            cls.__post_init__ = post_init

    def __post_init__(self) -> None:
        self._remember()

    def _remember(self) -> str:
        base = key = repr(self)
        suffix = 0
        while _BY_KEY.setdefault(key, self) != self:
            suffix += 1
            key = f"{base}#{suffix}"
        object.__setattr__(self, "_key", key)
        return key

    def __setstate__(self, state: dict) -> None:
        """Unpickled (another process, ``copy.deepcopy``): remember the mask here too, so :attr:`key` finds it."""
        self.__dict__.update(state)
        self._remember()

    @property
    def key(self) -> str:
        """The string that names this mask (its ``repr``, with ``#n`` after it where unequal masks share a repr),
        remembered so that :meth:`from_key` finds it."""
        return self.__dict__.get("_key") or self._remember()

    @staticmethod
    def from_key(key: str) -> Mask:
        """The mask whose :attr:`key` is ``key``."""
        try:
            return _BY_KEY[key]
        except KeyError:
            raise ValueError(f"no mask has the key {key!r}; keys come from Mask.key") from None

    def check(self, shape: Shape) -> None:
        """Raise ``ValueError`` naming the offending argument if the mask does not fit ``shape``."""

    def _spatial_mod(self, shape: Shape) -> SpatialMod:
        raise NotImplementedError

    def bind(self, shape: int | tuple[int, ...], num_prefix_tokens: int = 0) -> tuple[Shape, int]:
        """Normalise and check ``shape`` and ``num_prefix_tokens``; return them."""
        shape = as_shape(shape, max_dims=self.max_dims)
        if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}")
        self.check(shape)
        return shape, num_prefix_tokens

    def mask_mod(self, shape: int | tuple[int, ...], num_prefix_tokens: int = 0) -> MaskMod:
        """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` over ``num_prefix_tokens + prod(shape)``
        tokens."""
        shape, prefix = self.bind(shape, num_prefix_tokens)
        spatial = self._spatial_mod(shape)
        if prefix == 0:
            return lambda b, h, q_idx, kv_idx: spatial(q_idx, kv_idx)

        def mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            inner = spatial(torch.clamp(q_idx - prefix, min=0), torch.clamp(kv_idx - prefix, min=0))
            return (q_idx < prefix) | (kv_idx < prefix) | inner

        return mod

    def _spatial_rows(self, shape: Shape, start: int, stop: int, device: torch.device | None) -> Tensor:
        spatial = self._spatial_mod(shape)
        q = torch.arange(start, stop, device=device)
        k = torch.arange(num_tokens(shape), device=device)
        return spatial(q[:, None], k[None, :])

    def rows(
        self,
        shape: int | tuple[int, ...],
        start: int,
        stop: int,
        num_prefix_tokens: int = 0,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Rows ``start:stop`` of the dense bool mask over ``num_prefix_tokens + prod(shape)`` tokens."""
        shape, prefix = self.bind(shape, num_prefix_tokens)
        n = prefix + num_tokens(shape)
        if not 0 <= start <= stop <= n:
            raise ValueError(f"rows must satisfy 0 <= start <= stop <= N={n}, got start={start}, stop={stop}")
        device = torch.device(device) if device is not None else None
        out = torch.ones(stop - start, n, dtype=torch.bool, device=device)
        first = max(start, prefix)
        if first < stop:
            out[first - start :, prefix:] = self._spatial_rows(shape, first - prefix, stop - prefix, device)
        return out

    def _spatial_pair_count(self, shape: Shape) -> int:
        s = num_tokens(shape)
        step = max(1, ROW_BUDGET // s)
        return sum(int(self._spatial_rows(shape, i, min(i + step, s), None).sum()) for i in range(0, s, step))

    def pair_count(self, shape: int | tuple[int, ...], num_prefix_tokens: int = 0) -> int:
        """Number of (query, key) pairs the mask allows, without materialising N x N."""
        shape, prefix = self.bind(shape, num_prefix_tokens)
        s = num_tokens(shape)
        return prefix * (prefix + s) + s * prefix + self._spatial_pair_count(shape)

    def __and__(self, other: Mask) -> Mask:
        from .combine import AndMask

        return AndMask((self, other))

    def __or__(self, other: Mask) -> Mask:
        from .combine import OrMask

        return OrMask((self, other))
