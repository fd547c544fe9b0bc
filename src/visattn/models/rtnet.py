"""RTNet face parser: RoI tanh-polar warp -> HybridBlock ResNet -> FCN head -> restore, ``visattn_rtnet{50,101}``.

Paper: Lin et al., "RoI Tanh-polar Transformer Network for Face Parsing in the Wild", arXiv 2102.02717; released
code: hhj1897/face_parsing (``ibug/face_parsing/rtnet/rtnet.py``, ``parser.py``) and hhj1897/roi_tanh_warping. The
layer counts and widths below are read from the release::

    W = RoITanhPolar(image, box) (H_t x W_t, rows = angle, columns = radius; keep_aspect_ratio, as released)
    stem: Conv7x7/2 (3 -> 64) + BN + ReLU + MaxPool3x3/2
    stages of HybridBlocks (visattn.nn.feature_maps.HybridBlock; bottleneck width planes / 2, output 4 planes):
        planes 64, 128, 256, 512; blocks 3-4-6-3 (RTNet-50) or 3-4-23-3 (RTNet-101);
        stage 2 stride 2; stages 3 and 4 dilated (stride 1, dilation 2 and 4: output stride 8, the default);
        the first block of every stage and all of stage 1 are polar-only (hybrid=False), the others hybrid
    head (FCN): Conv3x3 (2048 -> 512) + BN + ReLU + Dropout(0.1) + Conv1x1 (512 -> K)
    logits upsampled bilinearly to H_t x W_t (the warped frame; training's cross-entropy is taken there)
    restore: p = softmax(logits); p_0 <- 1 - p_0; P = RoITanhPolarRestore(p); P_0 <- 1 - P_0   (background flip:
        pixels the restore pads with zeros read as background; visattn.transforms.restore_probabilities)

``warp`` chooses the frame: ``"tanh_polar"`` (RTNet), ``"tanh_cartesian"`` (the paper's RoI tanh-Cartesian
ablation, polar-only blocks with zero padding as in that frame) or ``"none"`` (the image resized to the working
size, every block ``hybrid=False``: the same network without the warp). Boxes are ``(x1, y1, x2, y2)`` pixels
(``(B, 4)``); without boxes the whole image is the RoI. The release warps to 513 x 513 with 11 (iBugMask) or 14
classes; the registered models use 512 x 512 and 11 classes. The paper's parameter counts could not be read here
(``visattn.models.published`` records None). ``zero_init_residual`` zeroes each block's last BN scale, as released.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from .._checks import positive_int
from ..nn.feature_maps.hybrid_block import HybridBlock
from ..transforms.tanh_polar import (
    restore_probabilities,
    roi_tanh_polar_restore,
    roi_tanh_polar_warp,
    roi_tanh_restore,
    roi_tanh_warp,
)
from ._pretrained import paper_cfg

__all__ = ["RTNET_ARGS", "WARPS", "FCNHead", "RTNet", "RTNetBackbone"]

WARPS = ("tanh_polar", "tanh_cartesian", "none")
"""Input frames: RTNet's RoI tanh-polar warp, the RoI tanh-Cartesian warp, or no warp (resize only)."""

RTNET_ARGS: dict[str, dict[str, Any]] = {
    "visattn_rtnet50": dict(layers=(3, 4, 6, 3)),
    "visattn_rtnet101": dict(layers=(3, 4, 23, 3)),
}
"""Published sizes (the release's ``rtnet50`` / ``rtnet101``)."""


