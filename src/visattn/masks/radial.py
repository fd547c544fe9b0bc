"""Radial Attention's spatio-temporal energy-decay mask.

Paper: Li et al., "Radial Attention: O(n log n) Sparse Attention with Energy Decay for Long Video
Generation" (arXiv 2506.19852). Tokens are ``f`` frames of ``s`` tokens (``shape = (f, *spatial)``, ``s =
prod(spatial)``, spatial index ``k`` in row-major order). For frames ``i, j`` and spatial indices ``k, l``, with
``b = 2^floor(log2(max(|i - j|, 1)))``, the paper keeps the pair iff

    (b <= s and |k - l| + 1 <= s / b)  or  (|i - j| mod ceil(b / s) == 0 and k == l),

so the spatial band halves each time the frame distance doubles. ``rule="paper"`` (default) is that equation.

``rule="code"`` is the block-sparse mask of the authors' code (mit-han-lab/radial-attention,
``radial_attn/attn_mask.py``), in the version chosen by ``release`` (the code changed twice after the first
release; ``model_type`` is the code's per-model switch). For each frame pair at distance ``d = |i - j|``
(``bitlen`` is Python's ``int.bit_length``):

- a token-level band ``|k - l| <= w(d)``: ``w = s`` for ``d <= 1``, except ``w = s // 2`` at ``d = 1`` for
  ``model_type="wan"`` in releases ``"2025-06"`` and ``"2025-07"``; beyond that
  ``w = max(2^bitlen(s) / 2^bitlen(d) * decay_factor, block_size)``;
- AND a decimation of far frames: with ``l_d = 2^bitlen(s) / 2^bitlen(d)``, when ``l_d < T``
  (``T = decimation_threshold``, hard-coded to 128 in the code) the frame pair is kept only if
  ``d mod int(T / l_d) == 0``;
- an attention sink on frame 0 (every frame sees all of key frame 0, band and decimation ignored):
  ``model_type="wan"`` in every release, and ``"hunyuan"`` too in ``"2025-06"``;
- the frame-pair mask is cut into ``block_size`` x ``block_size`` blocks of the global token grid, each frame
  pair covering the ``ceil(s / block_size)`` x ``ceil(s / block_size)`` blocks starting at the block that holds its
  first token (as in the code, tokens of the frame beyond those blocks are ignored for that pair);
  a block is kept iff more than 60% of its non-empty columns have more than 1/3 of the block's rows allowed;
  the block mask is the OR over frame pairs;
- keys and queries of kept blocks attend densely; the trailing partial block (when ``block_size`` does not
  divide ``f * s``) is dense, as the code makes every block from the video/text border on dense;
  text tokens (here: prefix tokens) are dense both ways.

Releases (``release=``, dated by the commit that changed the mask; ``"2025-11"`` by default):

- ``"2025-06"``: the first release (commit 3f66894, 2025-06-25): frame-0 sink for every model type, Wan's
  band at frame distance 1 is ``s // 2``;
- ``"2025-07"``: "remove attention sink for hunyuanvideo" (2f61c30, 2025-07-06): the sink only for Wan; Wan's
  ``s // 2`` at distance 1 kept (this was visattn's ``rule="code"`` before ``release`` existed);
- ``"2025-11"``: the current release (72788d4, 2025-11-11): Wan's band at distance 1 is the whole frame ``s``,
  like HunyuanVideo's; the Wan sink stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._cache import byte_cached
from .._checks import Shape, num_tokens
from .base import Mask, SpatialMod

RULES = ("paper", "code")
MODEL_TYPES = ("hunyuan", "wan")
RELEASES = ("2025-06", "2025-07", "2025-11")
"""Versions of the official code's mask (``rule="code"``), oldest first; the last is the default."""


