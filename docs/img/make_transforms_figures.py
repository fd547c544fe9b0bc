"""Make the pictures of docs/transforms.md: a log-polar, a tanh-polar and a tanh-Cartesian warp of scikit-image's
astronaut and their restores. Run from the repository root: ``python docs/img/make_transforms_figures.py``."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402
from skimage import data  # noqa: E402

from visattn.transforms import (  # noqa: E402
    inverse_log_polar,
    log_polar,
    roi_tanh_polar_restore,
    roi_tanh_polar_warp,
    roi_tanh_restore,
    roi_tanh_warp,
)

OUT = Path(__file__).resolve().parent
SIZE = 256


def astronaut() -> torch.Tensor:
    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].double() / 255
    return torch.nn.functional.interpolate(img, size=(SIZE, SIZE), mode="bilinear", antialias=True).clamp(0, 1)


def show(ax, img: torch.Tensor, title: str) -> None:
    ax.imshow(img[0].permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def save(fig, name: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    buf.seek(0)
    PIL.Image.open(buf).convert("RGB").quantize(colors=128).save(OUT / name, optimize=True)


def log_polar_figure(img: torch.Tensor) -> None:
    fix_px = (75.0, 110.0)  # (row, column) on the face
    fixation = ((2 * fix_px[1] + 1) / SIZE - 1, (2 * fix_px[0] + 1) / SIZE - 1)
    kw = dict(fixation=fixation, r_min_exp=-6.0, radius=0.9)
    foveal = log_polar(img, (128, 128), **kw)
    back = inverse_log_polar(foveal, (SIZE, SIZE), **kw)
    fig, axes = plt.subplots(1, 3, figsize=(8, 2.9))
    show(axes[0], img, "image, fixation +")
    axes[0].plot([fix_px[1]], [fix_px[0]], "+", color="yellow", ms=10, mew=2)
    show(axes[1], foveal, "log_polar: rows = log radius, cols = angle")
    show(axes[2], back, "inverse_log_polar")
    save(fig, "transforms_log_polar.png")


def tanh_figure(img: torch.Tensor) -> None:
    box = torch.tensor([[80.0, 35.0, 145.0, 115.0]], dtype=torch.float64)  # the face, (x1, y1, x2, y2)
    angle = 0.2
    polar = roi_tanh_polar_warp(img, box, (256, 128), angle)
    polar_back = roi_tanh_polar_restore(polar, box, (SIZE, SIZE), angle)
    cart = roi_tanh_warp(img, box, (128, 128), angle)
    cart_back = roi_tanh_restore(cart, box, (SIZE, SIZE), angle)
    fig, axes = plt.subplots(1, 5, figsize=(12, 2.9), gridspec_kw=dict(width_ratios=[1, 0.5, 1, 1, 1]))
    show(axes[0], img, "image, RoI ellipse")
    centre = ((box[0, 0] + box[0, 2]) / 2).item(), ((box[0, 1] + box[0, 3]) / 2).item()
    radii = (box[0, 2:] - box[0, :2]) / math.sqrt(math.pi)
    axes[0].add_patch(Ellipse(centre, 2 * radii[0].item(), 2 * radii[1].item(), angle=math.degrees(angle),
                              fill=False, color="yellow", lw=1.5))
    show(axes[1], polar, "tanh-polar (rows = angle)")
    axes[1].axvline(math.tanh(1.0) * 128, color="yellow", lw=1)
    show(axes[2], polar_back, "roi_tanh_polar_restore")
    show(axes[3], cart, "tanh-Cartesian")
    show(axes[4], cart_back, "roi_tanh_restore")
    save(fig, "transforms_tanh_polar.png")


if __name__ == "__main__":
    image = astronaut()
    log_polar_figure(image)
    tanh_figure(image)
