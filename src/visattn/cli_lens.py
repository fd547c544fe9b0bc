"""The arguments of ``visattn lens``, kept apart from :mod:`visattn.lens.command` so that ``visattn --help`` and
``visattn list`` do not import the lens (and with it timm, matplotlib and PIL)."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

METRICS = ("entropy", "distance", "sinks", "rollout", "grad_rollout", "phases")
"""The metrics ``visattn lens`` can compute, in report order."""

DESCRIPTION = "Capture a ViT's attention on one image, measure it, draw it."


def parse_model_kwargs(text: str) -> dict[str, Any]:
    """``"img_size=32,depth=2"`` -> ``{"img_size": 32, "depth": 2}``; values are Python literals or bare words."""
    if not text.strip():
        return {}
    try:
        call = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError as err:
        raise ValueError(f"--model-kwargs must look like key=value,key=value, got {text!r}") from err
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise ValueError(f"--model-kwargs must look like key=value,key=value, got {text!r}")
    kwargs = {}
    for keyword in call.keywords:
        node = keyword.value
        if isinstance(node, ast.Name):
            kwargs[keyword.arg] = node.id
            continue
        try:
            kwargs[keyword.arg] = ast.literal_eval(node)
        except ValueError as err:
            raise ValueError(f"--model-kwargs value of {keyword.arg} must be a Python literal, "
                             f"got {ast.unparse(node)!r}") from err
    return kwargs


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--layers must be integers, got {text!r}") from err


def model_kwargs_argument(text: str) -> dict[str, Any]:
    """:func:`parse_model_kwargs` as an argparse ``type`` (its ``ValueError`` becomes the usage error)."""
    try:
        return parse_model_kwargs(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``lens`` subcommand to the ``visattn`` parser."""
    lens = commands.add_parser("lens", help="capture, measure and draw a ViT's attention on one image",
                               description=DESCRIPTION)
    lens.add_argument("image", type=Path, help="the input picture (PNG, JPEG, ...)")
    lens.add_argument("--model", required=True, help="timm model name, or a checkpoint file (with --model-name)")
    lens.add_argument("--model-name", default=None, help="timm name of the architecture a checkpoint was saved from")
    lens.add_argument("--model-kwargs", type=model_kwargs_argument, default={},
                      help="keyword arguments for timm.create_model, e.g. img_size=32,depth=2")
    lens.add_argument("--pretrained", action="store_true",
                      help="load timm's pretrained weights for a model name (from the Hugging Face cache, or "
                           "downloaded when the Hub can be reached)")
    lens.add_argument("--layers", nargs="+", type=_layers, default=None, metavar="LAYER",
                      help="attention layers to capture (default: all)")
    lens.add_argument("--metrics", nargs="+", default=None, metavar="METRIC",
                      help=f"metrics to compute, from {', '.join(METRICS)} (default: all that apply)")
    lens.add_argument("--out", type=Path, default=Path("visattn-lens"),
                      help="output folder, created if missing (default: visattn-lens)")
    lens.add_argument("--query", type=int, default=None,
                      help="token whose attention is drawn (default: the class token, or the mean over queries)")
    lens.add_argument("--sink-tau", type=float, default=None, help="VAR's sink threshold tau (default: 20)")
    lens.add_argument("--phase-eps", type=float, default=0.1, help="max-cut phases stop at cut <= eps * total")
    lens.add_argument("--seed", type=int, default=0, help="seed of the random weights")