def _floor_pow2(x: Tensor) -> Tensor:
    """Largest power of two <= x for integer x >= 1, exact for any int64 input."""
    b = torch.exp2(torch.floor(torch.log2(x.double()))).long()
    b = torch.where(b * 2 <= x, b * 2, b)
    return torch.where(b > x, b // 2, b)


def paper_band(s: int, dt: int) -> tuple[int, bool]:
    """For frame distance ``dt`` under the paper's rule: the band half-width ``w`` (pairs with ``|k - l| <= w``
    are kept; ``-1`` for no band) and whether the diagonal ``k == l`` is kept."""
    b = 1 << (max(dt, 1).bit_length() - 1)
    width = s // b - 1 if b <= s else -1
    period = -(-b // s)
    return width, dt % period == 0


def _code_window(d: int, s: int, block_size: int, decay_factor: float, model_type: str, release: str) -> int:
    """Integer band half-width of the code's ``get_window_width`` (pairs with ``|k - l| <= w`` kept)."""
    if model_type == "wan" and d == 1 and release in ("2025-06", "2025-07"):
        return s // 2
    if d <= 1:
        return s
    decay_length = 2 ** s.bit_length() / 2 ** d.bit_length() * decay_factor
    return math.floor(decay_length) if decay_length >= block_size else block_size


def _code_keeps_frame_pair(d: int, s: int, threshold: int) -> bool:
    """The release's ``get_diagonal_split_mask``: far frame pairs are decimated."""
    decay_length = 2 ** s.bit_length() / 2 ** d.bit_length()
    if decay_length >= threshold:
        return True
    return d % int(threshold / decay_length) == 0


def _code_sink(model_type: str, release: str) -> bool:
    """Whether key frame 0 is an attention sink: Wan always, HunyuanVideo only in the first release."""
    return model_type == "wan" or release == "2025-06"


@byte_cached
def code_block_mask(frames: int, s: int, block_size: int, decay_factor: float, model_type: str,
                    threshold: int, release: str = RELEASES[-1]) -> Tensor:
    """The code's block mask (version ``release``), bool ``[nb, nb]`` with ``nb = ceil(frames * s / block_size)``.

    Column counts come from interval arithmetic on the band instead of materialising each frame pair.
    """
    video = frames * s
    nb = -(-video // block_size)
    per_frame = -(-s // block_size)
    windows = torch.tensor([_code_window(d, s, block_size, decay_factor, model_type, release)
                            for d in range(frames)])
    kept = torch.tensor([_code_keeps_frame_pair(d, s, threshold) for d in range(frames)])
    a = torch.arange(per_frame)
    x = torch.arange(block_size)
    j = torch.arange(frames)
    r_j = (j * s) % block_size
    cols = (j * s // block_size)[:, None] + a[None, :]
    col_local = a[None, :, None] * block_size + x[None, None, :] - r_j[:, None, None]
    col_valid = (col_local >= 0) & (col_local < s)
    hits = torch.zeros((nb + per_frame) * (nb + per_frame), dtype=torch.int32)
    for i in range(frames):
        d = (i - j).abs()
        width, keep_pair = windows[d], kept[d]
        if _code_sink(model_type, release):
            width = torch.where(j == 0, s, width)
            keep_pair = keep_pair | (j == 0)
        r_i = (i * s) % block_size
        k0 = (a * block_size - r_i).clamp(min=0)
        k1 = (a * block_size + block_size - r_i).clamp(max=s)
        lo = torch.maximum(k0[None, :, None, None], (col_local - width[:, None, None])[:, None])
        hi = torch.minimum(k1[None, :, None, None], (col_local + width[:, None, None] + 1)[:, None])
        count = (hi - lo).clamp(min=0)
        count = count * (col_valid[:, None] & keep_pair[:, None, None, None])
        nonzero = (count > 0).sum(-1)
        dense_cols = (3 * count > block_size).sum(-1)
        keep = 5 * dense_cols > 3 * nonzero
        rows = i * s // block_size + a
        flat = rows[None, :, None] * (nb + per_frame) + cols[:, None, :]
        hits.index_put_((flat.reshape(-1),), keep.reshape(-1).int(), accumulate=True)
    out = (hits.view(nb + per_frame, nb + per_frame) > 0)[:nb, :nb].clone()
    border = video // block_size
    out[border:, :] = True
    out[:, border:] = True
    return out


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True)
class RadialMask(Mask):
    """Radial attention over ``shape = (frames, *spatial)``; see the module docstring for both rules.

    ``block_size``, ``decay_factor``, ``model_type``, ``decimation_threshold`` and ``release`` apply to
    ``rule="code"``.
    """

    rule: str = "paper"
    block_size: int = 128
    decay_factor: float = 1.0
    model_type: str = "hunyuan"
    decimation_threshold: int = 128
    release: str = RELEASES[-1]

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        _check_positive_int("block_size", self.block_size)
        _check_positive_int("decimation_threshold", self.decimation_threshold)
        if (isinstance(self.decay_factor, bool) or not isinstance(self.decay_factor, (int, float))
                or not math.isfinite(self.decay_factor) or self.decay_factor <= 0):
            raise ValueError(f"decay_factor must be a finite number > 0, got {self.decay_factor!r}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.release not in RELEASES:
            raise ValueError(f"release must be one of {RELEASES}, got {self.release!r}")

    def check(self, shape: Shape) -> None:
        if len(shape) < 2:
            raise ValueError(f"radial masks need shape=(frames, *spatial) with at least 2 dims, got shape={shape}")

    def _frame_split(self, shape: Shape) -> tuple[int, int]:
        return shape[0], num_tokens(shape[1:])

    def code_blocks(self, shape: Shape) -> Tensor:
        """``rule="code"``: the bool block mask ``[nb, nb]`` over ``block_size`` token blocks of the grid."""
        f, s = self._frame_split(shape)
        return code_block_mask(f, s, self.block_size, float(self.decay_factor), self.model_type,
                               self.decimation_threshold, self.release).clone()

    def _spatial_mod(self, shape: Shape) -> SpatialMod:
        _, s = self._frame_split(shape)
        if self.rule == "code":
            blocks, size = self.code_blocks(shape), self.block_size

            def code(q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                return blocks.to(q_idx.device)[q_idx // size, kv_idx // size]

            return code

        def spatial(q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            i, k = q_idx // s, q_idx % s
            j, l = kv_idx // s, kv_idx % s
            dt = (i - j).abs()
            b = _floor_pow2(torch.clamp(dt, min=1))
            band = (b <= s) & (((k - l).abs() + 1) * b <= s)
            period = (b + s - 1) // s
            diagonal = (dt % period == 0) & (k == l)
            return band | diagonal

        return spatial

    def _spatial_rows(self, shape: Shape, start: int, stop: int, device: torch.device | None) -> Tensor:
        f, s = self._frame_split(shape)
        if self.rule == "code":
            blocks = self.code_blocks(shape).to(device)
            size = self.block_size
            rows = blocks[torch.arange(start, stop, device=device) // size]
            return rows[:, torch.arange(f * s, device=device) // size]
        reach = []
        for dt in range(f):
            width, diagonal = paper_band(s, dt)
            reach.append(width if width >= 0 else (0 if diagonal else -1))
        reach_t = torch.tensor(reach, dtype=torch.int32, device=device)
        frames = torch.arange(f, device=device)
        parts = []
        row = start
        while row < stop:
            i, k0 = divmod(row, s)
            k1 = min(s, k0 + stop - row)
            k = torch.arange(k0, k1, dtype=torch.int32, device=device)
            diff = (k[:, None] - torch.arange(s, dtype=torch.int32, device=device)[None, :]).abs()
            parts.append((diff[:, None, :] <= reach_t[(frames - i).abs()][None, :, None]).view(k1 - k0, f * s))
            row += k1 - k0
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _spatial_pair_count(self, shape: Shape) -> int:
        f, s = self._frame_split(shape)
        if self.rule == "code":
            blocks = self.code_blocks(shape).long()
            sizes = torch.full((blocks.shape[0],), self.block_size, dtype=torch.long)
            sizes[-1] = f * s - (blocks.shape[0] - 1) * self.block_size
            return int(sizes @ blocks @ sizes)
        total = 0
        for dt in range(f):
            width, diagonal = paper_band(s, dt)
            pairs = (2 * width + 1) * s - width * (width + 1) if width >= 0 else (s if diagonal else 0)
            total += pairs * (f if dt == 0 else 2 * (f - dt))
        return total


def radial_mask(rule: str = "paper", block_size: int = 128, decay_factor: float = 1.0, model_type: str = "hunyuan",
                decimation_threshold: int = 128, release: str = RELEASES[-1]) -> RadialMask:
    """Radial Attention mask over ``shape = (frames, *spatial)``.

    Args:
        rule: ``"paper"`` for the paper's equation, ``"code"`` for the official code's block rule.
        block_size: token block size of ``rule="code"`` (the release uses 128).
        decay_factor: window scale of ``rule="code"``.
        model_type: ``rule="code"``: ``"hunyuan"`` or ``"wan"`` (frame 0 an attention sink; half band at
            distance 1 before release ``"2025-11"``).
        decimation_threshold: ``rule="code"``: the code's hard-coded 128 in the decimation of far frames.
        release: ``rule="code"``: version of the official code, one of :data:`RELEASES` (module docstring);
            default the current ``"2025-11"``.
    """
    return RadialMask(rule, block_size, decay_factor, model_type, decimation_threshold, release)
