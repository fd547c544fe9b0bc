"""Radial Strip Transformer (RST) for image deblurring: ``visattn_rst``.

Paper: Chen et al., "Spread Your Wings: A Radial Strip Transformer for Image Deblurring", arXiv 2404.00358. The
authors' released code is that of their follow-up (Calvin11311/MDT, ``basicsr/models/archs/mdt_arch.py`` and
``options/train/GoPro.yml``); the layer counts, widths and loss below are read from it. The network is an
asymmetric U-shaped encoder-decoder on the image (``dim`` = 48, three levels of width ``dim``, ``2 dim``,
``4 dim``)::

    F_0 = DRE(I)                                   dynamic radial embedding (visattn.nn.DynamicRadialEmbedding):
                                                   Conv3x3(I) + DeformConv3x3(I, offsets = Conv(angle map))
    encoder level l (6, 6, 12 blocks):   x <- x + FFN(LN(x))                      (no attention, as released)
    Down: bilinear x 1/2 then Conv3x3 (c -> 2c);  Up: bilinear x 2 then Conv3x3 (c -> c / 2)
    decoder level l (12, 6, 6 blocks) and 4 refinement blocks at level 1:
        x <- x + DropPath(P^-1(RSA(P(LN(x)))));  x <- x + FFN(LN(x))
    skip fusion: y = Conv1x1([enc | dec]); y = Block(y); e, d = split(Conv1x1(y));  out = e + d
    output = Conv3x3(x) + I

``P`` is the polar resampling of the feature map about its centre on an ``R x A`` grid of rings and azimuths
(:func:`visattn.transforms.polar_resample`, bilinear) and ``P^-1`` its inverse (:func:`visattn.transforms.
polar_inverse`); ``RSA`` is radial strip attention (:class:`visattn.nn.RadialStripAttention`, one head): every
polar token attends inside its ring (a row of the polar grid, all azimuths) or its ray (a column, all radii) with
the paper's relative position term ``a[d] cos(2 pi d / A) + b[d] sin(2 pi d / A)`` (rings) or
``a[d] cos(d theta_max / R) + b[d] sin(d theta_max / R)`` (rays). Decoder blocks alternate rings (even index) and
rays (odd index); fusion blocks use rings. The grid of level ``l`` (side ``s = img_size / 2^l``) is
``(s // 2, 2 s)`` (as many tokens as pixels); since the polar grid is fixed, inputs of other sizes are resampled
onto the same grid. ``cover="image"`` (default) takes the rim radius to the corners (half the diagonal), so that
every pixel is on the grid (samples past the image read 0); ``cover="disk"`` stops at the largest inscribed disk
and the corners get no attention term.

``FFN`` is the frequency-domain feed-forward network of the release (``DFFN``, from FFTformer): with
``h = int(dim * ffn_expansion_factor)``::

    z = Conv1x1_{dim -> 2h}(x);  z = irfft2(rfft2(z_p) * W) on every 8 x 8 patch z_p (W learned, (2h, 8, 5));
    z1, z2 = split(DWConv3x3(z));  FFN(x) = Conv1x1_{h -> dim}(GELU(z1) * z2)

``LN`` is a LayerNorm over channels (with bias). Training recipe as released (``GoPro.yml`` and the release's
``ImageRestorationModel``; :func:`visattn.tasks.deblur.train_deblur`): loss ``L1(out, gt) + 0.1 L1(rfft2(out),
rfft2(gt))`` (:func:`visattn.tasks.deblur.deblur_loss`); AdamW (lr 1e-3, weight decay 1e-3, betas 0.9/0.9) with the
gradient norm clipped to 0.01 before every step; cosine schedule to 1e-7 over 300k iterations, no warm-up; 128 x 128
crops, 8 per GPU on 8 GPUs, flips and rotations; stochastic depth 0.1; PyTorch's default initialisation. The global
residual (``output = Conv3x3(x) + I``) is the release's.

Differences from the release, on purpose (its code discards its polar resampling and builds a randomly initialised
convolution inside every forward): here the attention really runs on rings and rays of the image, every layer is
built once in ``__init__``, and the release's partial rings (``(1, W / 4^l)`` windows at levels 2 and 3) are whole
rings. The paper's parameter count could not be read here (``visattn.models.published`` records None).
Height and width must be multiples of 32 (two halvings and the 8 x 8 FFT windows at the last level).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from .._checks import positive_int
from ..nn.radial_strip import DynamicRadialEmbedding, RadialStripAttention
from ..transforms import polar_inverse, polar_resample
from ._pretrained import paper_cfg

__all__ = ["COVERS", "RST_ARGS", "FrequencyFeedForward", "RadialStripBlock", "RadialStripTransformer",
           "SkipFusion"]

COVERS = ("image", "disk")
"""How far the polar grid reaches: the image's corners (half the diagonal) or the largest inscribed disk."""

