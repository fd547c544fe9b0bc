"""MORPH Ti/S/M/L: a shape-agnostic autoregressive PDE model on visattn's axial attention.

Paper: Rautela et al., "MORPH: Shape-agnostic PDE Foundation Models" (arXiv 2509.21670); release lanl/MORPH (read
for the facts below, none of its code is used). Data are in the UPTF-7 layout ``(N, T, F, C, D, H, W)``: ``T`` past
time steps, ``F <= 3`` fields, each with ``C <= 3`` components (a scalar has 1, a 2-D vector 2), on a ``D x H x W``
grid; 1-D data have ``D = H = 1``, 2-D data ``D = 1``. One forward predicts the next state ``(N, F, C, D, H, W)``:

1. component-wise convolution (:class:`ComponentConv`) of every field at every time step, components zero-padded to
   ``max_components``: ``h = LReLU(W_k * ... LReLU(W_1 * (P x)))``, ``P`` a 1 x 1 x 1 convolution to 8 channels,
   ``W_i`` 3 x 3 x 3 convolutions (doubling up to ``filters``), LeakyReLU slope 0.2, no biases;
2. patchify (:func:`patchify`): patches of ``p`` (8) along every axis longer than 1, 1 along size-1 axes, each
   flattened to ``filters * pD * pH * pW`` features, zero-padded to ``filters * p^3`` and projected to ``dim``;
3. inter-field cross-attention (:class:`FieldCrossAttention`): one learnable query attends to the ``F`` field
   tokens of a patch, ``z = MHA(q, e_{1..F}, e_{1..F})``, giving one token per patch and time step;
4. a learnable positional table ``(max_ar, max_patches, dim)`` sliced to ``T`` time steps and linearly
   interpolated to the patch count (MORPH-L: bilinear in time and patches), added to the tokens;
5. ``depth`` blocks ``x = x + Axial(LN(x))``, ``x = x + MLP(LN(x))`` with MORPH's axial attention
   (:class:`visattn.nn.axial.MorphAxialAttention`): ``x' = x + A_t(x)`` (when ``T > 1``),
   ``out = x' + A_D(x') + A_H(x') + A_W(x')``;
6. a decoder (LayerNorm, Linear to ``max_fields * max_components * p^3``, cut to ``F * C * pD * pH * pW``) on the
   last time step's tokens, and unpatchify back to the grid.

:meth:`Morph.rollout` feeds each prediction back (the window of ``T`` steps slides by one) for ``steps`` steps.

Sizes (filters, dim, heads, depth, mlp): Ti 8/256/4/4/1024, S 8/512/8/4/2048, M 8/768/12/8/3072,
Lt 8/1024/16/8/3072, L 8/1024/16/16/4096, XL 64/1536/24/16/8192; 32 cross-attention heads, ``max_patches = 4096``,
dropout 0.1; the released checkpoints have ``max_ar = 1`` (Ti, S, M) and ``max_ar = 16`` with bilinear positional
interpolation (L); the release's comments size Lt and XL with ``max_ar = 8`` (sliced in time, as Ti/S/M).

Differences from the release, chosen here: axes whose size is not a multiple of the patch are padded (replicate) to
the next multiple and the prediction cropped back (``pad=True``; the release asserts divisibility, ``pad=False``);
the positional table and the cross-attention query start from a truncated normal of std 0.02 (the release draws
them from N(0, 1)); the zero-padding of components, features and decoder outputs is computed by slicing the weights
(the same products, no padded tensors). Per-axis attentions use one fused qkv projection (the release has separate
q, k, v; the parameter count is the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from torch import Tensor, nn

from ..nn.axial import MorphAxialAttention

__all__ = [
    "MORPH_SIZES", "ComponentConv", "FieldCrossAttention", "Morph", "MorphBlock", "MorphEmbedding", "count_parameters",
    "MorphPositionalEncoding", "MorphSize", "create_morph", "morph_l", "morph_lt", "morph_m", "morph_s", "morph_ti",
    "morph_xl", "params_table",
    "patch_sizes", "patchify", "to_uptf7", "unpatchify",
]


@dataclass(frozen=True)
class MorphSize:
    """One published MORPH size: convolution ``filters``, token ``dim``, axial attention ``heads``, ``depth``
    blocks, MLP width ``mlp_dim``, the positional table's time steps ``max_ar`` and its interpolation ``pos_mode``
    (``"slice"``: slice time, interpolate patches linearly; ``"bilinear"``: both, MORPH-L)."""

    filters: int
    dim: int
    heads: int
    depth: int
    mlp_dim: int
    max_ar: int = 1
    pos_mode: str = "slice"


MORPH_SIZES: dict[str, MorphSize] = {
    "Ti": MorphSize(8, 256, 4, 4, 1024),
    "S": MorphSize(8, 512, 8, 4, 2048),
    "M": MorphSize(8, 768, 12, 8, 3072),
    "Lt": MorphSize(8, 1024, 16, 8, 3072, max_ar=8),
    "L": MorphSize(8, 1024, 16, 16, 4096, max_ar=16, pos_mode="bilinear"),
    "XL": MorphSize(64, 1536, 24, 16, 8192, max_ar=8),
}
"""The released sizes (lanl/MORPH ``config/argument_parser.py`` ``MORPH_MODELS``; L with the 16-step table of its
checkpoint; Lt "Large-lite" and XL "Extra Large" with the 8-step tables its comments count, ~231 M and ~1.12 B).
The release interpolates the table bilinearly only for ``model_size == 'L'`` with ``max_ar > 1``
(``src/utils/vit_conv_xatt_axialatt2.py``): Lt and XL slice time and interpolate the patches linearly."""


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_tensor(name: str, x: object, rank: int, layout: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name} must be shaped {layout} ({rank}-D), got shape {tuple(x.shape)}")
    return x


def to_uptf7(x: Tensor, spatial_dims: int) -> Tensor:
    """``x`` shaped ``(N, T, F, C, *space)`` with ``spatial_dims`` (1, 2 or 3) grid axes, as UPTF-7
    ``(N, T, F, C, D, H, W)``: a 1-D grid ``(L,)`` becomes ``(1, 1, L)``, a 2-D grid ``(H, W)`` becomes
    ``(1, H, W)`` (a view, no copy)."""
    if isinstance(spatial_dims, bool) or spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
    x = _check_tensor("x", x, 4 + spatial_dims, f"(N, T, F, C, {spatial_dims} grid axes)")
    return x.reshape(*x.shape[:4], *(1,) * (3 - spatial_dims), *x.shape[4:])


def patch_sizes(grid: tuple[int, int, int], patch: int) -> tuple[int, int, int]:
    """MORPH's patch along each of ``grid = (D, H, W)``: ``patch`` on axes longer than 1, 1 on size-1 axes."""
    return tuple(1 if size == 1 else patch for size in grid)