class RTNetBackbone(nn.Module):
    """RTNet's dilated ResNet of :class:`~visattn.nn.feature_maps.HybridBlock` s; ``forward(x, rois)`` -> the last
    stage's map (``8 base_width`` x 4 channels, output stride 8 when ``dilated``).

    ``hybrid_stages``: whether the non-first blocks of stages 2, 3, 4 are hybrid (the release: all True);
    ``hybrid=False`` turns every block polar-only. ``base_width`` scales the planes (64 in the release).
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), in_chans: int = 3, base_width: int = 64,
                 hybrid_stages: Sequence[bool] = (True, True, True), dilated: bool = True, hybrid: bool = True,
                 zero_init_residual: bool = True) -> None:
        super().__init__()
        if not isinstance(layers, Sequence) or len(layers) != 4:
            raise TypeError(f"layers must be four block counts, got {layers!r}")
        for i, n in enumerate(layers):
            positive_int(n, f"layers[{i}]")
        if not isinstance(hybrid_stages, Sequence) or len(hybrid_stages) != 3:
            raise TypeError(f"hybrid_stages must be three booleans (stages 2-4), got {hybrid_stages!r}")
        positive_int(base_width, "base_width", 2)
        positive_int(in_chans, "in_chans")
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = base_width
        strides = (1, 2, 1, 1) if dilated else (1, 2, 2, 2)
        dilations = (1, 1, 2, 4) if dilated else (1, 1, 1, 1)
        hybrids = (False, *(bool(h) and hybrid for h in hybrid_stages))
        self.stages = nn.ModuleList(
            self._stage(base_width << i, layers[i], strides[i], dilations[i], hybrids[i]) for i in range(4))
        self.num_features = self.inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, HybridBlock):
                    nn.init.zeros_(m.bn3.weight)

    def _stage(self, planes: int, blocks: int, stride: int, dilation: int, hybrid: bool) -> nn.ModuleList:
        downsample = None
        if stride != 1 or self.inplanes != planes * HybridBlock.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * HybridBlock.expansion, 1, stride=stride,
                                                 bias=False), nn.BatchNorm2d(planes * HybridBlock.expansion))
        first_dilation = 1 if dilation <= 2 else dilation // 2
        out = [HybridBlock(self.inplanes, planes, stride, first_dilation, downsample, hybrid=False)]
        self.inplanes = planes * HybridBlock.expansion
        out += [HybridBlock(self.inplanes, planes, 1, dilation, hybrid=hybrid) for _ in range(1, blocks)]
        return nn.ModuleList(out)

    def forward(self, x: Tensor, rois: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for stage in self.stages:
            for block in stage:
                x = block(x, rois)
        return x


class FCNHead(nn.Sequential):
    """The release's FCN head: Conv3x3 (C -> C / 4, no bias) + BN + ReLU + Dropout(0.1) + Conv1x1 (-> classes)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        inter = max(in_channels // 4, 1)
        super().__init__(nn.Conv2d(in_channels, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter), nn.ReLU(),
                         nn.Dropout(dropout), nn.Conv2d(inter, num_classes, 1))


