"""``visattn lens IMAGE --model NAME_OR_CHECKPOINT``: capture a model's attention on one image, measure it, draw it.

The model is a timm model name built with random weights unless ``--pretrained`` is given (a warning says so;
the weights come from the Hugging Face cache, and when they are not there and the Hub cannot be reached the run
stops at once and says how to provide them), or a checkpoint file saved with ``torch.save(model.state_dict())``
together with ``--model-name`` (and the ``--model-kwargs`` it was built with). The image is resized and cropped as
the model's timm data config says. The run writes into ``--out``: ``attention.png`` (rollout, gradient rollout and
the last layer's attention over the image), ``heads.png`` (layers x heads), ``metrics.png`` (metrics by layer),
``similarity.png`` (layer dissimilarity and phases), ``metrics.json`` and ``report.html`` (everything, one file).

Metrics (``--metrics``, default all that apply): ``entropy`` (mean over heads and queries of the entropy over the
grid keys, CARVE), ``distance`` (mean attention distance in patches), ``sinks`` (largest ``|x|/RMS`` per layer,
massive-activation dims and sink tokens, VAR), ``rollout``, ``grad_rollout`` (gradient rollout of the top class),
``phases`` (layer dissimilarity and max-cut phases, Raptor). Rollouts run over the captured layers only.

That is the report of a ViT-style model, whose layers all attend over its patch grid
(:class:`~visattn.lens.measurements.GridMeasurements`). Models whose layers attend in windows, blocks, halos or
neighborhoods of shrinking feature maps (Swin, MaxViT, DaViT, HaloNet, NAT/DiNAT, L2ViT, InLine-Swin, PATNet) get
:class:`~visattn.lens.map_measurements.MapMeasurements`: entropy, mean attention distance in input pixels and maps
of the attention each position receives, read through each call's token layout; rollouts do not apply there.

The output folder is checked before the model is built; bad values and unreadable files raise ``ValueError``,
which ``visattn`` prints as one line. The arguments are defined in :mod:`visattn.cli_lens`.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import os
import pickle
import socket
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from ..cli_lens import METRICS, parse_model_kwargs
from ..cli_paths import check_output_folder
from .capture import capture
from .map_measurements import MapMeasurements
from .measurements import GridMeasurements, LensOptions, LensOutput
from .metrics import SINK_TAU
from .report import format_value

logger = logging.getLogger("visattn.lens")

__all__ = ["METRICS", "LensOptions", "LensOutput", "build_model", "execute", "layout", "load_image",
           "options_from", "parse_model_kwargs", "prepare", "run"]

HUB_TIMEOUT_S = 3.0
"""Seconds to wait for a connection to the Hugging Face Hub before calling it unreachable."""


def _register_visattn_models() -> None:
    """Import ``visattn.models`` (which registers visattn's models in timm) where that subpackage exists."""
    if importlib.util.find_spec("visattn.models") is not None:
        importlib.import_module("visattn.models")


def build_model(options: LensOptions) -> nn.Module:
    """The model in eval mode: from a checkpoint file (``--model-name`` required) or a timm model name."""
    _register_visattn_models()
    source = Path(options.model)
    if source.is_file():
        if not options.model_name:
            raise ValueError(f"--model {options.model!r} is a checkpoint file: pass --model-name with the timm "
                             "name of the architecture it was saved from")
        model = _create(options.model_name, False, options.model_kwargs)
        state = _load_checkpoint(source)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"checkpoint {options.model!r} does not fit {options.model_name} built with "
                             f"--model-kwargs {options.model_kwargs}: {err}") from err
        return model.eval()
    if options.model_name:
        raise ValueError(f"--model-name is only for checkpoint files, and --model {options.model!r} is not a file")
    model = _create(options.model, options.pretrained, options.model_kwargs)
    if not options.pretrained:
        logger.warning("%s has random weights (seed %d): pass --pretrained to load timm's weights or a checkpoint "
                       "file; attention maps of an untrained model show no learnt structure", options.model,
                       options.seed)
    return model.eval()