def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """``(B, C, D, H, W)`` -> ``(B, n, C * pD * pH * pW)`` with ``n = (D / pD)(H / pH)(W / pW)`` patches in
    row-major (D, H, W) order, each flattened in ``(C, pD, pH, pW)`` order. The sides must be multiples of
    ``patch``."""
    x = _check_tensor("x", x, 5, "(B, C, D, H, W)")
    b, c, *grid = x.shape
    if any(size % p for size, p in zip(grid, patch, strict=True)):
        raise ValueError(f"the grid (D, H, W)={tuple(grid)} must be a multiple of the patch {tuple(patch)}")
    (pd, ph, pw), (nd, nh, nw) = patch, (grid[0] // patch[0], grid[1] // patch[1], grid[2] // patch[2])
    x = x.reshape(b, c, nd, pd, nh, ph, nw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, nd * nh * nw, c * pd * ph * pw)


def unpatchify(tokens: Tensor, channels: int, patches: tuple[int, int, int], patch: tuple[int, int, int]) -> Tensor:
    """Inverse of :func:`patchify`: ``(B, n, channels * pD * pH * pW)`` on a ``patches = (nD, nH, nW)`` grid ->
    ``(B, channels, nD * pD, nH * pH, nW * pW)``."""
    tokens = _check_tensor("tokens", tokens, 3, "(B, n, channels * patch volume)")
    (nd, nh, nw), (pd, ph, pw) = patches, patch
    if tokens.shape[1:] != (nd * nh * nw, channels * pd * ph * pw):
        raise ValueError(f"tokens must be shaped (B, {nd * nh * nw}, {channels * pd * ph * pw}) for channels="
                         f"{channels}, patches={tuple(patches)}, patch={tuple(patch)}; got {tuple(tokens.shape)}")
    x = tokens.reshape(-1, nd, nh, nw, channels, pd, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(-1, channels, nd * pd, nh * ph, nw * pw)


class ComponentConv(nn.Module):
    """MORPH's component-wise convolution of one field ``(B, C, D, H, W)`` with ``C <= max_components``:
    ``h_0 = P (x padded with zero components)``, a bias-free 1 x 1 x 1 convolution to ``hidden`` channels, then
    3 x 3 x 3 convolutions (zero padding 1, no bias) each followed by LeakyReLU(0.2): doubling the channels up to
    ``filters``, then one more at ``filters``. Padding the components with zeros equals using the first ``C`` input
    channels of ``P``, which is what is computed.
    """

    def __init__(self, max_components: int = 3, filters: int = 8, hidden: int = 8) -> None:
        super().__init__()
        for name, value in (("max_components", max_components), ("filters", filters), ("hidden", hidden)):
            _positive_int(name, value)
        self.max_components = max_components
        self.filters = filters
        self.input_proj = nn.Conv3d(max_components, hidden, kernel_size=1, bias=False)
        layers: list[nn.Module] = []
        width = hidden
        while width < filters:
            wider = min(2 * width, filters)
            layers += [nn.Conv3d(width, wider, 3, padding=1, bias=False), nn.LeakyReLU(0.2)]
            width = wider
        layers += [nn.Conv3d(width, filters, 3, padding=1, bias=False), nn.LeakyReLU(0.2)]
        self.convs = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, D, H, W)``, ``1 <= C <= max_components``; returns ``(B, filters, D, H, W)``."""
        x = _check_tensor("x", x, 5, "(B, C, D, H, W)")
        if not 1 <= x.shape[1] <= self.max_components:
            raise ValueError(f"x has C={x.shape[1]} components, expected 1..max_components={self.max_components}")
        return self.convs(F.conv3d(x, self.input_proj.weight[:, : x.shape[1]]))


class FieldCrossAttention(nn.Module):
    """MORPH's inter-field cross-attention: a learnable query ``q`` attends to the ``F`` field tokens of each patch,
    ``z = W_o concat_h softmax((q W_q^h + b_q^h)(e W_k^h + b_k^h)^T / sqrt(d_h)) (e W_v^h + b_v^h) + b_o``,
    with ``e`` the ``(F, dim)`` field tokens: ``(B, F, dim) -> (B, dim)`` (``torch.nn.MultiheadAttention``).
    """

    def __init__(self, dim: int, num_heads: int = 32, attn_drop: float = 0.0) -> None:
        super().__init__()
        _positive_int("dim", dim)
        _positive_int("num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.dim = dim
        self.query = nn.Parameter(torch.empty(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=attn_drop, batch_first=True)
        trunc_normal_(self.query, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, F, dim)`` field tokens; returns ``(B, dim)``."""
        x = _check_tensor("x", x, 3, "(B, F, dim)")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has {x.shape[-1]} channels, expected dim={self.dim}")
        out, _ = self.attn(self.query.expand(x.shape[0], -1, -1), x, x, need_weights=False)
        return out[:, 0]


class MorphEmbedding(nn.Module):
    """Steps 1-3 of the module docstring: ``(B, T, F, C, D, H, W)`` -> tokens ``(B, T, n, dim)``, ``n`` patches of
    ``patch`` (from :func:`patch_sizes`) in row-major order. The sides must be multiples of the patch."""

    def __init__(self, dim: int, patch_size: int = 8, max_components: int = 3, filters: int = 8,
                 heads_xa: int = 32, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.patch_size = _positive_int("patch_size", patch_size)
        self.conv = ComponentConv(max_components, filters)
        self.max_features = filters * patch_size ** 3
        self.projection = nn.Linear(self.max_features, dim)
        self.field_attn = FieldCrossAttention(dim, heads_xa, attn_drop)

    def forward(self, x: Tensor) -> Tensor:
        b, t, f, c, *grid = x.shape
        patch = patch_sizes(tuple(grid), self.patch_size)
        feats = patchify(self.conv(x.reshape(b * t * f, c, *grid)), patch)
        n, width = feats.shape[1:]
        feats = feats.reshape(b * t, f, n, width).transpose(1, 2).reshape(b * t * n, f, width)
        tokens = F.linear(feats, self.projection.weight[:, :width], self.projection.bias)
        return self.field_attn(tokens).reshape(b, t, n, -1)


class MorphPositionalEncoding(nn.Module):
    """A learnable table ``(1, max_ar, max_patches, dim)`` resampled to ``(T, n)``: ``"slice"`` takes the first
    ``T`` time rows and interpolates linearly (``align_corners=False``) over the patch axis; ``"bilinear"``
    interpolates both axes (antialiased), as MORPH-L."""

    def __init__(self, dim: int, max_ar: int = 1, max_patches: int = 4096, mode: str = "slice") -> None:
        super().__init__()
        if mode not in ("slice", "bilinear"):
            raise ValueError(f"mode must be 'slice' or 'bilinear', got {mode!r}")
        self.max_ar = _positive_int("max_ar", max_ar)
        self.mode = mode
        self.table = nn.Parameter(torch.empty(1, max_ar, _positive_int("max_patches", max_patches), dim))
        trunc_normal_(self.table, std=0.02)

    def forward(self, t: int, n: int) -> Tensor:
        """The ``(1, t, n, dim)`` encoding for ``t`` time steps of ``n`` patches."""
        table = self.table.permute(0, 3, 1, 2)
        if self.mode == "bilinear":
            out = F.interpolate(table, size=(t, n), mode="bilinear", align_corners=False, antialias=True)
        else:
            rows = table[:, :, :t]
            dim = rows.shape[1]
            out = F.interpolate(rows.reshape(1, dim * t, -1), size=n, mode="linear", align_corners=False)
            out = out.reshape(1, dim, t, n)
        return out.permute(0, 2, 3, 1)


class MorphBlock(nn.Module):
    """``x = x + MorphAxialAttention(LN(x))``, ``x = x + MLP(LN(x))`` on ``(B, T, D', H', W', dim)`` tokens;
    ``dropout`` on the attention weights and in the MLP (after the activation and after the second linear)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MorphAxialAttention(dim, heads, spatial_dims=3, attn_drop=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim, drop=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Morph(nn.Module):
    """MORPH (see the module docstring): ``forward(x)`` maps UPTF-7 ``(N, T, F, C, D, H, W)`` to the next state
    ``(N, F, C, D, H, W)``; :meth:`rollout` predicts ``steps`` states autoregressively.

    Args:
        dim, depth, heads, mlp_dim: token width, blocks, axial attention heads, MLP width.
        filters: channels of the component-wise convolution (a multiple of 8).
        patch_size: patch side on every axis longer than 1.
        heads_xa: heads of the inter-field cross-attention.
        max_fields, max_components: the largest ``F`` and ``C`` accepted (3 and 3 in MORPH).
        max_ar: the most past time steps ``T`` accepted (the positional table's rows).
        max_patches: the positional table's patch rows (interpolated to the actual count).
        pos_mode: ``"slice"`` or ``"bilinear"`` (:class:`MorphPositionalEncoding`).
        dropout: attention and MLP dropout; ``emb_dropout``: dropout on the positional encoding and on the tokens.
        pad: pad sides that are not multiples of the patch (replicate) and crop the prediction; if False such
            inputs raise ``ValueError``.
        residual: predict ``x[:, -1] + decoder output`` instead of the decoder output (MORPH predicts the state:
            False).
    """

    def __init__(self, dim: int = 256, depth: int = 4, heads: int = 4, mlp_dim: int = 1024, filters: int = 8,
                 patch_size: int = 8, heads_xa: int = 32, max_fields: int = 3, max_components: int = 3,
                 max_ar: int = 1, max_patches: int = 4096, pos_mode: str = "slice", dropout: float = 0.1,
                 emb_dropout: float = 0.1, pad: bool = True, residual: bool = False) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("heads", heads), ("mlp_dim", mlp_dim),
                            ("max_fields", max_fields), ("max_components", max_components)):
            _positive_int(name, value)
        if _positive_int("filters", filters) % 8:
            raise ValueError(f"filters must be a multiple of 8, got {filters!r}")
        self.dim = dim
        self.patch_size = _positive_int("patch_size", patch_size)
        self.max_fields = max_fields
        self.max_components = max_components
        self.max_ar = _positive_int("max_ar", max_ar)
        self.pad = bool(pad)
        self.residual = bool(residual)
        self.embed = MorphEmbedding(dim, patch_size, max_components, filters, heads_xa)
        self.pos = MorphPositionalEncoding(dim, max_ar, max_patches, pos_mode)
        self.pos_drop = nn.Dropout(emb_dropout)
        self.token_drop = nn.Dropout(emb_dropout)
        self.blocks = nn.ModuleList(MorphBlock(dim, heads, mlp_dim, dropout) for _ in range(depth))
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, max_fields * max_components * patch_size ** 3)

    def check_input(self, x: object) -> Tensor:
        """``x`` if it is a UPTF-7 batch this model accepts, else ``TypeError``/``ValueError`` saying why."""
        x = _check_tensor("x", x, 7, "(N, T, F, C, D, H, W) (UPTF-7)")
        _, t, f, c = x.shape[:4]
        for axis, value, limit, most in (("T", t, "max_ar", self.max_ar), ("F", f, "max_fields", self.max_fields),
                                         ("C", c, "max_components", self.max_components)):
            if value > most:
                raise ValueError(f"x has {axis}={value} (shape {tuple(x.shape)}), beyond the layout's {limit}={most}")
        if not self.pad:
            patch = patch_sizes(tuple(x.shape[4:]), self.patch_size)
            if any(size % p for size, p in zip(x.shape[4:], patch, strict=True)):
                raise ValueError(f"x's grid (D, H, W)={tuple(x.shape[4:])} is not a multiple of the patch {patch}; "
                                 "pass pad=True to pad it")
        return x

    def _padded(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        grid = tuple(x.shape[4:])
        patch = patch_sizes(grid, self.patch_size)
        extra = [math.ceil(size / p) * p - size for size, p in zip(grid, patch, strict=True)]
        if not any(extra):
            return x, grid
        lead = x.shape[:4]
        flat = F.pad(x.reshape(-1, *grid), (0, extra[2], 0, extra[1], 0, extra[0]), mode="replicate")
        return flat.reshape(*lead, *flat.shape[-3:]), grid

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Steps 1-5: the transformer's output tokens ``(N, T, D', H', W', dim)`` for a padded UPTF-7 ``x``."""
        n, t = x.shape[:2]
        grid = tuple(x.shape[4:])
        patch = patch_sizes(grid, self.patch_size)
        patches = tuple(size // p for size, p in zip(grid, patch, strict=True))
        tokens = self.embed(x)
        tokens = self.token_drop(tokens + self.pos_drop(self.pos(t, tokens.shape[2])))
        tokens = tokens.reshape(n, t, *patches, self.dim)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def forward(self, x: Tensor) -> Tensor:
        """``x``: UPTF-7 ``(N, T, F, C, D, H, W)``; returns the predicted next state ``(N, F, C, D, H, W)``."""
        x = self.check_input(x)
        padded, grid = self._padded(x)
        n, _, f, c = x.shape[:4]
        tokens = self.forward_tokens(padded)[:, -1]
        patches = tuple(tokens.shape[1:4])
        patch = patch_sizes(tuple(padded.shape[4:]), self.patch_size)
        width = f * c * patch[0] * patch[1] * patch[2]
        out = F.linear(self.head_norm(tokens.reshape(n, -1, self.dim)), self.head.weight[:width],
                       self.head.bias[:width])
        out = unpatchify(out, f * c, patches, patch).reshape(n, f, c, *padded.shape[4:])
        out = out[..., : grid[0], : grid[1], : grid[2]]
        return x[:, -1] + out if self.residual else out

    def rollout(self, x: Tensor, steps: int) -> Tensor:
        """Predict ``steps`` states autoregressively from the UPTF-7 window ``x``: each prediction is appended to the
        window and its oldest step dropped. Returns ``(N, steps, F, C, D, H, W)``."""
        x = self.check_input(x)
        _positive_int("steps", steps)
        window, states = x, []
        for _ in range(steps):
            state = self(window)
            states.append(state)
            window = torch.cat([window[:, 1:], state[:, None]], dim=1)
        return torch.stack(states, dim=1)


def create_morph(size: str = "Ti", **kwargs: object) -> Morph:
    """MORPH of a published ``size`` (``"Ti"``, ``"S"``, ``"M"``, ``"Lt"``, ``"L"``, ``"XL"``; :data:`MORPH_SIZES`),
    ``kwargs`` overriding any :class:`Morph` argument."""
    if size not in MORPH_SIZES:
        raise ValueError(f"size must be one of {sorted(MORPH_SIZES)}, got {size!r}")
    spec = MORPH_SIZES[size]
    args = dict(dim=spec.dim, depth=spec.depth, heads=spec.heads, mlp_dim=spec.mlp_dim, filters=spec.filters,
                max_ar=spec.max_ar, pos_mode=spec.pos_mode)
    return Morph(**(args | kwargs))


def count_parameters(size: str, **kwargs: object) -> int:
    """Parameters of ``create_morph(size, **kwargs)``, built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        model = create_morph(size, **kwargs)
    return sum(p.numel() for p in model.parameters())


def params_table() -> str:
    """Markdown table of the published sizes: architecture, parameters counted on the meta device and the published
    figure (:data:`visattn.models.published.PUBLISHED_TASK_MODELS`), as docs/tasks.md shows it."""
    from .published import PUBLISHED_TASK_MODELS

    lines = ["| size | filters / dim / heads / depth / MLP | max_ar | params (M) | published (M) |",
             "|---|---|---|---|---|"]
    for size, spec in MORPH_SIZES.items():
        paper = PUBLISHED_TASK_MODELS[f"morph_{size.lower()}"]
        published = "—" if paper.params_m is None else f"~{paper.params_m:g}"
        lines.append(f"| MORPH-{size} | {spec.filters} / {spec.dim} / {spec.heads} / {spec.depth} / {spec.mlp_dim} "
                     f"| {spec.max_ar} | {count_parameters(size) / 1e6:.2f} | {published} |")
    return "\n".join(lines) + "\n"


def morph_ti(**kwargs: object) -> Morph:
    """MORPH-Ti (dim 256, 4 blocks, 4 heads, MLP 1024)."""
    return create_morph("Ti", **kwargs)


def morph_s(**kwargs: object) -> Morph:
    """MORPH-S (dim 512, 4 blocks, 8 heads, MLP 2048)."""
    return create_morph("S", **kwargs)


def morph_m(**kwargs: object) -> Morph:
    """MORPH-M (dim 768, 8 blocks, 12 heads, MLP 3072)."""
    return create_morph("M", **kwargs)


def morph_lt(**kwargs: object) -> Morph:
    """MORPH-Lt, "Large-lite" (dim 1024, 8 blocks, 16 heads, MLP 3072; 8-step positional table, sliced)."""
    return create_morph("Lt", **kwargs)


def morph_l(**kwargs: object) -> Morph:
    """MORPH-L (dim 1024, 16 blocks, 16 heads, MLP 4096; 16-step positional table, bilinear)."""
    return create_morph("L", **kwargs)


def morph_xl(**kwargs: object) -> Morph:
    """MORPH-XL, "Extra Large" (64 convolution filters, dim 1536, 16 blocks, 24 heads, MLP 8192; 8-step positional
    table, sliced)."""
    return create_morph("XL", **kwargs)
