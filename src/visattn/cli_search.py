"""``visattn search``: run eccNET, IVSN or the chance baseline on a picture or a generated asymmetry display and
draw the scanpath. Heavy modules (torch, timm, matplotlib, PIL) are imported only when the command runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .cli_paths import check_output_file

DESCRIPTION = ("Search a picture (with --target) or a generated display (--display EXPERIMENT:CONDITION:SET_SIZE) "
               "with eccNET, IVSN or chance, draw the scanpath to a PNG and print the metrics.")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``search`` subcommand to the ``visattn`` parser."""
    search = commands.add_parser("search", help="visual search with eccNET/IVSN/chance; draw the scanpath",
                                 description=DESCRIPTION)
    search.add_argument("image", type=Path, nargs="?", default=None, help="the search picture (PNG, JPEG, ...)")
    search.add_argument("--target", type=Path, default=None, help="the target picture (with IMAGE)")
    search.add_argument("--target-box", default=None, metavar="TOP,LEFT,BOTTOM,RIGHT",
                        help="where the target is in IMAGE (pixels); without it the search runs the whole budget")
    search.add_argument("--display", default=None, metavar="EXPERIMENT:CONDITION:SET_SIZE",
                        help="a generated display, e.g. intersection:cross:6 (experiments: curvature, "
                             "lighting_direction, intersection, t_vs_l, orientation_homogeneous, "
                             "orientation_heterogeneous)")
    search.add_argument("--seed", type=int, default=0, help="seed of the generated display")
    search.add_argument("--model", choices=("eccnet", "ivsn", "chance"), default="eccnet")
    search.add_argument("--backbone", default="vgg16", help="timm CNN with pooling layers (default vgg16)")
    search.add_argument("--pretrained", action="store_true", help="load timm's pretrained backbone weights")
    search.add_argument("--checkpoint", type=Path, default=None, help="a backbone state-dict file")
    search.add_argument("--model-kwargs", default="", help="extra timm.create_model arguments, key=value,...")
    search.add_argument("--scale", type=float, default=1.0, help="resize the display by this factor first")
    search.add_argument("--max-fixations", type=int, default=None, help="fixation budget (default cells + 1)")
    search.add_argument("--corner-bias", type=int, default=64, help="background margin around the view (px)")
    search.add_argument("--output", type=Path, default=Path("scanpath.png"), help="the scanpath PNG to write")
    search.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON here")


def _check_args(args: argparse.Namespace) -> None:
    if (args.image is None) == (args.display is None):
        raise ValueError("give either IMAGE (with --target) or --display EXPERIMENT:CONDITION:SET_SIZE, not both")
    if args.image is not None:
        if args.target is None:
            raise ValueError("IMAGE needs --target, the picture of what to search for")
        for path, name in ((args.image, "image"), (args.target, "--target")):
            if not path.is_file():
                raise ValueError(f"{name} {str(path)!r} is not a file")
        if args.model == "chance":
            raise ValueError("--model chance needs a generated --display (it picks among the display's items)")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise ValueError(f"--checkpoint {str(args.checkpoint)!r} is not a file")
    if not 0 < args.scale <= 4:
        raise ValueError(f"--scale must be in (0, 4], got {args.scale}")
    check_output_file(args.output, "--output", "scanpath.png")
    if args.json is not None:
        check_output_file(args.json, "--json", "search.json")


def _parse_display(text: str) -> tuple[str, str, int]:
    parts = text.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        raise ValueError(f"--display must look like EXPERIMENT:CONDITION:SET_SIZE, got {text!r}")
    return parts[0], parts[1], int(parts[2])


def _parse_box(text: str) -> tuple[int, int, int, int]:
    try:
        top, left, bottom, right = (int(v) for v in text.split(","))
    except ValueError as err:
        raise ValueError(f"--target-box must be TOP,LEFT,BOTTOM,RIGHT integers, got {text!r}") from err
    if bottom <= top or right <= left:
        raise ValueError(f"--target-box must have BOTTOM > TOP and RIGHT > LEFT, got {text!r}")
    return top, left, bottom, right


def _load_picture(path: Path) -> Any:
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as picture:
        array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _scaled(x: Any, scale: float, nearest: bool = False) -> Any:
    import torch.nn.functional as F

    if scale == 1.0:
        return x
    size = [max(1, round(s * scale)) for s in x.shape[-2:]]
    if nearest:
        batched = x.reshape(1, -1, *x.shape[-2:]).float()
        return (F.interpolate(batched, size=size, mode="nearest") > 0.5).reshape(*x.shape[:-2], *size)
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)


