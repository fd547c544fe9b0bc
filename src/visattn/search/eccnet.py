"""eccNET: visual search with eccentricity-dependent pooling and top-down target modulation.

From *Visual Search Asymmetry: Deep Nets and Humans Share Similar Inherent Biases* (Gupta, Zhang, Lee, Kreiman,
NeurIPS 2021, arXiv:2106.02953). A CNN backbone (VGG16 in the paper) sees the display through a window centred
on the current fixation, its pooling layers replaced by :class:`EccentricityPool2d`. The target image goes through
the same network (plain pooling). For each feature layer ``l`` (pool 3-5 in the paper) the target features are a
convolution kernel over the search features:

    M_l = conv(S_l, T_l),   A = sum_l w_l minmax(M_l),   w_l = max(M_l) / sum_k max(M_k),

then three rounds of difference-of-Gaussians smoothing ``A <- A + G_small * A - G_large * A``, a mask to the
visible, not yet inhibited display, and ``argmax`` = the next fixation. Inhibition of return removes the whole grid
cell of a fixated item (replaced by background), or a ``ior_size`` square when no item cells are given. The search
starts at the display centre and ends when a ``ior_size`` window at the fixation touches the target or after
``max_fixations`` fixations. With ``eccentricity=None`` it is IVSN (Zhang et al., *Finding any Waldo*,
Nat. Commun. 2018): the same search without eccentricity-dependent pooling.

Departures from the release, all documented: the argmax runs only over visible, uninhibited pixels (so an
inhibited cell is never fixated again, even on ties), the attention map is resized bilinearly, and the backbone's
own mean/std normalisation replaces Caffe-style mean subtraction (except for Keras weights, see below).

Weights: ``pretrained=True`` (timm's ImageNet weights), or ``checkpoint_path``: a PyTorch state dict (``.pth``,
``.pt``, ``.bin``; optionally under ``"state_dict"``) or a Keras HDF5 weights file (``.h5``/``.hdf5``) in the
layout the release loads (``vgg16_imagenet_filters.h5``: one group per layer named ``block{b}_conv{c}`` holding a
``(kh, kw, in, out)`` kernel and a bias, for Keras' VGG16 architecture), converted by :func:`keras_vgg_state_dict`.
Keras VGG16 weights expect Caffe inputs (BGR, 0-255, mean subtracted): the converter flips the first kernel to RGB
and the input normalisation defaults to ``KERAS_VGG16_MEAN`` / ``KERAS_VGG16_STD``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .eccentricity_pooling import PUBLISHED_DEG2PX, PUBLISHED_SLOPES, EccentricityPool2d, round_number, same_pool2d

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KERAS_VGG16_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)
"""Keras' ``preprocess_input`` for VGG16 (Caffe mode) on RGB images in [0, 1]: subtract these, then ..."""
KERAS_VGG16_STD = (1 / 255, 1 / 255, 1 / 255)
"""... divide by these (x 255): the 0-255 scale the Keras weights were trained on."""
KERAS_VGG16_CONVS = tuple(f"block{b}_conv{c}" for b, n in enumerate((2, 2, 3, 3, 3), start=1)
                          for c in range(1, n + 1))
"""The 13 convolution layers of Keras' VGG16, in order (the groups of the release's weights file)."""


@dataclass(frozen=True)
class EccentricityConfig:
    """Per-pooling-layer constants of eccNET (defaults: the published VGG16 values)."""

    slopes: tuple[float, ...] = PUBLISHED_SLOPES
    deg2px: tuple[int, ...] = PUBLISHED_DEG2PX
    fovea: float = 4.0
    rf_quant: float = 1.0
    rf_min: int = 2
    mode: str = "avg"
    rounding: str = "half_even"

    def __post_init__(self) -> None:
        if len(self.slopes) != len(self.deg2px):
            raise ValueError(f"slopes and deg2px need one entry per pooling layer, got {len(self.slopes)} slopes "
                             f"and {len(self.deg2px)} deg2px")
        round_number(0.0, self.rounding)


