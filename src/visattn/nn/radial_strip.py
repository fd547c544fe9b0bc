"""Radial strip attention and dynamic radial embedding (Radial Strip Transformer, RST).

Chen et al., "Spread Your Wings: A Radial Strip Transformer for Image Deblurring", arXiv 2404.00358 (code: the
authors' follow-up Calvin11311/MDT). A feature map is resampled on an ``R x A`` polar grid (rings x azimuths,
:func:`visattn.transforms.polar_resample`); each token attends inside its strip, one ring (a row of the polar grid,
``strip_mask("rows", 1)``) or one ray (a column, ``strip_mask("columns", 1)``), with a learned relative position
term, and the result is mapped back to the image (:func:`visattn.transforms.polar_inverse`)::

    out_i = sum_{j in strip(i)} softmax_j(scale q_i . k_j + B(d_ij)) v_j
    ring: d = phi-index(i) - phi-index(j),  B(d) = a[d mod A] cos(2 pi d / A) + b[d mod A] sin(2 pi d / A)
    ray:  d = ring(i) - ring(j),            B(d) = a[d + R - 1] cos(d theta_max / R) + b[d + R - 1] sin(d theta_max / R)

Offsets are query minus key. Ring offsets are circular: a ring closes on itself, so ``d`` and ``d + A`` are the
same offset and share one entry (``A`` entries per head); ray offsets run over ``-(R - 1) .. R - 1`` (``2R - 1``
entries, index ``d + R - 1``). That is ``table_layout="circular"`` (default). ``theta_max`` is the largest ray
angle of the camera model in the paper's code (derived there from the lens distortion); without a lens model it is
a hyper-parameter, ``pi`` by default.

``table_layout="mdt"`` is the layout of the official code (Calvin11311/MDT, ``WindowAttention`` in
``basicsr/models/archs/mdt_arch.py``), so that its weights load (:func:`convert_mdt_state_dict`): ``2L - 1``
entries for rings too, indexed with the signed offset as a Python index (``d`` for ``d >= 0``, ``2L - 1 + d`` for
``d < 0``): on a ring, ``d`` and ``d - A`` then have entries of their own. Same phases.

Unlike the public code, the polar resampling really happens (so strips are rings and rays of the image, not rows
and columns), and every layer is created once in ``__init__``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import positive_int
from ..masks import StripMask, strip_mask
from ..ops import reference, sdpa_bool_mask
from ..ops.engines.dense import dense_mask
from ..registry import register_mixer
from ..transforms import polar_center, polar_inverse, polar_resample
from .token_mixer import TokenMixer

STRIPS = ("ring", "ray")
TABLE_LAYOUTS = ("circular", "mdt")
"""Position-table layouts: ours (rings share ``d`` and ``d + A``) and the official MDT code's (``2L - 1`` entries)."""


def _finite_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


