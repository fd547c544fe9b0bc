"""S2LIC learned image codec: Swin-V2 transforms, a hyperprior and the ACGC slice context, on CompressAI's coders.

Paper: Wang et al., "S2LIC: Learned Image Compression with the SwinV2 Block, Adaptive Channel-wise and Global-inter
Attention Context" (arXiv 2403.14471); layout from the official code (wyq2021/S2LIC, ``code/s2lic.py``):

* analysis ``y = g_a(x)``: feature enhancement (a dense-block network on the RGB image), then four stride-2
  convolutions (5x5, 3x3, 3x3, 3x3) to ``N, N, N, M`` channels with a residual Swin-V2 block group (RSTB: Swin-V2
  blocks, a 3x3 conv and a skip) after each of the first three; depths ``1, 2, 3``, heads ``4, 8, 16``, window 8;
* synthesis ``x_hat = g_s(y_hat)``: the mirror (transposed convolutions, RSTB depths ``3, 2, 1``, heads
  ``16, 8, 4``), a sub-pixel convolution to RGB and the enhancement network run backwards (same weights);
* hyperprior ``z = h_a(y)`` (stride 4, MLIC's HyperAnalysis), ``z_hat`` coded by CompressAI's
  ``EntropyBottleneck``, ``h_s(z_hat)`` gives ``2 M`` channels (hyper scales and means);
* the latent ``y`` in ``num_slices`` (10) slices of ``M / num_slices`` channels; slice ``i`` is coded in two
  checkerboard halves (anchor, then non-anchor), each a Gaussian ``N(mu, sigma)`` from CompressAI's
  ``GaussianConditional`` whose parameters come from ``cat(ACC(c), AGC(c), h_s(z_hat))`` with
  ``c = cat(y_hat_0..y_hat_{i-1})`` (:mod:`visattn.nn.acgc`), and latent residual prediction
  ``y_hat += 0.5 tanh(LRP(cat(hyper_means, c, y_hat_i)))`` on each half.

Paper and code differ on the checkerboard: the paper applies the context "in a parallel checkerboard context", the
released code predicts the non-anchor half's parameters without the decoded anchors (the checkerboard only splits
the residual prediction). ``checkerboard_context=True`` (default) adds the anchors' local context (a 5x5
convolution of the decoded anchor half, He et al., arXiv 2103.15306) to the non-anchor parameters;
``checkerboard_context=False`` is the released code's behaviour.

Rate-distortion objective (:mod:`visattn.tasks.compression`): ``L = R + lambda 255^2 MSE``, ``R`` the bits of
``y`` and ``z`` per pixel. ``compress`` writes real rANS bitstreams (CompressAI's ``BufferedRansEncoder``, one
string per image for ``y``, the bottleneck's strings for ``z``); ``decompress`` reads them back and gives, bit for
bit, the reconstruction ``forward`` gives in eval mode. Images must have sides that are multiples of 64 (the
latent is 1/16 of the image, the hyper-latent 1/64); :func:`pad_to_multiple` pads others.

Parts the official code imports from a private CompressAI fork (``EnhModule``, ``ACCTX``, ``AGCTX``,
``LatentResidualPrediction``, ``EntropyParameters``) are written here from the paper's and MLIC's (arXiv
2211.07273) descriptions: the widths of those parts are ours, so parameter counts are near, not equal, to the
release's. CompressAI is imported when a model is built, not when this module is imported.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from ..nn.acgc import ChannelAttentionContext, DeformableGlobalContext
from ..nn.swin_v2 import ShiftedWindowAttentionV2
from ._pretrained import paper_cfg

__all__ = ["S2LIC", "DOWNSAMPLING", "checkerboard_mask", "pad_to_multiple", "scale_table"]

DOWNSAMPLING = 64
"""Image sides must be multiples of this: ``y`` is 1/16 of the image and ``z`` 1/4 of ``y``."""

SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256.0, 256
"""Log-spaced table of Gaussian scales the coder's CDFs are built for: Ballé's range, with 256 levels instead of
CompressAI's 64. The coder uses the next table scale above each predicted one; with 64 levels (13% steps) that
cost 2.2-2.6% of the y+z strings over the entropy estimate on 256 x 256 pictures with a trained small S2LIC, with
256 levels (3% steps) 0.9% (benchmarks/s2lic_vs_jpeg.py)."""


def scale_table(minimum: float = SCALES_MIN, maximum: float = SCALES_MAX, levels: int = SCALES_LEVELS) -> Tensor:
    """``levels`` scales log-spaced from ``minimum`` to ``maximum``."""
    return torch.exp(torch.linspace(math.log(minimum), math.log(maximum), levels))


def _compressai() -> Any:
    """CompressAI's entropy models and rANS coder, imported on first use (``pip install --no-deps compressai``
    beside the ``codec`` extra)."""
    try:
        from compressai import ans, entropy_models
    except ImportError as err:
        raise ImportError("S2LIC needs CompressAI's entropy models: pip install \"visattn[codec]\" && "
                          "pip install --no-deps compressai (its wheels pin numpy<2; it runs on numpy 2)") from err
    return entropy_models, ans


@functools.cache
def _bottleneck_class() -> type[nn.Module]:
    """CompressAI's ``EntropyBottleneck`` with a forward that permutes by a tuple of ints.

    CompressAI's forward permutes ``x`` by the elements of a tensor, one ``.item()`` host sync per dimension, which
    also fails on the meta device; the computation is otherwise CompressAI's (noise or rounding around the medians,
    the learned CDF's likelihood, its lower bound)."""
    entropy_models, _ = _compressai()

    class EntropyBottleneck(entropy_models.EntropyBottleneck):
        def forward(self, x: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
            training = self.training if training is None else training
            perm = (1, 0, *range(2, x.dim()))
            values = x.permute(*perm).contiguous()
            shape = values.shape
            outputs = self.quantize(values.reshape(shape[0], 1, -1), "noise" if training else "dequantize",
                                    self._get_medians())
            likelihood, _, _ = self._likelihood(outputs)
            if self.use_likelihood_bound:
                likelihood = self.likelihood_lower_bound(likelihood)
            return (outputs.reshape(shape).permute(*perm).contiguous(),
                    likelihood.reshape(shape).permute(*perm).contiguous())

    return EntropyBottleneck


def checkerboard_mask(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """``(1, 1, H, W)`` bool mask of the anchor half of a checkerboard: positions with ``(h + w)`` even."""
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return ((rows + cols) % 2 == 0)[None, None]


def pad_to_multiple(x: Tensor, multiple: int = DOWNSAMPLING) -> Tensor:
    """``x`` ``(B, C, H, W)`` padded at the bottom and right (edge replication) to sides that are multiples of
    ``multiple``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple), mode="replicate")


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def _deconv(cin: int, cout: int, kernel: int = 3, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel, stride=stride, padding=kernel // 2, output_padding=stride - 1)


def _subpel(cin: int, cout: int, factor: int = 2) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout * factor ** 2), nn.PixelShuffle(factor))


class DenseBlock(nn.Module):
    """Five 3x3 convolutions, each fed all earlier outputs (a residual dense block), LeakyReLU between."""

    def __init__(self, cin: int, cout: int, growth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv(cin + i * growth, growth) for i in range(4))
        self.last = _conv(cin + 4 * growth, cout)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for conv in self.convs:
            features.append(self.act(conv(torch.cat(features, dim=1))))
        return self.last(torch.cat(features, dim=1))


class FeatureEnhancement(nn.Module):
    """S2LIC's feature enhancement on RGB images (the "dense block network" of the paper; InvCompress-style).

    ``blocks`` residual steps ``x = x + 0.2 * D_i(x)`` with dense blocks ``D_i`` (3 -> ``channels`` -> 3); the
    synthesis runs the same blocks in reverse order (``reverse=True``), as the official ``enh(x, rev=True)``.
    """

    def __init__(self, channels: int = 64, blocks: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(DenseBlock(3, channels, channels // 2), nn.LeakyReLU(0.2),
                                                  _conv(channels, 3)) for _ in range(blocks))

    def forward(self, x: Tensor, reverse: bool = False) -> Tensor:
        for block in (reversed(self.blocks) if reverse else self.blocks):
            x = x + 0.2 * block(x)
        return x


class SwinV2Block(nn.Module):
    """Swin-V2 block on ``(B, H, W, C)`` with residual post-norm (arXiv 2111.09883):
    ``x = x + DropPath(LN(SW-Attn(x)))``, ``x = x + DropPath(LN(MLP(x)))``; attention is visattn's
    :class:`~visattn.nn.swin_v2.ShiftedWindowAttentionV2` (cyclic shift, padding, cosine attention, log-CPB).

    The two post-norms start with weight and bias 0, as Swin-V2's official initialisation (``_init_respostnorm``,
    also timm's): each block starts as the identity instead of adding unit-variance features of a random network
    to its input, which slowed the codec's early training (docs/tasks.md)."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int,
                 shift_size: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.attn = ShiftedWindowAttentionV2(dim, input_resolution, window_size, shift_size, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        for norm in (self.norm1, self.norm2):
            nn.init.zeros_(norm.weight)
            nn.init.zeros_(norm.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.norm1(self.attn(x)))
        return x + self.drop_path(self.norm2(self.mlp(x)))


class ResidualSwinV2Group(nn.Module):
    """RSTB with Swin-V2 blocks on ``(B, C, H, W)``: ``x + conv3x3(blocks(x))``; blocks alternate shift 0 and
    ``window // 2``."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 drop_path: Sequence[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinV2Block(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                        drop_path=drop_path[i]) for i in range(depth))
        self.conv = _conv(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            y = block(y)
        return x + self.conv(y.permute(0, 3, 1, 2))


def _pointwise_mlp(widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Conv2d(cin, cout, 1))
        if i < len(widths) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class LatentResidualPrediction(nn.Module):
    """``0.5 tanh(f(x))``, ``f`` three 3x3 convolutions with GELU (Minnen & Singh, arXiv 2007.08739)."""

    def __init__(self, cin: int, cout: int, hidden: tuple[int, int]) -> None:
        super().__init__()
        self.net = nn.Sequential(_conv(cin, hidden[0]), nn.GELU(), _conv(hidden[0], hidden[1]), nn.GELU(),
                                 _conv(hidden[1], cout))

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * torch.tanh(self.net(x))


QuantizeStep = Callable[[int, Tensor, Tensor, Tensor], Tensor]
"""``step(slice_index, mask, scales, means)`` -> quantised slice values at ``mask`` (zero elsewhere)."""


class S2LIC(nn.Module):
    """The S2LIC codec (arXiv 2403.14471); see the module docstring for the layout.

    Args:
        N: channels of the transforms and of the hyper-latent ``z`` (192).
        M: channels of the latent ``y`` (320).
        num_slices: channel slices of ``y`` (10); must divide ``M``.
        depths: Swin-V2 blocks per RSTB of the analysis (``1, 2, 3``); the synthesis uses them reversed.
        num_heads: heads per RSTB of the analysis (``4, 8, 16``); reversed in the synthesis.
        window_size: Swin-V2 window (8).
        enhancement_channels: width of the feature-enhancement dense blocks (64).
        drop_path_rate: stochastic depth, linear over the blocks (0.1).
        img_size: image side the shift masks are precomputed for (any multiple of 64 runs).
        checkerboard_context: non-anchor parameters see the decoded anchors (paper, default) or not (released code).
    """

    def __init__(self, N: int = 192, M: int = 320, num_slices: int = 10, depths: Sequence[int] = (1, 2, 3),
                 num_heads: Sequence[int] = (4, 8, 16), window_size: int = 8, enhancement_channels: int = 64,
                 drop_path_rate: float = 0.1, img_size: int = 256, checkerboard_context: bool = True,
                 **kwargs: Any) -> None:
        super().__init__()
        for name in ("pretrained_cfg", "pretrained_cfg_overlay"):
            kwargs.pop(name, None)
        for name, allowed in (("in_chans", 3), ("num_classes", 0)):
            if kwargs.get(name, allowed) != allowed:
                raise ValueError(f"{name} must be {allowed} for the S2LIC image codec, got {kwargs[name]!r}")
            kwargs.pop(name, None)
        if kwargs:
            raise TypeError(f"unknown S2LIC argument(s) {sorted(kwargs)}")
        for name, value in (("N", N), ("M", M), ("num_slices", num_slices), ("window_size", window_size),
                            ("enhancement_channels", enhancement_channels), ("img_size", img_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if M % num_slices:
            raise ValueError(f"num_slices must divide M, got M={M}, num_slices={num_slices}")
        depths, num_heads = tuple(depths), tuple(num_heads)
        if len(depths) != 3 or len(num_heads) != 3 or any(not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"depths and num_heads must hold 3 positive ints, got {depths}, {num_heads}")
        if any(N % h for h in num_heads):
            raise ValueError(f"every num_heads must divide N={N}, got {num_heads}")
        if img_size % DOWNSAMPLING:
            raise ValueError(f"img_size must be a multiple of {DOWNSAMPLING}, got {img_size}")
        entropy_models, _ = _compressai()
        self.config: dict[str, Any] = dict(N=N, M=M, num_slices=num_slices, depths=depths, num_heads=num_heads,
                                           window_size=window_size, enhancement_channels=enhancement_channels,
                                           drop_path_rate=drop_path_rate, img_size=img_size,
                                           checkerboard_context=checkerboard_context)
        """The constructor's arguments (what a checkpoint needs to rebuild the model)."""
        self.N, self.M, self.num_slices = N, M, num_slices
        self.slice_channels = sc = M // num_slices
        self.checkerboard_context = checkerboard_context
        count = 2 * sum(depths)
        rates = [drop_path_rate * i / max(count - 1, 1) for i in range(count)]
        encoder_rates = [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(3)]
        res = [(img_size // 2 ** (i + 1),) * 2 for i in range(3)]

        self.enhancement = FeatureEnhancement(enhancement_channels)
        self.g_a = nn.ModuleList([
            _conv(3, N, 5, 2), ResidualSwinV2Group(N, res[0], depths[0], num_heads[0], window_size, encoder_rates[0]),
            _conv(N, N, 3, 2), ResidualSwinV2Group(N, res[1], depths[1], num_heads[1], window_size, encoder_rates[1]),
            _conv(N, N, 3, 2), ResidualSwinV2Group(N, res[2], depths[2], num_heads[2], window_size, encoder_rates[2]),
            _conv(N, M, 3, 2),
        ])
        decoder_rates = [rates[sum(depths) + sum(depths[i + 1:]):sum(depths) + sum(depths[i:])] for i in range(3)]
        self.g_s = nn.ModuleList([
            _deconv(M, N), ResidualSwinV2Group(N, res[2], depths[2], num_heads[2], window_size, decoder_rates[2]),
            _deconv(N, N), ResidualSwinV2Group(N, res[1], depths[1], num_heads[1], window_size, decoder_rates[1]),
            _deconv(N, N), ResidualSwinV2Group(N, res[0], depths[0], num_heads[0], window_size, decoder_rates[0]),
            _subpel(N, 3),
        ])
        self.h_a = nn.Sequential(_conv(M, N), nn.GELU(), _conv(N, N), nn.GELU(), _conv(N, N, 3, 2), nn.GELU(),
                                 _conv(N, N), nn.GELU(), _conv(N, N, 3, 2))
        self.h_s = nn.Sequential(_conv(N, M), nn.GELU(), _subpel(M, M), nn.GELU(), _conv(M, M * 3 // 2), nn.GELU(),
                                 _subpel(M * 3 // 2, M * 3 // 2), nn.GELU(), _conv(M * 3 // 2, M * 2))
        # CompressAI builds some tensors with legacy constructors that ignore a default-device context (meta):
        # move its modules to the device a plain factory call gives here.
        device = torch.empty(0).device
        self.entropy_bottleneck = _bottleneck_class()(N).to(device)
        self.gaussian_conditional = entropy_models.GaussianConditional(None).to(device)

        self.channel_context = nn.ModuleList(
            ChannelAttentionContext(sc * i, 2 * sc) if i else nn.Identity() for i in range(num_slices))
        self.global_context = nn.ModuleList(
            DeformableGlobalContext(sc * i, sc) if i else nn.Identity() for i in range(num_slices))
        widths = (M, M * 4 // 5, M * 2 // 5)
        context = [2 * M + (3 * sc if i else 0) for i in range(num_slices)]
        self.anchor_parameters = nn.ModuleList(_pointwise_mlp((c, *widths, 2 * sc)) for c in context)
        local = 2 * sc if checkerboard_context else 0
        self.nonanchor_parameters = nn.ModuleList(_pointwise_mlp((c + local, *widths, 2 * sc)) for c in context)
        self.local_context = nn.ModuleList(
            nn.Conv2d(sc, 2 * sc, 5, padding=2) for _ in range(num_slices)) if checkerboard_context else None
        lrp_hidden = (M * 224 // 320, M * 128 // 320)
        self.anchor_lrp = nn.ModuleList(
            LatentResidualPrediction(M + (i + 1) * sc, sc, lrp_hidden) for i in range(num_slices))
        self.nonanchor_lrp = nn.ModuleList(
            LatentResidualPrediction(M + (i + 1) * sc, sc, lrp_hidden) for i in range(num_slices))

    # transforms ---------------------------------------------------------------------------------------------------

    def analysis(self, x: Tensor) -> Tensor:
        """``y = g_a(x)``: ``(B, 3, H, W)`` -> ``(B, M, H / 16, W / 16)``."""
        x = self.enhancement(x)
        for layer in self.g_a:
            x = layer(x)
        return x

    def synthesis(self, y_hat: Tensor) -> Tensor:
        """``x_hat = g_s(y_hat)``: ``(B, M, h, w)`` -> ``(B, 3, 16 h, 16 w)`` (not clamped)."""
        for layer in self.g_s:
            y_hat = layer(y_hat)
        return self.enhancement(y_hat, reverse=True)

    def check_image(self, x: Tensor) -> None:
        """``ValueError`` unless ``x`` is a float ``(B, 3, H, W)`` batch with sides that are multiples of 64."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"x must be a float image batch (B, 3, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
                             f"{'' if not isinstance(x, Tensor) else ' ' + str(x.dtype)}")
        h, w = x.shape[-2:]
        if h < DOWNSAMPLING or w < DOWNSAMPLING or h % DOWNSAMPLING or w % DOWNSAMPLING:
            raise ValueError(f"x's (H, W)=({h}, {w}) must be multiples of {DOWNSAMPLING} (at least {DOWNSAMPLING}): "
                             f"the latent is 1/16 and the hyper-latent 1/64 of the image; pad it with "
                             f"visattn.models.s2lic.pad_to_multiple")

    # entropy model -------------------------------------------------------------------------------------------------

    def _code_slices(self, hyper_params: Tensor, step: QuantizeStep) -> Tensor:
        """Decode order of the latent: for each slice, anchors then non-anchors, each with its Gaussian parameters
        from the ACGC context and the hyperprior; ``step`` quantises (forward), also writes symbols (compress)
        or reads them (decompress). Returns ``y_hat``."""
        hyper_means = hyper_params.chunk(2, dim=1)[1]
        h, w = hyper_params.shape[-2:]
        anchor = checkerboard_mask(h, w, hyper_params.device)
        nonanchor = ~anchor
        decoded: list[Tensor] = []
        for i in range(self.num_slices):
            if i:
                previous = torch.cat(decoded, dim=1)
                context = torch.cat((self.channel_context[i](previous), self.global_context[i](previous),
                                     hyper_params), dim=1)
            else:
                context = hyper_params
            scales, means = self.anchor_parameters[i](context).chunk(2, dim=1)
            y_anchor = step(i, anchor, scales, means)
            y_anchor = y_anchor + anchor * self.anchor_lrp[i](torch.cat((hyper_means, *decoded, y_anchor), dim=1))
            if self.local_context is not None:
                context = torch.cat((context, self.local_context[i](y_anchor * anchor)), dim=1)
            scales, means = self.nonanchor_parameters[i](context).chunk(2, dim=1)
            y_slice = y_anchor + step(i, nonanchor, scales, means)
            y_slice = y_slice + nonanchor * self.nonanchor_lrp[i](torch.cat((hyper_means, *decoded, y_slice), dim=1))
            decoded.append(y_slice)
        return torch.cat(decoded, dim=1)

    def _slice(self, y: Tensor, i: int) -> Tensor:
        return y[:, i * self.slice_channels:(i + 1) * self.slice_channels]

    def forward(self, x: Tensor) -> dict[str, Any]:
        """``{"x_hat": g_s(y_hat), "likelihoods": {"y": ..., "z": ...}}``.

        Training: additive uniform noise for the likelihoods, straight-through rounding for ``y_hat`` and
        ``z_hat`` (as the official code). Eval: rounding around the means, the values ``compress`` codes.
        """
        self.check_image(x)
        y = self.analysis(x)
        z = self.h_a(y)
        _, z_likelihoods = self.entropy_bottleneck(z)
        medians = self.entropy_bottleneck._get_medians()
        z_hat = self._round(z - medians) + medians
        hyper_params = self.h_s(z_hat)
        scales: dict[int, Tensor] = {}
        means: dict[int, Tensor] = {}

        def step(i: int, mask: Tensor, s: Tensor, m: Tensor) -> Tensor:
            scales[i] = torch.where(mask, s, scales[i]) if i in scales else s
            means[i] = torch.where(mask, m, means[i]) if i in means else m
            return torch.where(mask, self._round(self._slice(y, i) - m) + m, y.new_zeros(()))

        y_hat = self._code_slices(hyper_params, step)
        order = range(self.num_slices)
        _, y_likelihoods = self.gaussian_conditional(y, torch.cat([scales[i] for i in order], dim=1),
                                                     torch.cat([means[i] for i in order], dim=1))
        return {"x_hat": self.synthesis(y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def _round(self, x: Tensor) -> Tensor:
        """Straight-through rounding while training, plain rounding in eval (bit-equal to the decoder's)."""
        if self.training:
            return x + (torch.round(x) - x).detach()
        return torch.round(x)

    def aux_loss(self) -> Tensor:
        """The bottleneck's quantile loss (trained alongside, with its own optimiser, as in CompressAI)."""
        return self.entropy_bottleneck.loss()

    def update(self, force: bool = False) -> bool:
        """Build the coders' CDF tables from the current weights (after training, before ``compress``)."""
        updated = self.gaussian_conditional.update_scale_table(scale_table(), force=force)
        return bool(self.entropy_bottleneck.update(force=force)) | bool(updated)

    def _check_updated(self) -> None:
        if self.gaussian_conditional._quantized_cdf.numel() == 0 or self.entropy_bottleneck._quantized_cdf.numel() == 0:
            raise RuntimeError("the entropy coders' CDF tables are empty: call model.update() (or load a state dict "
                               "saved after update) before compress/decompress")

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As ``nn.Module.load_state_dict``, first resizing the coders' CDF buffers to the saved tables."""
        for prefix, module in (("entropy_bottleneck", self.entropy_bottleneck),
                               ("gaussian_conditional", self.gaussian_conditional)):
            for name in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table"):
                key = f"{prefix}.{name}"
                if key in state_dict and hasattr(module, name):
                    buffer = getattr(module, name)
                    module.register_buffer(name, torch.zeros_like(state_dict[key], device=buffer.device,
                                                                  dtype=buffer.dtype))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # coding --------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def compress(self, x: Tensor) -> dict[str, Any]:
        """Entropy-code ``x`` (sides multiples of 64): ``{"strings": [y_strings, z_strings], "shape": (h, w)}``,
        one bytes string per image in each list, ``shape`` the hyper-latent's size. Needs :meth:`update`."""
        self.check_image(x)
        self._check_updated()
        _, ans = _compressai()
        y = self.analysis(x)
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        symbols: list[list[int]] = [[] for _ in range(x.shape[0])]
        indexes: list[list[int]] = [[] for _ in range(x.shape[0])]
        coder = self.gaussian_conditional

        def step(i: int, mask: Tensor, s: Tensor, m: Tensor) -> Tensor:
            q = torch.round(self._slice(y, i) - m)
            index = coder.build_indexes(s)
            where = mask[0].expand_as(q[0])
            for b in range(q.shape[0]):
                symbols[b].extend(q[b][where].int().tolist())
                indexes[b].extend(index[b][where].tolist())
            return torch.where(mask, q + m, q.new_zeros(()))

        self._code_slices(self.h_s(z_hat), step)
        cdf, lengths, offsets = self._tables()
        y_strings = []
        for b in range(x.shape[0]):
            encoder = ans.BufferedRansEncoder()
            encoder.encode_with_indexes(symbols[b], indexes[b], cdf, lengths, offsets)
            y_strings.append(encoder.flush())
        return {"strings": [y_strings, z_strings], "shape": tuple(z.shape[-2:])}

    def _tables(self) -> tuple[list[list[int]], list[int], list[int]]:
        coder = self.gaussian_conditional
        return (coder._quantized_cdf.tolist(), coder._cdf_length.reshape(-1).int().tolist(),
                coder._offset.reshape(-1).int().tolist())

    @torch.no_grad()
    def decompress(self, strings: Sequence[Sequence[bytes]], shape: Sequence[int]) -> dict[str, Tensor]:
        """Decode ``compress``'s ``strings`` (``[y_strings, z_strings]``) with hyper-latent size ``shape``:
        ``{"x_hat": ...}``, equal to ``forward``'s eval reconstruction."""
        if not isinstance(strings, Sequence) or len(strings) != 2 or len(strings[0]) != len(strings[1]):
            raise ValueError("strings must be [y_strings, z_strings], one bytes string per image in each")
        if len(shape) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"shape must be the hyper-latent's (h, w), two positive ints, got {shape!r}")
        self._check_updated()
        _, ans = _compressai()
        y_strings, z_strings = strings
        z_hat = self.entropy_bottleneck.decompress(list(z_strings), tuple(shape))
        decoders = []
        for string in y_strings:
            decoder = ans.RansDecoder()
            decoder.set_stream(string)
            decoders.append(decoder)
        cdf, lengths, offsets = self._tables()
        coder = self.gaussian_conditional

        def step(i: int, mask: Tensor, s: Tensor, m: Tensor) -> Tensor:
            index = coder.build_indexes(s)
            where = mask[0].expand_as(index[0])
            q = torch.zeros_like(m)
            for b, decoder in enumerate(decoders):
                values = decoder.decode_stream(index[b][where].tolist(), cdf, lengths, offsets)
                q[b][where] = torch.tensor(values, dtype=m.dtype, device=m.device)
            return torch.where(mask, q + m, q.new_zeros(()))

        y_hat = self._code_slices(self.h_s(z_hat), step)
        return {"x_hat": self.synthesis(y_hat)}


S2LIC_ARGS: dict[str, dict[str, Any]] = {"visattn_s2lic": dict(N=192, M=320, num_slices=10)}
"""The published configuration (the official code's defaults; the paper trains one model per lambda)."""


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> S2LIC:
    return build_model_with_cfg(S2LIC, variant, pretrained, **dict(S2LIC_ARGS[variant], **kwargs))


default_cfgs = generate_default_cfgs({
    "visattn_s2lic": paper_cfg("2403.14471", input_size=256, num_classes=0, mean=(0.0, 0.0, 0.0),
                               std=(1.0, 1.0, 1.0), crop_pct=1.0,
                               license="the official release (wyq2021/S2LIC) ships no weights"),
})


@register_model
def visattn_s2lic(pretrained: bool = False, **kwargs: Any) -> S2LIC:
    """S2LIC (arXiv 2403.14471), N=192, M=320, 10 slices: an image codec; ``forward`` returns ``x_hat`` and
    likelihoods, ``compress``/``decompress`` code bitstreams (call ``update()`` after training)."""
    return _create("visattn_s2lic", pretrained, **kwargs)