def _load_checkpoint(source: Path) -> dict[str, Any]:
    """The state dict saved in ``source``; ``ValueError`` for an empty, truncated or foreign file."""
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except (EOFError, OSError, RuntimeError, pickle.UnpicklingError) as err:
        reason = "the file is empty" if source.stat().st_size == 0 else f"{type(err).__name__}: {err}"
        raise ValueError(f"--model {str(source)!r} could not be read as a checkpoint saved with "
                         f"torch.save(model.state_dict(), path): {reason}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(source)!r} must hold a state_dict (saved with "
                         f"torch.save(model.state_dict(), path)), got {type(state).__name__}")
    return state


def _hub_reachable() -> bool:
    """False when Hugging Face is told to stay offline or its endpoint cannot be reached within a few seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = constants.ENDPOINT.split("://", 1)[-1].split("/", 1)[0]
    name, _, port = host.partition(":")
    try:
        socket.create_connection((name, int(port or 443)), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _weights_cached(name: str) -> bool:
    """Whether the Hugging Face cache already holds the pretrained weights of timm model ``name``."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return False
    repo, _, revision = repo.partition("@")
    for filename in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin",
                     "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
            return True
    return False


def _not_cached_message(name: str) -> str:
    return (f"--pretrained: the weights of {name} are not in the local cache and the Hugging Face Hub cannot be "
            f"reached (offline); download them where there is a network with `python -c \"import timm; "
            f"timm.create_model('{name}', pretrained=True)\"` and copy ~/.cache/huggingface (or set HF_HOME), or "
            f"pass a checkpoint file: --model FILE --model-name {name}")


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    if not timm.is_model(name):
        raise ValueError(f"--model {name!r} is neither a checkpoint file nor a timm model name "
                         f"(see timm.list_models(), e.g. 'vit_tiny_patch16_224')")
    if pretrained and not _weights_cached(name) and not _hub_reachable():
        raise ValueError(_not_cached_message(name))
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        raise ValueError(f"--model-kwargs {kwargs} do not fit {name}: {err}") from err
    except OSError as err:
        if not pretrained:
            raise
        from huggingface_hub.errors import LocalEntryNotFoundError

        if isinstance(err, LocalEntryNotFoundError):
            raise ValueError(_not_cached_message(name)) from err
        raise ValueError(f"--pretrained: the weights of {name} could not be loaded: {err}") from err