class RadialStripMixer(TokenMixer):
    """Attention inside the rings (``strip="ring"``) or rays (``strip="ray"``) of an ``(R, A)`` polar token grid.

    Tokens are the polar grid in row-major order (ring-major: token ``m A + n`` is ring ``m``, azimuth ``n``),
    optionally after prefix tokens, which see and are seen by every token without a position term.
    ``num_heads`` is the number of heads with their own tables ``a``, ``b`` (each ``(num_heads, entries)``);
    ``num_heads=1`` shares one table across all heads of ``q``. ``table_layout``: one of :data:`TABLE_LAYOUTS`
    (module docstring). Without prefix tokens the strips are batched
    through ``scaled_dot_product_attention`` with the position term as a float mask (``L x L`` per strip);
    with prefix tokens, the dense ``N x N`` form is used.
    """

    supports_attn_mask = False

    def __init__(self, num_rings: int, num_angles: int, strip: str = "ring", num_heads: int = 1,
                 theta_max: float = math.pi, scale: float | None = None, attn_drop: float = 0.0,
                 table_layout: str = "circular") -> None:
        super().__init__(attn_drop)
        if table_layout not in TABLE_LAYOUTS:
            raise ValueError(f"table_layout must be one of {TABLE_LAYOUTS}, got {table_layout!r}")
        self.table_layout = table_layout
        self.num_rings = positive_int(num_rings, "num_rings", 2)
        self.num_angles = positive_int(num_angles, "num_angles")
        if strip not in STRIPS:
            raise ValueError(f"strip must be one of {STRIPS}, got {strip!r}")
        self.strip = strip
        self.num_heads = positive_int(num_heads, "num_heads")
        self.theta_max = _finite_real(theta_max, "theta_max")
        self.scale = None if scale is None else _finite_real(scale, "scale")
        length = self.strip_length
        entries = length if strip == "ring" and table_layout == "circular" else 2 * length - 1
        self.a = nn.Parameter(torch.zeros(self.num_heads, entries))
        self.b = nn.Parameter(torch.zeros(self.num_heads, entries))
        from timm.layers import trunc_normal_

        trunc_normal_(self.a, std=0.02)
        trunc_normal_(self.b, std=0.02)
        offset = torch.arange(length)[:, None] - torch.arange(length)[None, :]
        self.register_buffer("offset", offset, persistent=False)

    @property
    def grid(self) -> tuple[int, int]:
        return self.num_rings, self.num_angles

    @property
    def strip_length(self) -> int:
        """Tokens per strip: ``A`` for a ring, ``R`` for a ray."""
        return self.num_angles if self.strip == "ring" else self.num_rings

    @property
    def mask(self) -> StripMask:
        """The strip structure on the polar grid: rows (rings) or columns (rays) of width 1."""
        return strip_mask("rows" if self.strip == "ring" else "columns", 1)

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, strip={self.strip!r}, num_heads={self.num_heads}, "
                f"theta_max={self.theta_max:.4g}, table_layout={self.table_layout!r}")

    def relative_bias(self, dtype: torch.dtype | None = None) -> Tensor:
        """The position term inside one strip, ``(num_heads, L, L)``: ``a[idx] cos(phase) + b[idx] sin(phase)``.

        ``offset`` is the integer query-minus-key offset ``(L, L)``; ring: ``idx = offset mod A``,
        ``phase = 2 pi offset / A``; ray: ``idx = offset + R - 1``, ``phase = offset theta_max / R``; with
        ``table_layout="mdt"``, ``idx = offset mod (2L - 1)`` for both. Computed in
        float32 (float64 when asked for or when the tables are float64) and cast to ``dtype``.
        """
        dtype = dtype or self.a.dtype
        work = torch.float64 if torch.float64 in (dtype, self.a.dtype) else torch.float32
        length = self.strip_length
        if self.strip == "ring":
            index, step = self.offset % length, 2 * math.pi / length
        else:
            index, step = self.offset + length - 1, self.theta_max / length
        if self.table_layout == "mdt":
            index = self.offset % (2 * length - 1)
        phase = self.offset.to(work) * step
        a, b = self.a.to(work)[:, index], self.b.to(work)[:, index]
        return (a * torch.cos(phase) + b * torch.sin(phase)).to(dtype)

    def _check(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...]) -> int:
        shape, prefix = self.prepare(q, k, v, shape)
        if shape != self.grid:
            raise ValueError(f"shape must be the polar grid (num_rings, num_angles)={self.grid}, got shape={shape}")
        if self.num_heads not in (1, q.shape[1]):
            raise ValueError(f"q must have num_heads={self.num_heads} heads (or the mixer 1 shared table), "
                             f"got {q.shape[1]} heads")
        return prefix

    def dense_bias(self, num_prefix_tokens: int, dtype: torch.dtype) -> Tensor:
        """Additive ``(heads, N, N)`` mask: the position term inside strips, ``-inf`` across strips, 0 for prefix."""
        rings, angles = self.grid
        m = torch.arange(rings * angles, device=self.a.device)
        along = m % angles if self.strip == "ring" else m // angles
        inside = self.relative_bias(dtype)[:, along[:, None], along[None, :]]
        allowed = dense_mask(self.mask, self.grid, num_prefix_tokens, self.a.device)
        full = F.pad(inside, (num_prefix_tokens, 0, num_prefix_tokens, 0))
        return full.masked_fill(~allowed, float("-inf"))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, shape: int | tuple[int, ...],
                attn_mask: Tensor | None = None) -> Tensor:
        self._no_attn_mask(attn_mask)
        prefix = self._check(q, k, v, shape)
        if prefix:
            allowed = dense_mask(self.mask, self.grid, prefix, q.device)
            bias = self.dense_bias(prefix, q.dtype).masked_fill(~allowed, 0.0)
            return sdpa_bool_mask(q, k, v, allowed, self.scale, self.dropout_p, bias=bias)
        return self._strip_attention(q, k, v)

    def _strip_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Strips as a batch of short sequences: ``(B, h, R, A, d)`` -> ``(B * strips, h, L, d)``, one SDPA call."""
        batch, heads = q.shape[:2]
        rings, angles = self.grid
        order = (0, 2, 1, 3, 4) if self.strip == "ring" else (0, 3, 1, 2, 4)

        def strips(t: Tensor) -> Tensor:
            t = t.reshape(batch, heads, rings, angles, t.shape[-1]).permute(order)
            return t.reshape(-1, heads, self.strip_length, t.shape[-1])

        bias = self.relative_bias(q.dtype).unsqueeze(0)
        out = F.scaled_dot_product_attention(strips(q), strips(k), strips(v), attn_mask=bias, scale=self.scale,
                                             dropout_p=self.dropout_p)
        count = rings if self.strip == "ring" else angles
        out = out.reshape(batch, count, heads, self.strip_length, out.shape[-1])
        out = out.permute(0, 2, 1, 3, 4) if self.strip == "ring" else out.permute(0, 2, 3, 1, 4)
        return out.reshape(batch, heads, rings * angles, out.shape[-1])

    def attention_weights(self, q: Tensor, k: Tensor, shape: int | tuple[int, ...]) -> Tensor:
        prefix = self._check(q, k, k, shape)
        mask = self.dense_bias(prefix, q.dtype)
        return reference.attention(q, k, k, mask=mask, scale=self.scale, return_weights=True)[1]


@register_mixer("radial_strip", paper="rst", complexity="O(N L)", family="structured",
                faces=("definition", "fast", "module"))
def radial_strip(num_rings: int = 16, num_angles: int = 64, strip: str = "ring", num_heads: int = 1,
                 theta_max: float = math.pi, scale: float | None = None, attn_drop: float = 0.0,
                 table_layout: str = "circular") -> RadialStripMixer:
    """Radial strip attention on an (R, A) polar grid: rings or rays with cos/sin relative position terms (RST)."""
    return RadialStripMixer(num_rings, num_angles, strip, num_heads, theta_max, scale, attn_drop, table_layout)


class RadialStripAttention(nn.Module):
    """Radial strip attention on a feature map ``(B, C, H, W) -> (B, C, H, W)`` (RST's radial strip attention).

    ``polar_resample`` to ``(num_rings, num_angles)`` about ``center`` (default: the middle of the map) out to
    ``max_radius`` (default: the largest disk inside the map), then ``proj(mixer(qkv(tokens)))`` with a
    :class:`RadialStripMixer` (rings or rays), then ``polar_inverse`` back to ``(H, W)``. Pixels outside the disk
    get 0 (use the module inside a residual branch, as RST does). One head by default, as in the paper.
    ``table_layout="mdt"`` takes the official MDT code's ring attention weights through
    :func:`convert_mdt_state_dict`.
    """

    def __init__(self, dim: int, num_rings: int, num_angles: int, strip: str = "ring", num_heads: int = 1,
                 qkv_bias: bool = True, theta_max: float = math.pi, center: Sequence[float] | None = None,
                 max_radius: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 table_layout: str = "circular") -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.num_heads = positive_int(num_heads, "num_heads")
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        if center is not None and (not isinstance(center, Sequence) or isinstance(center, str) or len(center) != 2):
            raise TypeError(f"center must be a pair (row, column) of real numbers or None, got {center!r}")
        self.center = None if center is None else tuple(_finite_real(c, "center") for c in center)
        self.max_radius = None if max_radius is None else _finite_real(max_radius, "max_radius")
        if self.max_radius is not None and self.max_radius <= 0:
            raise ValueError(f"max_radius must be > 0, got {max_radius!r}")
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.mixer = RadialStripMixer(num_rings, num_angles, strip, num_heads, theta_max, attn_drop=attn_drop,
                                      table_layout=table_layout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        if x.shape[1] != self.dim:
            raise ValueError(f"x must have dim={self.dim} channels, got shape {tuple(x.shape)}")
        size = tuple(x.shape[-2:])
        polar = polar_resample(x, self.mixer.grid, self.center, self.max_radius)
        batch, channels, rings, angles = polar.shape
        out = self.attend(polar.flatten(2).transpose(1, 2))
        return polar_inverse(out.transpose(1, 2).reshape(batch, channels, rings, angles), size, self.center,
                             self.max_radius)

    def attend(self, tokens: Tensor) -> Tensor:
        """The attention on polar tokens ``(B, R A, C)`` (ring-major), without the resampling:
        ``proj(mixer(qkv(tokens)))``."""
        batch, _, channels = tokens.shape
        head_dim = channels // self.num_heads
        q, k, v = self.qkv(tokens).reshape(batch, -1, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.mixer(q, k, v, self.mixer.grid).transpose(1, 2).reshape(batch, -1, channels)
        return self.proj_drop(self.proj(out))


def convert_mdt_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of the official MDT code's ring attention (``WindowAttention`` with window ``(1, W)``: keys
    ``qkv.*``, ``proj.*``, ``a_p``, ``b_p``, ``a_r``, ``b_r``, tables shaped ``(entries, heads)``) for a
    :class:`RadialStripAttention` built with ``strip="ring"`` and ``table_layout="mdt"``.

    ``a_p``, ``b_p`` (``(2A - 1, heads)``) become ``mixer.a``, ``mixer.b`` (``(heads, 2A - 1)``). MDT also adds a
    radial term ``a_r[0] cos(0) + b_r[0] sin(0) = a_r[0]`` over a one-ring window: the same constant on every logit
    of a query, which the softmax removes, so ``a_r``, ``b_r`` must have one entry (a ring window) and are dropped.
    """
    out = dict(state_dict)
    for key in ("a_p", "b_p", "a_r", "b_r"):
        if key not in out:
            raise ValueError(f"state_dict must hold MDT's position table {key!r}, got keys {sorted(state_dict)}")
    for key in ("a_r", "b_r"):
        if out[key].shape[0] != 1:
            raise ValueError(f"state_dict[{key!r}] must have one entry (MDT's ring window (1, W)), got shape "
                             f"{tuple(out[key].shape)}: a window over several rings is not a radial strip")
        del out[key]
    out["mixer.a"], out["mixer.b"] = out.pop("a_p").t().contiguous(), out.pop("b_p").t().contiguous()
    return out


class DynamicRadialEmbedding(nn.Module):
    """RST's dynamic radial embedding: ``out = conv(x) + deform_conv(x, offsets)`` with angle-driven offsets.

    ``offsets = offset_conv(angle features)``, where the angle map is ``theta = atan2(y - cy, x - cx)`` about
    ``center`` (default: the middle of the map), fed as ``(cos theta, sin theta)`` so that it is continuous across
    ``theta = +-pi``; the offsets (``2 k^2`` channels, ``(dy, dx)`` per kernel tap, torchvision's layout) bend the
    deformable kernel by position around the centre. ``offset_conv`` starts at zero, so the deformable branch starts
    as a plain convolution. The deformable convolution is ``torchvision.ops.deform_conv2d``; bfloat16 inputs run
    it in float32 (torchvision has no bfloat16 CPU kernel) and are cast back.
    """

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int = 3, bias: bool = False,
                 center: Sequence[float] | None = None) -> None:
        super().__init__()
        positive_int(in_chans, "in_chans")
        positive_int(embed_dim, "embed_dim")
        if positive_int(kernel_size, "kernel_size") % 2 == 0:
            raise ValueError(f"kernel_size must be odd (the output keeps the input size), got {kernel_size!r}")
        if center is not None and (not isinstance(center, Sequence) or isinstance(center, str) or len(center) != 2):
            raise TypeError(f"center must be a pair (row, column) of real numbers or None, got {center!r}")
        self.center = None if center is None else tuple(_finite_real(c, "center") for c in center)
        self.kernel_size = kernel_size
        pad = kernel_size // 2
        self.conv = nn.Conv2d(in_chans, embed_dim, kernel_size, padding=pad, bias=bias)
        self.offset_conv = nn.Conv2d(2, 2 * kernel_size * kernel_size, kernel_size, padding=pad)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)
        self.deform_weight = nn.Parameter(torch.empty(embed_dim, in_chans, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.deform_weight, a=math.sqrt(5))
        self.deform_bias = nn.Parameter(torch.zeros(embed_dim)) if bias else None

    def angle_features(self, size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
        """``(1, 2, H, W)``: ``cos`` and ``sin`` of ``atan2(y - cy, x - cx)`` (1 and 0 at the centre itself)."""
        cy, cx = polar_center(size, self.center)
        dy = torch.arange(size[0], dtype=torch.float64, device=device)[:, None] - cy
        dx = torch.arange(size[1], dtype=torch.float64, device=device)[None, :] - cx
        theta = torch.atan2(dy.expand(size), dx.expand(size))
        return torch.stack((torch.cos(theta), torch.sin(theta))).unsqueeze(0).to(dtype)

    def offsets(self, x: Tensor) -> Tensor:
        """Deformable-kernel offsets ``(B, 2 k^2, H, W)`` from the angle map of ``x``'s grid."""
        size = (x.shape[-2], x.shape[-1])
        offsets = self.offset_conv(self.angle_features(size, x.device, self.offset_conv.weight.dtype))
        return offsets.expand(x.shape[0], -1, -1, -1)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        if x.shape[1] != self.conv.in_channels:
            raise ValueError(f"x must have in_chans={self.conv.in_channels} channels, got shape {tuple(x.shape)}")
        from torchvision.ops import deform_conv2d

        work = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
        bias = None if self.deform_bias is None else self.deform_bias.to(work)
        deformed = deform_conv2d(x.to(work), self.offsets(x).to(work), self.deform_weight.to(work), bias,
                                 padding=self.kernel_size // 2)
        return self.conv(x) + deformed.to(x.dtype)