class RTNet(nn.Module):
    """RTNet face parser (arXiv 2102.02717). ``forward(images, rois)`` -> logits in the warped frame
    ``(B, K, H_t, W_t)``; :meth:`predict` -> per-class probabilities on the image grid ``(B, K, H, W)``.

    Args:
        num_classes: classes, channel 0 the background.
        layers: blocks per stage (3-4-6-3 for RTNet-50).
        warp_size: ``(H_t, W_t)`` of the warped frame (angles x radii for the tanh-polar warp).
        warp: one of :data:`WARPS`.
        base_width, hybrid_stages, dilated: see :class:`RTNetBackbone`.
        in_chans: image channels.
    """

    def __init__(self, num_classes: int = 11, layers: Sequence[int] = (3, 4, 6, 3),
                 warp_size: int | Sequence[int] = 512, warp: str = "tanh_polar", base_width: int = 64,
                 hybrid_stages: Sequence[bool] = (True, True, True), dilated: bool = True, in_chans: int = 3,
                 **kwargs: Any) -> None:
        super().__init__()
        kwargs.pop("img_size", None)
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if warp not in WARPS:
            raise ValueError(f"warp must be one of {WARPS}, got {warp!r}")
        positive_int(num_classes, "num_classes", 2)
        size = (warp_size, warp_size) if isinstance(warp_size, int) else tuple(warp_size)
        if len(size) != 2:
            raise TypeError(f"warp_size must be an int or a pair (H_t, W_t), got {warp_size!r}")
        self.warp_size = (positive_int(size[0], "warp_size[0]", 8), positive_int(size[1], "warp_size[1]", 8))
        self.warp, self.num_classes, self.in_chans = warp, num_classes, in_chans
        self.backbone = RTNetBackbone(layers, in_chans, base_width, hybrid_stages, dilated,
                                      hybrid=warp == "tanh_polar")
        self.head = FCNHead(self.backbone.num_features, num_classes)

    def _rois(self, images: Tensor, rois: Tensor | None) -> Tensor:
        """Check ``images`` ``(B, in_chans, H, W)``; the boxes ``(B, 4)`` on its device (default: the whole image)."""
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"images must be a (B, {self.in_chans}, H, W) tensor, got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        if images.shape[-2] < 2 or images.shape[-1] < 2:
            raise ValueError(f"images must be at least 2 x 2 pixels, got shape {tuple(images.shape)}")
        if rois is None:
            height, width = images.shape[-2:]
            return images.new_tensor([0.0, 0.0, width - 1.0, height - 1.0]).expand(images.shape[0], 4)
        if not isinstance(rois, Tensor) or rois.shape != (images.shape[0], 4):
            raise ValueError(f"rois must be a (B, 4) = ({images.shape[0]}, 4) tensor of (x1, y1, x2, y2), got "
                             f"{getattr(rois, 'shape', rois)!r}")
        return rois

    def _warp(self, maps: Tensor, rois: Tensor) -> Tensor:
        if self.warp == "tanh_polar":
            return roi_tanh_polar_warp(maps, rois, self.warp_size, keep_aspect_ratio=True)
        if self.warp == "tanh_cartesian":
            return roi_tanh_warp(maps, rois, self.warp_size)
        return F.interpolate(maps, size=self.warp_size, mode="bilinear", align_corners=False)

    def warp_images(self, images: Tensor, rois: Tensor | None = None) -> Tensor:
        """``images`` in the network's frame ``(B, C, H_t, W_t)``; boxes that miss the image raise ValueError."""
        return self._warp(images, self._rois(images, rois))

    def warp_labels(self, labels: Tensor, rois: Tensor | None = None) -> Tensor:
        """Integer label maps ``(B, H, W)`` in the network's frame ``(B, H_t, W_t)``: one-hot maps warped bilinearly
        with the background flip (what falls outside the image reads background), then the arg-max."""
        if not isinstance(labels, Tensor) or labels.dim() != 3 or labels.is_floating_point():
            raise ValueError(f"labels must be an integer (B, H, W) tensor, got "
                             f"{getattr(labels, 'shape', type(labels).__name__)}")
        if rois is None:
            rois = self._rois(labels[:, None].expand(-1, self.in_chans, -1, -1).float(), None)
        onehot = F.one_hot(labels.long(), self.num_classes).permute(0, 3, 1, 2).float()
        onehot[:, 0] = 1 - onehot[:, 0]
        warped = self._warp(onehot, rois)
        warped[:, 0] = 1 - warped[:, 0]
        return warped.argmax(dim=1)

    def forward_warped(self, warped: Tensor, rois: Tensor) -> Tensor:
        """Logits ``(B, K, H_t, W_t)`` of already warped images."""
        logits = self.head(self.backbone(warped, rois))
        return F.interpolate(logits, size=warped.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, images: Tensor, rois: Tensor | None = None) -> Tensor:
        rois = self._rois(images, rois)
        return self.forward_warped(self.warp_images(images, rois), rois)

    def restore(self, logits: Tensor, rois: Tensor, size: Sequence[int]) -> Tensor:
        """Probabilities on the image grid ``size=(H, W)`` from warped-frame logits, with the background flip."""
        probs = logits.softmax(dim=1)
        if self.warp == "tanh_polar":
            return restore_probabilities(probs, roi_tanh_polar_restore, rois, size, keep_aspect_ratio=True)
        if self.warp == "tanh_cartesian":
            return restore_probabilities(probs, roi_tanh_restore, rois, size)
        return F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)

    def predict(self, images: Tensor, rois: Tensor | None = None) -> Tensor:
        """Per-class probabilities ``(B, K, H, W)`` on the images' grid (take ``argmax(1)`` for labels)."""
        rois = self._rois(images, rois)
        return self.restore(self(images, rois), rois, images.shape[-2:])


default_cfgs = generate_default_cfgs({name: paper_cfg(
    "2102.02717", num_classes=11, input_size=512, crop_pct=1.0, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5), first_conv="backbone.conv1", classifier="head.4",
    paper_name="RoI Tanh-polar Transformer Network for Face Parsing in the Wild",
    origin_url="https://github.com/hhj1897/face_parsing") for name in RTNET_ARGS})


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> RTNet:
    return build_model_with_cfg(RTNet, variant, pretrained, feature_cfg=None, **dict(RTNET_ARGS[variant], **kwargs))


@register_model
def visattn_rtnet50(pretrained: bool = False, **kwargs: Any) -> RTNet:
    """RTNet-50 with the FCN head: HybridBlock stages 3-4-6-3, output stride 8, 11 classes, 512 x 512 warp."""
    return _create("visattn_rtnet50", pretrained, kwargs)


@register_model
def visattn_rtnet101(pretrained: bool = False, **kwargs: Any) -> RTNet:
    """RTNet-101 with the FCN head: HybridBlock stages 3-4-23-3, output stride 8, 11 classes, 512 x 512 warp."""
    return _create("visattn_rtnet101", pretrained, kwargs)