RST_ARGS: dict[str, dict[str, Any]] = {
    "visattn_rst": dict(dim=48, num_blocks=(6, 6, 12), num_refinement_blocks=4, ffn_expansion_factor=3.0),
}
"""The published size (release's ``options/train/GoPro.yml``)."""


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class FrequencyFeedForward(nn.Module):
    """RST's feed-forward network with a learned filter on the spectrum of every ``patch x patch`` window.

    ``z = Conv1x1(x)``; ``z <- irfft2(rfft2(z_p) * W)`` per window ``z_p``; ``z1, z2 = split(DWConv3x3(z))``;
    ``out = Conv1x1(GELU(z1) * z2)`` (arXiv 2404.00358, the release's ``DFFN``). The FFT runs in float32 (float64
    for float64 inputs). Height and width must be multiples of ``patch``.
    """

    def __init__(self, dim: int, ffn_expansion_factor: float = 3.0, bias: bool = False, patch: int = 8) -> None:
        super().__init__()
        positive_int(dim, "dim")
        if isinstance(ffn_expansion_factor, bool) or not isinstance(ffn_expansion_factor, (int, float)) or not (
                ffn_expansion_factor > 0):
            raise ValueError(f"ffn_expansion_factor must be a positive number, got {ffn_expansion_factor!r}")
        self.patch = positive_int(patch, "patch")
        hidden = int(dim * ffn_expansion_factor)
        positive_int(hidden, "int(dim * ffn_expansion_factor)")
        self.project_in = nn.Conv2d(dim, 2 * hidden, 1, bias=bias)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=bias)
        self.fft = nn.Parameter(torch.ones(2 * hidden, 1, 1, patch, patch // 2 + 1))
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def spectral_filter(self, z: Tensor) -> Tensor:
        """``irfft2(rfft2(z_p) * W)`` on every ``patch x patch`` window ``z_p`` of ``z`` ``(B, 2h, H, W)``."""
        batch, channels, height, width = z.shape
        p = self.patch
        if height % p or width % p:
            raise ValueError(f"the feature map's height and width must be multiples of patch={p}, got shape "
                             f"{tuple(z.shape)}")
        work = _work_dtype(z)
        windows = z.to(work).reshape(batch, channels, height // p, p, width // p, p).permute(0, 1, 2, 4, 3, 5)
        spectrum = torch.fft.rfft2(windows) * self.fft.to(work)
        out = torch.fft.irfft2(spectrum, s=(p, p))
        return out.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, height, width).to(z.dtype)

    def forward(self, x: Tensor) -> Tensor:
        z = self.spectral_filter(self.project_in(x))
        z1, z2 = self.dwconv(z).chunk(2, dim=1)
        return self.project_out(F.gelu(z1) * z2)


class RadialStripBlock(nn.Module):
    """One RST block on ``(B, C, H, W)``: radial strip attention on the polar grid (optional), then the FFN.

    ``x <- x + DropPath(P^-1(RSA(P(LN(x)))))`` when ``attention``; ``x <- x + FFN(LN(x))``. ``P`` resamples onto
    ``grid = (rings, azimuths)`` about the map's centre out to the radius set by ``cover`` (:data:`COVERS`);
    ``strip`` is ``"ring"`` or ``"ray"`` (arXiv 2404.00358).
    """

    def __init__(self, dim: int, grid: Sequence[int], strip: str = "ring", attention: bool = True,
                 ffn_expansion_factor: float = 3.0, bias: bool = False, drop_path: float = 0.0,
                 theta_max: float = math.pi, cover: str = "image", fft_patch: int = 8) -> None:
        super().__init__()
        if cover not in COVERS:
            raise ValueError(f"cover must be one of {COVERS}, got {cover!r}")
        if not isinstance(grid, Sequence) or len(grid) != 2:
            raise TypeError(f"grid must be a pair (rings, azimuths), got {grid!r}")
        self.grid = (positive_int(grid[0], "grid[0] (rings)", 2), positive_int(grid[1], "grid[1] (azimuths)"))
        self.cover = cover
        self.attention = bool(attention)
        if self.attention:
            self.norm1 = LayerNorm2d(dim, eps=1e-5)
            self.attn = RadialStripAttention(dim, self.grid[0], self.grid[1], strip=strip, num_heads=1,
                                             theta_max=theta_max)
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm2d(dim, eps=1e-5)
        self.ffn = FrequencyFeedForward(dim, ffn_expansion_factor, bias, fft_patch)

    @property
    def strip(self) -> str | None:
        return self.attn.mixer.strip if self.attention else None

    def polar_radius(self, size: tuple[int, int]) -> float | None:
        """Rim radius in pixels for a map of ``size``: half the diagonal between pixel centres (``cover="image"``)
        or None, the largest inscribed disk (``"disk"``)."""
        if self.cover == "disk":
            return None
        return max(0.5 * math.hypot(size[0] - 1, size[1] - 1), 0.5)

    def radial_attention(self, x: Tensor) -> Tensor:
        """``P^-1(RSA(P(x)))`` for a normalised map ``x`` ``(B, C, H, W)``."""
        batch, channels = x.shape[:2]
        size = (x.shape[-2], x.shape[-1])
        radius = self.polar_radius(size)
        polar = polar_resample(x, self.grid, None, radius)
        tokens = self.attn.attend(polar.flatten(2).transpose(1, 2))
        polar = tokens.transpose(1, 2).reshape(batch, channels, *self.grid)
        return polar_inverse(polar, size, None, radius)

    def forward(self, x: Tensor) -> Tensor:
        if self.attention:
            x = x + self.drop_path(self.radial_attention(self.norm1(x)))
        return x + self.ffn(self.norm2(x))


class SkipFusion(nn.Module):
    """The release's ``Fuse``: ``y = Conv1x1([a | b])``, ``y = Block(y)``, ``e, d = split(Conv1x1(y))``,
    ``out = e + d`` (``a``, ``b``: ``dim`` channels each; the block has ``2 dim`` channels, ring attention and
    FFN expansion 2.66 as released)."""

    def __init__(self, dim: int, grid: Sequence[int], bias: bool = False, theta_max: float = math.pi,
                 cover: str = "image", fft_patch: int = 8) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.conv_in = nn.Conv2d(2 * dim, 2 * dim, 1)
        self.block = RadialStripBlock(2 * dim, grid, "ring", True, 2.66, bias, 0.0, theta_max, cover, fft_patch)
        self.conv_out = nn.Conv2d(2 * dim, 2 * dim, 1)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        y = self.conv_out(self.block(self.conv_in(torch.cat((a, b), dim=1))))
        e, d = y.split(self.dim, dim=1)
        return e + d


def _resample(dim_in: int, dim_out: int, scale: float) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False),
                         nn.Conv2d(dim_in, dim_out, 3, padding=1, bias=False))