def execute(args: argparse.Namespace, out: Any) -> int:
    """Run ``visattn search``; bad arguments raise ``ValueError`` before any model is built."""
    from .cli_lens import parse_model_kwargs

    _check_args(args)
    kwargs = parse_model_kwargs(args.model_kwargs)
    display = _parse_display(args.display) if args.display else None
    box = _parse_box(args.target_box) if args.target_box else None

    import torch

    from .search.asymmetry import fixations_per_search, generate_display, reaction_time

    item_masks, background, set_size = None, 0.0, None
    if display is not None:
        generated = generate_display(*display, seed=args.seed)
        image, target, target_mask = generated.image, generated.target, generated.target_mask
        item_masks, background, set_size = generated.item_masks, generated.background, generated.set_size
        target_item, occupied = generated.target_item, generated.occupied
    else:
        image, target = _load_picture(args.image), _load_picture(args.target)
        target_mask = torch.zeros(image.shape[-2:], dtype=torch.bool)
        if box is not None:
            top, left, bottom, right = box
            if bottom > image.shape[1] or right > image.shape[2]:
                raise ValueError(f"--target-box {args.target_box} lies outside the {image.shape[1]}x"
                                 f"{image.shape[2]} image")
            target_mask[top:bottom, left:right] = True
    image, target = _scaled(image, args.scale), _scaled(target, args.scale)
    target_mask = _scaled(target_mask, args.scale, nearest=True)
    if item_masks is not None:
        item_masks = _scaled(item_masks, args.scale, nearest=True)
    if args.model == "chance":
        from .search.chance import chance_search

        result = chance_search(item_masks, target_item, candidates=occupied, max_fixations=args.max_fixations,
                               generator=torch.Generator().manual_seed(args.seed))
    else:
        from .search.eccnet import EccentricityConfig, EccNet

        backbone: Any = args.backbone
        if kwargs:
            import timm

            backbone = timm.create_model(args.backbone, pretrained=args.pretrained, num_classes=0, **kwargs)
        model = EccNet(backbone, pretrained=args.pretrained and not kwargs, checkpoint_path=args.checkpoint,
                       eccentricity=EccentricityConfig() if args.model == "eccnet" else None)
        result = model.search(image, target, target_mask, item_masks=item_masks, background=background,
                              max_fixations=args.max_fixations, corner_bias=args.corner_bias)
    n = result.num_fixations if set_size is None else fixations_per_search(result.found, result.num_fixations,
                                                                           set_size)
    metrics = {"model": args.model, "found": result.found, "fixations": result.num_fixations,
               "rt_ms": float(reaction_time(n)), "scanpath": [list(f) for f in result.fixations]}
    if display is not None:
        metrics.update(experiment=display[0], condition=display[1], set_size=set_size, seed=args.seed)
    _draw(image, result.fixations, target_mask, args.output, f"{args.model}: "
          f"{'found' if result.found else 'not found'} after {result.num_fixations} fixations")
    if args.json is not None:
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
    for key, value in metrics.items():
        if key != "scanpath":
            out.print(f"{key}: {value}", highlight=False)
    out.print("scanpath (row, col): " + " -> ".join(f"({r}, {c})" for r, c in result.fixations), highlight=False)
    out.print(f"wrote {args.output}", highlight=False)
    return 0


def _draw(image: Any, fixations: list[tuple[int, int]], target_mask: Any, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(image.permute(1, 2, 0).cpu().numpy(), vmin=0, vmax=1)
    if bool(target_mask.any()):
        ax.contour(target_mask.cpu().numpy().astype(float), levels=[0.5], colors="lime", linewidths=1.5)
    rows = [r for r, _ in fixations]
    cols = [c for _, c in fixations]
    ax.plot(cols, rows, "-", color="yellow", linewidth=1.5)
    ax.scatter(cols, rows, s=120, facecolors="none", edgecolors="red", linewidths=2)
    for i, (r, c) in enumerate(fixations):
        ax.annotate(str(i), (c, r), color="white", ha="center", va="center", fontsize=8, weight="bold")
    ax.set_title(title)
    ax.set_axis_off()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