@dataclass
class SearchResult:
    """One search: ``fixations`` as (row, col) display pixels, the centre start first."""

    fixations: list[tuple[int, int]]
    found: bool
    fixated_items: list[int] = field(default_factory=list)
    attention_maps: list[torch.Tensor] = field(default_factory=list)

    @property
    def num_fixations(self) -> int:
        """Fixations after the start (the release's count): the number the reaction-time model uses."""
        return len(self.fixations) - 1


class _Stop(Exception):
    pass


class _SwitchPool(nn.Module):
    """A backbone pooling layer that pools eccentrically for the search image and plainly for the target."""

    def __init__(self, eccentric: nn.Module, plain: nn.Module) -> None:
        super().__init__()
        self.eccentric, self.plain = eccentric, plain
        self.use_eccentric = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eccentric(x) if self.use_eccentric else self.plain(x)


class _SamePool(nn.Module):
    def __init__(self, kernel: int, mode: str) -> None:
        super().__init__()
        self.kernel, self.mode = kernel, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return same_pool2d(x, self.kernel, 2, self.mode)


def _stride2_pools(model: nn.Module) -> list[tuple[str, nn.Module]]:
    pools = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            stride = module.stride if isinstance(module.stride, int) else module.stride[0]
            if stride == 2:
                pools.append((name, module))
    return pools


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def vgg_like_backbone(channels: Sequence[int] = (16, 32, 32, 32, 32), in_channels: int = 3) -> nn.Sequential:
    """A small VGG-style stack, one stage per entry of ``channels``: 3 x 3 convolution (padding 1), ReLU, 2 x 2 max
    pooling of stride 2. Its pools are where :class:`EccNet` applies eccentricity pooling, as in VGG16's five
    stages; a CPU-sized stand-in for VGG16 in tests, benchmarks and generated-display experiments."""
    if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
        raise ValueError(f"channels must be a non-empty sequence of ints >= 1, got {channels!r}")
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(in_channels, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        in_channels = out
    return nn.Sequential(*layers)


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with reflect-101 borders (OpenCV's ``GaussianBlur``).

    ``sigma <= 0`` takes OpenCV's default ``0.3 ((size - 1) / 2 - 1) + 0.8``.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd int, got {size}")
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    radius = size // 2
    t = torch.arange(size, dtype=x.dtype, device=x.device) - radius
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(x, kernel.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def difference_of_gaussians(attention: torch.Tensor, small: tuple[int, float] = (3, 1.0),
                            large: tuple[int, float] = (5, 3.0), rounds: int = 3) -> torch.Tensor:
    """eccNET's smoothing: ``A <- A + G_small * A - G_large * A``, ``rounds`` times; ``(size, sigma)`` pairs."""
    for _ in range(rounds):
        attention = attention + gaussian_blur(attention, *small) - gaussian_blur(attention, *large)
    return attention


class EccNet(nn.Module):
    """eccNET (or IVSN with ``eccentricity=None``) on a timm CNN backbone or any module with stride-2 pooling.

    Args:
        backbone: a timm model name (``"vgg16"`` as published) or an ``nn.Module`` whose downsampling is done by
            ``nn.MaxPool2d``/``nn.AvgPool2d`` layers of stride 2 (these are replaced, in module order).
        pretrained: load timm's pretrained weights (needs them cached or downloadable).
        checkpoint_path: user-supplied backbone weights: a PyTorch state dict or Keras HDF5 VGG weights
            (:func:`load_backbone_checkpoint`); every parameter up to the last pooling layer eccNET uses must be in it.
        eccentricity: the per-layer constants; ``None`` gives IVSN: 2x2 max pooling ("same" padding) everywhere.
        feature_layers: 1-based pooling layers whose features drive the top-down modulation (paper: 3, 4, 5).
        layer_weights: optional fixed weights per feature layer instead of each layer's maximum response.
        mean, std: input normalisation; default the timm config's, Keras' Caffe constants for ``.h5`` weights,
            else ImageNet's.
    """

    def __init__(self, backbone: str | nn.Module = "vgg16", *, pretrained: bool = False,
                 checkpoint_path: str | Path | None = None, eccentricity: EccentricityConfig | None = None,
                 feature_layers: Sequence[int] = (3, 4, 5), layer_weights: Sequence[float] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        if isinstance(backbone, str):
            import timm

            model = timm.create_model(backbone, pretrained=pretrained, num_classes=0)
            cfg = getattr(model, "pretrained_cfg", {}) or {}
            classifier = cfg.get("classifier")
            ignore = (classifier + ".",) if isinstance(classifier, str) else ()
            default_mean, default_std = cfg.get("mean"), cfg.get("std")
        elif isinstance(backbone, nn.Module):
            model, ignore, default_mean, default_std = backbone, (), None, None
            if pretrained:
                raise ValueError("pretrained=True needs a timm model name as backbone, got an nn.Module; "
                                 "pass checkpoint_path instead")
        else:
            raise TypeError(f"backbone must be a timm model name or an nn.Module, got {type(backbone).__name__}")
        layers = tuple(feature_layers)
        if not layers or any(not isinstance(i, int) or i < 1 for i in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"feature_layers must be distinct 1-based pooling-layer numbers, got {feature_layers}")
        pools = _stride2_pools(model)
        if len(pools) < max(layers):
            raise ValueError(f"backbone has {len(pools)} stride-2 pooling layers, feature_layers={layers} needs "
                             f"{max(layers)}; eccNET replaces pooling layers, so it needs a pooling backbone (VGG)")
        if eccentricity is not None and len(eccentricity.slopes) < max(layers):
            raise ValueError(f"eccentricity has constants for {len(eccentricity.slopes)} pooling layers, "
                             f"feature_layers={layers} needs {max(layers)}")
        if layer_weights is not None and len(layer_weights) != len(layers):
            raise ValueError(f"layer_weights needs one weight per feature layer ({len(layers)}), got {layer_weights}")
        if checkpoint_path is not None:
            keras = load_backbone_checkpoint(model, checkpoint_path, pools[max(layers) - 1][0], ignore)
            if keras:
                default_mean, default_std = KERAS_VGG16_MEAN, KERAS_VGG16_STD
        mean, std = mean or default_mean, std or default_std
        self.eccentricity = eccentricity
        self.feature_layers = layers
        self.layer_weights = None if layer_weights is None else tuple(float(w) for w in layer_weights)
        self.plain_mode = eccentricity.mode if eccentricity is not None else "max"
        self.rf_min = eccentricity.rf_min if eccentricity is not None else 2
        self.switches: list[_SwitchPool] = []
        for index, (name, _) in enumerate(pools[: max(layers)]):
            if eccentricity is None:
                switch = _SwitchPool(_SamePool(2, "max"), _SamePool(2, "max"))
            else:
                ecc = EccentricityPool2d(rf_min=eccentricity.rf_min, slope=eccentricity.slopes[index],
                                         deg2px=eccentricity.deg2px[index], fovea=eccentricity.fovea,
                                         rf_quant=eccentricity.rf_quant, mode=eccentricity.mode,
                                         rounding=eccentricity.rounding)
                switch = _SwitchPool(ecc, _SamePool(eccentricity.rf_min, eccentricity.mode))
            _set_submodule(model, name, switch)
            self.switches.append(switch)
        self.backbone = model.eval()
        self.register_buffer("mean", torch.tensor(mean or IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _features(self, image: torch.Tensor, *, target: bool) -> list[torch.Tensor]:
        """Feature maps of ``feature_layers`` brought to the deepest layer's resolution.

        Search image: the input of each pooling layer (eccentric pooling inside the network). Target: the output
        of each pooling layer (plain pooling). Shallower maps are pooled down with plain 2x pooling, as the
        release does.
        """
        deepest = max(self.feature_layers)
        captured: dict[int, torch.Tensor] = {}
        handles = []
        for number, switch in enumerate(self.switches, start=1):
            switch.use_eccentric = not target
            if number not in self.feature_layers:
                continue

            def keep(module: nn.Module, args: tuple, output: torch.Tensor | None = None, number: int = number) -> None:
                captured[number] = args[0] if output is None else output
                if number == deepest:
                    raise _Stop

            if target:
                handles.append(switch.register_forward_hook(keep))
            else:
                handles.append(switch.register_forward_pre_hook(keep))
        try:
            self.backbone((image - self.mean) / self.std)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        out = []
        for number in self.feature_layers:
            feats = captured[number]
            for _ in range(deepest - number):
                feats = same_pool2d(feats, self.rf_min, 2, self.plain_mode)
            out.append(feats)
        return out

    @torch.no_grad()
    def target_kernels(self, target: torch.Tensor) -> list[torch.Tensor]:
        """Target features per layer, each ``(1, C, h, w)``: the kernels of the top-down modulation."""
        return self._features(_batched(target, "target"), target=True)

    @torch.no_grad()
    def attention_map(self, view: torch.Tensor, kernels: list[torch.Tensor],
                      dog: tuple[tuple[int, float], tuple[int, float]] = ((3, 1.0), (5, 3.0))) -> torch.Tensor:
        """Top-down attention over ``view`` (the window around the fixation), ``(H, W)`` at the view's size."""
        view = _batched(view, "view")
        maps, peaks = [], []
        for feats, kernel in zip(self._features(view, target=False), kernels, strict=True):
            m = F.conv2d(_pad_same(feats, kernel.shape[-2:]), kernel)[0, 0]
            peaks.append(m.max())
            low, high = m.min(), m.max()
            maps.append((m - low) / (high - low).clamp_min(torch.finfo(m.dtype).tiny))
        weights = torch.stack(peaks) if self.layer_weights is None else maps[0].new_tensor(self.layer_weights)
        weights = weights / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
        attention = sum(w * m for w, m in zip(weights, maps, strict=True))
        attention = difference_of_gaussians(attention[None, None], *dog)
        attention = F.interpolate(attention, size=view.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        return attention - attention.min()

    @torch.no_grad()
    def search(self, image: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor, *,
               item_masks: torch.Tensor | None = None, eye_res: int | None = None, corner_bias: int = 64,
               background: float = 0.0, ior_size: int = 10, max_fixations: int | None = None,
               start: tuple[int, int] | None = None,
               dog: tuple[tuple[int, float], tuple[int, float]] = ((3, 1.0), (5, 3.0)),
               keep_maps: bool = False) -> SearchResult:
        """Search ``image`` (3, H, W) in [0, 1] for ``target`` (3, h, w) and return the scanpath.

        ``target_mask`` (H, W) marks the target; ``item_masks`` (K, H, W) the grid cells (the release's
        ``gt_mask``): fixations land in cells, inhibition of return removes a fixated cell, and the default budget
        is ``K + 1`` fixations. Without cells, inhibition removes an ``ior_size`` square and the budget defaults to
        20. The view around a fixation spans ``eye_res`` pixels each way (default: the display's larger side) plus
        a ``corner_bias`` margin of background; ``background`` is the fill value in [0, 1].
        """
        image, target_mask, item_masks = _check_display(image, target_mask, item_masks)
        h, w = image.shape[-2:]
        eye_res = max(h, w) if eye_res is None else eye_res
        if eye_res < 1 or corner_bias < 0 or ior_size < 1:
            raise ValueError(f"eye_res and ior_size must be >= 1 and corner_bias >= 0, got eye_res={eye_res}, "
                             f"corner_bias={corner_bias}, ior_size={ior_size}")
        if max_fixations is None:
            max_fixations = item_masks.shape[0] + 1 if item_masks is not None else 20
        if max_fixations < 1:
            raise ValueError(f"max_fixations must be >= 1, got {max_fixations}")
        fixation = (h // 2, w // 2) if start is None else _check_fixation(start, h, w)
        kernels = self.target_kernels(target.to(image))
        pad = eye_res + corner_bias
        area = item_masks.any(0) if item_masks is not None else torch.ones_like(target_mask)
        visible = area.clone()
        result = SearchResult(fixations=[fixation], found=False)
        for _ in range(max_fixations):
            if item_masks is None:
                if _recognised(fixation, target_mask, ior_size):
                    result.found = True
                    break
                _inhibit_square(visible, fixation, ior_size)
            shown = torch.where(visible, image, torch.full_like(image, background)) if item_masks is not None \
                else image
            padded = F.pad(shown, (pad, pad, pad, pad), value=background)
            r, c = fixation
            view = padded[:, r: r + 2 * pad, c: c + 2 * pad]
            attention = self.attention_map(view, kernels, dog)
            allowed = F.pad(visible, (pad, pad, pad, pad))[r: r + 2 * pad, c: c + 2 * pad].clone()
            window = torch.zeros_like(allowed)
            window[corner_bias: 2 * pad - corner_bias, corner_bias: 2 * pad - corner_bias] = True
            allowed &= window
            if keep_maps:
                result.attention_maps.append(attention.cpu())
            if not bool(allowed.any()):
                logger.info("search stopped: nothing visible is left to fixate")
                break
            flat = torch.where(allowed, attention, torch.full_like(attention, float("-inf"))).argmax()
            row, col = divmod(int(flat), 2 * pad)
            fixation = (r - pad + row, c - pad + col)
            result.fixations.append(fixation)
            if item_masks is not None:
                cell = int(item_masks[:, fixation[0], fixation[1]].float().argmax())
                result.fixated_items.append(cell)
                visible &= ~item_masks[cell]
                if _recognised(fixation, target_mask, ior_size):
                    result.found = True
                    break
        return result


def keras_vgg_state_dict(path: str | Path, model: nn.Module,
                         layer_names: Sequence[str] = KERAS_VGG16_CONVS) -> dict[str, torch.Tensor]:
    """A state dict for ``model``'s first ``len(layer_names)`` ``nn.Conv2d`` layers from a Keras HDF5 weights file.

    Each named group (top level, or under ``model_weights`` in a whole-model file) holds one 4-D kernel
    ``(kh, kw, in, out)`` and one 1-D bias, at any depth (Keras 2 nests ``name/name/kernel:0``). Kernels become
    ``(out, in, kh, kw)``; the first layer's input channels are reversed (Keras' VGG16 reads BGR). Keras'
    ``padding="same"`` with odd kernels is PyTorch's ``padding=k // 2``, so outputs agree. Needs h5py.
    """
    try:
        import h5py
    except ImportError as error:
        raise ImportError("reading Keras .h5 weights needs h5py (pip install h5py)") from error
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) < len(layer_names):
        raise ValueError(f"model has {len(convs)} Conv2d layers, the Keras layers {list(layer_names)} need "
                         f"{len(layer_names)}")
    state: dict[str, torch.Tensor] = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for index, (keras_name, (name, conv)) in enumerate(zip(layer_names, convs, strict=False)):
            if keras_name not in root:
                raise ValueError(f"{path} has no layer group {keras_name!r}; groups: {sorted(root.keys())[:20]}")
            arrays = _h5_arrays(root[keras_name])
            kernels = [a for a in arrays if a.ndim == 4]
            biases = [a for a in arrays if a.ndim == 1]
            if len(kernels) != 1 or len(biases) > 1:
                raise ValueError(f"layer {keras_name!r} of {path} must hold one 4-D kernel and at most one bias, got "
                                 f"shapes {[a.shape for a in arrays]}")
            weight = torch.from_numpy(kernels[0]).permute(3, 2, 0, 1).contiguous()
            if index == 0:
                weight = weight.flip(1)
            if weight.shape != conv.weight.shape:
                raise ValueError(f"layer {keras_name!r} of {path} has kernel {tuple(kernels[0].shape)} (Keras "
                                 f"layout), {name} expects {tuple(conv.weight.shape)} (PyTorch layout)")
            state[f"{name}.weight"] = weight.to(conv.weight.dtype)
            if conv.bias is not None:
                if not biases or biases[0].shape != (conv.out_channels,):
                    raise ValueError(f"layer {keras_name!r} of {path} needs a bias of {conv.out_channels} values")
                state[f"{name}.bias"] = torch.from_numpy(biases[0]).to(conv.bias.dtype)
    return state


def _h5_arrays(group) -> list:
    """Every dataset under an h5py group, depth first, as NumPy arrays."""
    out = []
    for item in group.values():
        out.extend(_h5_arrays(item) if hasattr(item, "keys") else [item[()]])
    return out


def load_backbone_checkpoint(model: nn.Module, path: str | Path, last_used: str | None = None,
                             ignore_prefixes: Sequence[str] = ()) -> bool:
    """Load user weights into ``model``; returns True for Keras ``.h5``/``.hdf5`` weights (Caffe inputs).

    A PyTorch file is a state dict (or a dict with ``"state_dict"``); keys under ``ignore_prefixes`` (a timm
    model's classifier, removed by ``num_classes=0``) are dropped; other keys ``model`` lacks are an error, and so
    are missing parameters of modules registered before ``last_used`` (the layers the search runs through);
    missing later parameters (a head eccNET never runs) are only logged.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint_path must be an existing file, got {str(path)!r}")
    keras = path.suffix.lower() in (".h5", ".hdf5")
    if keras:
        state = keras_vgg_state_dict(path, model)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"checkpoint {str(path)!r} must hold a state dict, got {type(state).__name__}")
        state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in ignore_prefixes)}
    used: set[str] = set()
    for name, module in model.named_modules():
        if last_used is not None and name == last_used:
            break
        used.update(f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {str(path)!r} has keys the backbone lacks: {unexpected[:10]}")
    needed = sorted(set(missing) & used)
    if needed:
        raise ValueError(f"checkpoint {str(path)!r} lacks weights the search uses: {needed[:10]}")
    if missing:
        logger.info("checkpoint %s: %d parameters after the last used pooling layer kept at init", path, len(missing))
    return keras


def _pad_same(x: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """Zero padding for a stride-1 "same" convolution (the extra row/column of an even kernel goes last)."""
    kh, kw = kernel
    return F.pad(x, ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2))


def _batched(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"{name} must be (3, H, W) or (1, 3, H, W), got shape {tuple(x.shape)}")
    return x


def _check_display(image: torch.Tensor, target_mask: torch.Tensor, item_masks: torch.Tensor | None):
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be a (3, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    h, w = image.shape[-2:]
    if target_mask.shape != (h, w):
        raise ValueError(f"target_mask must be (H, W) = {(h, w)}, got {tuple(target_mask.shape)}")
    target_mask = target_mask.to(device=image.device, dtype=torch.bool)
    if item_masks is not None:
        if item_masks.dim() != 3 or item_masks.shape[1:] != (h, w) or item_masks.shape[0] < 1:
            raise ValueError(f"item_masks must be (K, H, W) with (H, W) = {(h, w)}, got {tuple(item_masks.shape)}")
        item_masks = item_masks.to(device=image.device, dtype=torch.bool)
    return image, target_mask, item_masks


def _check_fixation(fixation: tuple[int, int], h: int, w: int) -> tuple[int, int]:
    r, c = (int(v) for v in fixation)
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"fixation (row, col) must lie inside the {h}x{w} display, got {tuple(fixation)}")
    return r, c


def _recognised(fixation: tuple[int, int], target_mask: torch.Tensor, ior_size: int) -> bool:
    r, c = fixation
    top, left = max(r - ior_size // 2, 0), max(c - ior_size // 2, 0)
    return bool(target_mask[top: r - ior_size // 2 + ior_size, left: c - ior_size // 2 + ior_size].any())


def _inhibit_square(visible: torch.Tensor, fixation: tuple[int, int], ior_size: int) -> None:
    r, c = fixation
    visible[max(r - ior_size // 2, 0): r + ior_size // 2, max(c - ior_size // 2, 0): c + ior_size // 2] = False