class RadialStripTransformer(nn.Module):
    """RST (arXiv 2404.00358): blurred image ``(B, in_chans, H, W)`` -> restored image ``(B, out_chans, H, W)``.

    Args:
        in_chans, out_chans: image channels (equal, since the input is added to the output).
        dim: width of level 1 (levels 2 and 3 have ``2 dim`` and ``4 dim``).
        num_blocks: blocks of levels 1, 2, 3 (encoder and decoder alike).
        num_refinement_blocks: attention blocks after the decoder at level 1.
        ffn_expansion_factor: FFN width ratio.
        bias: biases of the convolutions inside the blocks (False, as released).
        img_size: the side the polar grids are sized for (level ``l``: ``(s // 2, 2 s)``, ``s = img_size / 2^l``).
        drop_path_rate: stochastic depth, rising linearly over the encoder's blocks (decoder levels reuse them).
        theta_max: ray position-term angle scale.
        cover: see :data:`COVERS`.
        fft_patch: FFN window side.
        zero_init_output: start the output convolution at zero, so that the untrained network is the identity
            (a deviation for short training runs: with PyTorch's default initialisation, the release's and the
            default here, the untrained network adds a large random image to its input: 7.6-17 dB held-out PSNR
            at width 8 over three seeds, against 27.6 dB for the blurred input, and short runs are spent undoing
            it).
    """

    def __init__(self, in_chans: int = 3, out_chans: int = 3, dim: int = 48, num_blocks: Sequence[int] = (6, 6, 12),
                 num_refinement_blocks: int = 4, ffn_expansion_factor: float = 3.0, bias: bool = False,
                 img_size: int = 128, drop_path_rate: float = 0.1, theta_max: float = math.pi,
                 cover: str = "image", fft_patch: int = 8, zero_init_output: bool = False, **kwargs: Any) -> None:
        super().__init__()
        kwargs.pop("num_classes", None)
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        positive_int(in_chans, "in_chans")
        if out_chans != in_chans:
            raise ValueError(f"out_chans must equal in_chans={in_chans} (the output adds the input), got {out_chans!r}")
        positive_int(dim, "dim")
        if not isinstance(num_blocks, Sequence) or len(num_blocks) != 3:
            raise TypeError(f"num_blocks must be three block counts (levels 1-3), got {num_blocks!r}")
        for i, n in enumerate(num_blocks):
            positive_int(n, f"num_blocks[{i}]")
        positive_int(num_refinement_blocks, "num_refinement_blocks", 0)
        self.fft_patch = positive_int(fft_patch, "fft_patch")
        self.multiple = 4 * fft_patch
        positive_int(img_size, "img_size", self.multiple)
        if img_size % self.multiple:
            raise ValueError(f"img_size must be a multiple of 4 * fft_patch = {self.multiple}, got {img_size!r}")
        self.in_chans, self.num_classes, self.img_size = in_chans, 0, img_size
        sides = [img_size >> level for level in range(3)]
        grids = [(max(side // 2, 2), 2 * side) for side in sides]
        self.grids = grids
        total = sum(num_blocks)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        level_rates = [rates[sum(num_blocks[:i]):sum(num_blocks[:i + 1])] for i in range(3)]
        common = dict(ffn_expansion_factor=ffn_expansion_factor, bias=bias, theta_max=theta_max, cover=cover,
                      fft_patch=fft_patch)

        def level(index: int, count: int, attention: bool) -> nn.Sequential:
            width = dim << index
            return nn.Sequential(*[
                RadialStripBlock(width, grids[index], "ring" if i % 2 == 0 else "ray", attention,
                                 drop_path=level_rates[index][min(i, len(level_rates[index]) - 1)], **common)
                for i in range(count)])

        self.embed = DynamicRadialEmbedding(in_chans, dim, bias=bias)
        self.encoder1 = level(0, num_blocks[0], False)
        self.down1 = _resample(dim, 2 * dim, 0.5)
        self.encoder2 = level(1, num_blocks[1], False)
        self.down2 = _resample(2 * dim, 4 * dim, 0.5)
        self.encoder3 = level(2, num_blocks[2], False)
        self.decoder3 = level(2, num_blocks[2], True)
        self.up2 = _resample(4 * dim, 2 * dim, 2.0)
        self.fuse2 = SkipFusion(2 * dim, grids[1], bias, theta_max, cover, fft_patch)
        self.decoder2 = level(1, num_blocks[1], True)
        self.up1 = _resample(2 * dim, dim, 2.0)
        self.fuse1 = SkipFusion(dim, grids[0], bias, theta_max, cover, fft_patch)
        self.decoder1 = level(0, num_blocks[0], True)
        self.refinement = level(0, num_refinement_blocks, True)
        self.output = nn.Conv2d(dim, out_chans, 3, padding=1, bias=bias)
        if zero_init_output:
            nn.init.zeros_(self.output.weight)

    def check_input(self, x: object) -> Tensor:
        """``x`` must be ``(B, in_chans, H, W)`` with ``H`` and ``W`` positive multiples of ``4 fft_patch``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x must be a (B, {self.in_chans}, H, W) tensor, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height < self.multiple or width < self.multiple or height % self.multiple or width % self.multiple:
            raise ValueError(f"x's height and width must be multiples of {self.multiple} (two halvings and "
                             f"{self.fft_patch} x {self.fft_patch} FFT windows at level 3), at least {self.multiple}; "
                             f"got shape {tuple(x.shape)} (pad or crop the image)")
        return x

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        enc1 = self.encoder1(self.embed(x))
        enc2 = self.encoder2(self.down1(enc1))
        dec = self.decoder3(self.encoder3(self.down2(enc2)))
        dec = self.decoder2(self.fuse2(self.up2(dec), enc2))
        dec = self.decoder1(self.fuse1(self.up1(dec), enc1))
        return self.output(self.refinement(dec)) + x


default_cfgs = generate_default_cfgs({name: paper_cfg(
    "2404.00358", num_classes=0, input_size=128, crop_pct=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    first_conv="embed.conv", classifier="",
    paper_name="Spread Your Wings: A Radial Strip Transformer for Image Deblurring",
    origin_url="https://github.com/Calvin11311/MDT") for name in RST_ARGS})


@register_model
def visattn_rst(pretrained: bool = False, **kwargs: Any) -> RadialStripTransformer:
    """RST, the released size: width 48, blocks 6-6-12, 4 refinement blocks, FFN expansion 3, 128 x 128 crops."""
    return build_model_with_cfg(RadialStripTransformer, "visattn_rst", pretrained, feature_cfg=None,
                                **dict(RST_ARGS["visattn_rst"], **kwargs))
