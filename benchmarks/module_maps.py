"""Attention maps of PSA and ULSAM on scikit-image's astronaut, written to docs/img/modules_attention_maps.png.

The modules are randomly initialised (seed 0; no trained weights are involved), so the maps show what each
mechanism computes from a fixed random projection of the pixels, not what a trained network attends to. The
input is the RGB image lifted to 16 channels by a fixed random 3x3 convolution followed by ReLU, at 96 x 96.
PSA: the spatial-only map ``A_sp`` (paper and released parallel form). ULSAM: the softmax map ``A_n`` of each
of its 4 subspaces.

    python benchmarks/module_maps.py [--out docs/img/modules_attention_maps.png]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

from visattn.nn import PolarizedSelfAttention, SubspaceAttention  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "modules_attention_maps.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.manual_seed(0)
    image = torch.tensor(data.astronaut(), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    image = torch.nn.functional.interpolate(image, size=(96, 96), mode="area")
    lift = torch.nn.Conv2d(3, 16, 3, padding=1)
    with torch.no_grad():
        x = torch.relu(lift(image))
        psa_paper = PolarizedSelfAttention(16).eval().spatial_attention(x)[0, 0]
        psa_official = PolarizedSelfAttention(16, variant="official").eval().spatial_attention(x)[0, 0]
        ulsam = SubspaceAttention(16, 4).eval().attention_maps(x)[0]
    panels = [("image", image[0].permute(1, 2, 0)), ("PSA A_sp (paper)", psa_paper),
              ("PSA_p A_sp (released)", psa_official)]
    panels += [(f"ULSAM A_{n + 1} (g=4)", ulsam[n]) for n in range(4)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.0 * len(panels), 2.3), dpi=80)
    for ax, (title, img) in zip(axes, panels, strict=True):
        ax.imshow(img.numpy(), cmap=None if img.dim() == 3 else "magma")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle("Random-init attention maps (seed 0), scikit-image astronaut at 96 x 96", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    Image.open(buffer).convert("RGB").quantize(colors=96).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
