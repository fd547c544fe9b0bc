"""TrackVLA++ parts: the Polar-CoT sector tokenizer, the target identification memory and a sliding frame window.

TrackVLA++ ("TrackVLA++: Unleashing Reasoning and Memory Capabilities in VLA Models for Embodied Visual
Tracking", arXiv 2510.07134). No official code is public; what follows is written from the paper's description.

Polar-CoT: the target's position relative to the agent, ``(x, y)`` in metres with ``x`` forward and ``y`` to the
left, is turned into one token of an ``A x D`` grid of (angle, distance) sectors of the field of view, or the
``<invalid>`` token when the target is absent or outside the field of view::

    theta = atan2(y, x),  rho = sqrt(x^2 + y^2)
    a = floor((theta + fov / 2) / fov * A)            (a = A - 1 at theta = +fov / 2)
    d = floor((rho - rho_min) / (rho_max - rho_min) * D)  (d = D - 1 at rho = rho_max)
    token = a * D + d  if |theta| <= fov / 2 and rho_min <= rho <= rho_max, else A * D  (<invalid>)

Target Identification Memory: the paper gates the memory update by the confidence of the chain-of-thought but
does not publish the gate, so here it is a parameterised form (documented, not the paper's)::

    g_t = g_max * sigmoid((c_t - tau) / temperature)     (temperature > 0)
    g_t = g_max * [c_t >= tau]                           (temperature == 0, a hard gate)
    m_t = (1 - g_t) m_{t-1} + g_t f_t

with ``c_t`` the confidence (e.g. one minus the probability of ``<invalid>``), ``f_t`` the target features of frame
``t`` and the memory ``m`` of fixed size ``(B, M, C)``; the first update with ``g_t > 0`` after a reset fills the
memory (``m_0 := f``).
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import Tensor, nn

__all__ = ["FrameWindow", "PolarSectorTokenizer", "TargetIdentificationMemory", "memory_gate"]


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class PolarSectorTokenizer(nn.Module):
    """Polar-CoT sector tokens (TrackVLA++, arXiv 2510.07134): ``num_angles x num_distances`` sectors + ``<invalid>``.

    ``fov_deg`` is the horizontal field of view, centred on the heading; distances span ``[min_distance,
    max_distance]`` metres (the paper's field of view reaches about 0.6-5.0 m). See the module docstring for the
    binning formula. ``invalid_token == num_angles * num_distances`` and ``vocab_size == invalid_token + 1``.
    """

    def __init__(self, num_angles: int = 12, num_distances: int = 5, fov_deg: float = 90.0,
                 min_distance: float = 0.6, max_distance: float = 5.0) -> None:
        super().__init__()
        self.num_angles = _positive_int(num_angles, "num_angles")
        self.num_distances = _positive_int(num_distances, "num_distances")
        if not (isinstance(fov_deg, (int, float)) and 0 < fov_deg <= 360):
            raise ValueError(f"fov_deg must be in (0, 360], got {fov_deg!r}")
        if not (isinstance(min_distance, (int, float)) and isinstance(max_distance, (int, float))
                and 0 <= min_distance < max_distance):
            raise ValueError("min_distance and max_distance must satisfy 0 <= min_distance < max_distance, got "
                             f"min_distance={min_distance!r}, max_distance={max_distance!r}")
        self.fov = math.radians(float(fov_deg))
        self.min_distance, self.max_distance = float(min_distance), float(max_distance)

    @property
    def invalid_token(self) -> int:
        return self.num_angles * self.num_distances

    @property
    def vocab_size(self) -> int:
        return self.invalid_token + 1

    def forward(self, position: Tensor, valid: Tensor | None = None) -> Tensor:
        """Tokens ``(...)`` (int64) of positions ``(..., 2)`` = ``(x forward, y left)`` metres.

        ``valid`` (bool, ``(...)``) marks frames where the target is seen; others get ``<invalid>``, as do
        non-finite positions and positions outside the field of view or the distance range.
        """
        if not isinstance(position, Tensor) or position.dim() < 1 or position.shape[-1] != 2:
            raise ValueError(f"position must be a (..., 2) tensor of (x, y) metres, got {position!r}")
        if valid is not None and (not isinstance(valid, Tensor) or valid.shape != position.shape[:-1]):
            raise ValueError(f"valid must be a bool tensor shaped {tuple(position.shape[:-1])}, got {valid!r}")
        pos = position.to(torch.float64) if position.dtype != torch.float64 else position
        theta = torch.atan2(pos[..., 1], pos[..., 0])
        rho = torch.linalg.vector_norm(pos, dim=-1)
        half = self.fov / 2
        a = torch.floor((theta + half) / self.fov * self.num_angles).clamp(0, self.num_angles - 1)
        span = self.max_distance - self.min_distance
        d = torch.floor((rho - self.min_distance) / span * self.num_distances).clamp(0, self.num_distances - 1)
        ok = torch.isfinite(pos).all(-1) & (theta.abs() <= half + 1e-12)
        ok = ok & (rho >= self.min_distance) & (rho <= self.max_distance)
        if valid is not None:
            ok = ok & valid.to(torch.bool)
        token = (a * self.num_distances + d).nan_to_num(0).long()
        return torch.where(ok, token, torch.full_like(token, self.invalid_token))

    def centres(self, token: Tensor) -> Tensor:
        """Sector centres ``(..., 2)`` as ``(x, y)`` metres (NaN for ``<invalid>``) of tokens ``(...)``."""
        if not isinstance(token, Tensor) or token.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token must be an integer tensor, got {token!r}")
        if bool(((token < 0) | (token > self.invalid_token)).any()):
            raise ValueError(f"token must lie in [0, {self.invalid_token}], got values outside it")
        a = torch.div(token, self.num_distances, rounding_mode="floor").to(torch.float64)
        d = (token % self.num_distances).to(torch.float64)
        theta = -self.fov / 2 + (a + 0.5) * self.fov / self.num_angles
        rho = self.min_distance + (d + 0.5) * (self.max_distance - self.min_distance) / self.num_distances
        out = torch.stack((rho * torch.cos(theta), rho * torch.sin(theta)), dim=-1)
        return torch.where((token == self.invalid_token)[..., None], torch.full_like(out, float("nan")), out)

    def extra_repr(self) -> str:
        return (f"num_angles={self.num_angles}, num_distances={self.num_distances}, "
                f"fov_deg={math.degrees(self.fov):g}, distance=[{self.min_distance:g}, {self.max_distance:g}]")


def memory_gate(confidence: Tensor, threshold: float = 0.5, temperature: float = 0.1, max_gate: float = 1.0
                ) -> Tensor:
    """``g = max_gate * sigmoid((c - threshold) / temperature)``, or ``max_gate * [c >= threshold]`` when
    ``temperature == 0`` (TrackVLA++'s gate is unpublished; this form is ours, see the module docstring)."""
    if not isinstance(confidence, Tensor):
        raise ValueError(f"confidence must be a tensor, got {confidence!r}")
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if not (isinstance(max_gate, (int, float)) and 0 <= max_gate <= 1):
        raise ValueError(f"max_gate must be in [0, 1], got {max_gate!r}")
    if temperature == 0:
        return max_gate * (confidence >= threshold).to(confidence.dtype)
    return max_gate * torch.sigmoid((confidence - threshold) / temperature)


class TargetIdentificationMemory(nn.Module):
    """Fixed-size target memory ``(B, slots, dim)`` with a confidence-gated update (TrackVLA++, arXiv 2510.07134).

    ``update(features, confidence)``: ``m <- (1 - g) m + g f``, ``g = memory_gate(confidence, ...)`` per batch
    element; the first gated update fills an empty memory. ``read()`` returns the memory (zeros before any
    update) and ``filled`` which batch elements hold a target.
    """

    def __init__(self, slots: int, dim: int, threshold: float = 0.5, temperature: float = 0.1,
                 max_gate: float = 1.0) -> None:
        super().__init__()
        self.slots, self.dim = _positive_int(slots, "slots"), _positive_int(dim, "dim")
        memory_gate(torch.zeros(1), threshold, temperature, max_gate)
        self.threshold, self.temperature, self.max_gate = float(threshold), float(temperature), float(max_gate)
        self.memory: Tensor | None = None
        self.filled: Tensor | None = None

    def reset(self) -> None:
        self.memory, self.filled = None, None

    def update(self, features: Tensor, confidence: Tensor) -> Tensor:
        """Gate and write ``features`` ``(B, slots, dim)`` with ``confidence`` ``(B,)``; returns the gate ``(B,)``."""
        if not isinstance(features, Tensor) or features.dim() != 3 or features.shape[1:] != (self.slots, self.dim):
            shape = tuple(features.shape) if isinstance(features, Tensor) else features
            raise ValueError(f"features must be shaped (B, {self.slots}, {self.dim}), got {shape!r}")
        if not isinstance(confidence, Tensor) or confidence.shape != features.shape[:1]:
            raise ValueError(f"confidence must be shaped ({features.shape[0]},), got {confidence!r}")
        if self.memory is not None and self.memory.shape != features.shape:
            raise ValueError(f"features must match the memory's shape {tuple(self.memory.shape)}, "
                             f"got {tuple(features.shape)}; call reset() for a new batch")
        gate = memory_gate(confidence.to(features.dtype), self.threshold, self.temperature, self.max_gate)
        if self.memory is None:
            self.memory = torch.zeros_like(features)
            self.filled = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
        open_ = gate > 0
        effective = torch.where(self.filled | ~open_, gate, torch.ones_like(gate))
        g = effective[:, None, None]
        self.memory = (1 - g) * self.memory + g * features
        self.filled = self.filled | open_
        return effective

    def read(self) -> Tensor:
        if self.memory is None:
            raise ValueError("memory is empty: call update() first")
        return self.memory


class FrameWindow:
    """Sliding window of the last ``size`` frames' tokens (TrackVLA++'s short-term context).

    ``push(tokens)`` appends ``(B, N, C)``; ``tokens()`` returns ``(B, n, N, C)``, oldest first, ``n <= size``.
    """

    def __init__(self, size: int) -> None:
        self.size = _positive_int(size, "size")
        self._frames: deque[Tensor] = deque(maxlen=self.size)

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, tokens: Tensor) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 3:
            raise ValueError(f"tokens must be a (B, N, C) tensor, got {tokens!r}")
        if self._frames and tokens.shape != self._frames[-1].shape:
            raise ValueError(f"tokens must be shaped {tuple(self._frames[-1].shape)} like the window's frames, "
                             f"got {tuple(tokens.shape)}")
        self._frames.append(tokens)

    def tokens(self) -> Tensor:
        if not self._frames:
            raise ValueError("the window is empty: push() a frame first")
        return torch.stack(tuple(self._frames), dim=1)

    def clear(self) -> None:
        self._frames.clear()