def load_image(path: Path) -> Image.Image:
    """The image as RGB, or ``ValueError`` naming the path."""
    if not path.is_file():
        raise ValueError(f"IMAGE {str(path)!r} is not a file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:
        raise ValueError(f"IMAGE {str(path)!r} could not be read as an image: {err}") from err


def prepare(model: nn.Module, image: Image.Image) -> tuple[Tensor, np.ndarray]:
    """The model input ``(1, 3, H, W)`` (timm eval transform) and the same crop as an ``(H, W, 3)`` picture."""
    config = timm.data.resolve_model_data_config(model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        config["input_size"] = (3, *img_size)
    x = timm.data.create_transform(**config, is_training=False)(image).unsqueeze(0)
    mean = torch.tensor(config["mean"]).view(3, 1, 1)
    std = torch.tensor(config["std"]).view(3, 1, 1)
    picture = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return x, picture


def layout(model: nn.Module, x: Tensor) -> tuple[tuple[int, ...], int]:
    """The patch grid and the number of prefix tokens of a ViT-style model for input ``x``."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None:
        raise ValueError(f"{type(model).__name__} has no patch_embed: it is not a ViT-style model whose tokens lie on "
                         "one patch grid")
    dynamic = getattr(patch_embed, "dynamic_feat_size", None)
    grid = dynamic(tuple(x.shape[-2:])) if dynamic is not None else patch_embed.grid_size
    return tuple(int(g) for g in grid), int(getattr(model, "num_prefix_tokens", 0) or 0)


def _vit_layout(model: nn.Module, x: Tensor, probs: dict[int, Tensor]) -> tuple[tuple[int, ...], int] | None:
    """The patch grid and prefix count when every captured layer attends over exactly them, else None."""
    if getattr(model, "patch_embed", None) is None or not hasattr(model.patch_embed, "grid_size"):
        return None
    grid, prefix = layout(model, x)
    tokens = prefix + math.prod(grid)
    if any(p.dim() != 4 or p.shape[-2:] != (tokens, tokens) for p in probs.values()):
        return None
    return grid, prefix


def _chosen_metrics(options: LensOptions) -> tuple[tuple[str, ...], bool]:
    if options.metrics is None:
        return METRICS, False
    unknown = [m for m in options.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"--metrics has unknown names {unknown}; choose from {METRICS}")
    return tuple(dict.fromkeys(options.metrics)), True


def run(options: LensOptions) -> LensOutput:
    """Capture, measure, draw and write the report; returns what was written."""
    chosen, explicit = _chosen_metrics(options)
    check_output_folder(options.out, "--out")
    image = load_image(Path(options.image))
    torch.manual_seed(options.seed)
    model = build_model(options)
    picture_input, picture = prepare(model, image)
    need_hidden = "sinks" in chosen or "phases" in chosen
    need_grad = "grad_rollout" in chosen and hasattr(getattr(model, "patch_embed", None), "grid_size")
    what = ("probs", "hidden") if need_hidden else ("probs",)
    with torch.set_grad_enabled(need_grad), capture(model, options.layers, what, detach=not need_grad) as rec:
        output = model(picture_input)
    layers = rec.layers
    probs = {layer: rec.get("probs", layer).tensor for layer in layers}
    vit = _vit_layout(model, picture_input, probs)
    if vit is not None:
        measured = GridMeasurements(options, *vit, layers, explicit)
    else:
        layouts = {layer: rec.layout(layer) for layer in layers}
        measured = MapMeasurements(options, layers, explicit, layouts, tuple(picture_input.shape[-2:]))
    measured.attention(chosen, probs)
    if need_hidden:
        hidden = {layer: rec.get("hidden", layer).tensor.detach() for layer in layers}
        measured.hidden_states(chosen, hidden)
    if need_grad:
        measured.gradients(output, probs)
    return measured.write(model, picture, {layer: p.detach() for layer, p in probs.items()})


def options_from(args: argparse.Namespace) -> LensOptions:
    """The options of a parsed ``visattn lens`` command line."""
    layers = None if args.layers is None else tuple(i for group in args.layers for i in group)
    return LensOptions(image=args.image, model=args.model, model_name=args.model_name, model_kwargs=args.model_kwargs,
                       pretrained=args.pretrained, layers=layers,
                       metrics=None if args.metrics is None else tuple(args.metrics), out=args.out, query=args.query,
                       sink_tau=SINK_TAU if args.sink_tau is None else args.sink_tau, phase_eps=args.phase_eps,
                       seed=args.seed)


def execute(args: argparse.Namespace, out: Console) -> int:
    """Run ``visattn lens`` from parsed arguments: a table of the metrics by layer, then the files written."""
    result = run(options_from(args))
    if result.per_layer:
        table = Table(title="visattn lens: metrics by layer")
        table.add_column("layer", justify="right")
        for name in result.per_layer:
            table.add_column(name, justify="right", overflow="fold")
        for layer in sorted({layer for values in result.per_layer.values() for layer in values}):
            table.add_row(str(layer), *(format_value(values.get(layer)) for values in result.per_layer.values()))
        out.print(table)
    for name, value in result.summary.items():
        out.print(f"{name}: {value}", highlight=False)
    for path in (*result.pictures, result.json, result.report):
        out.print(f"wrote {path}", highlight=False)
    return 0
