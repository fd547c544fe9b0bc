"""How much faster can an attention layer of MaxViT, Swin-V2, DaViT or HaloNet get without touching its projections?

    python benchmarks/attention_projection_share.py                 # MaxViT-T, Swin-V2-T w8, DaViT-T, HaloNet-26t
    python benchmarks/attention_projection_share.py --models maxvit_tiny_tf_224 --rounds 7

Issue 15 asks visattn's attention layers of these models to be at least 2x faster than timm's, measured in place.
Each layer is ``proj(attention(qkv(x)))``: the q/k/v and output projections are dense GEMMs of the same size in any
implementation that keeps them, so by Amdahl's law no faster attention core can make the layer faster than

    ``bound = time(timm's layers) / time(their projections alone)``.

For every attention layer of the timm model (the same layers and recorded inputs as
``benchmarks/models_maxvit_swin.py`` and ``benchmarks/models_davit_halonet.py``), this times, in interleaved rounds:
timm's layers, visattn's layers, and the projections alone (each layer's ``qkv``/``q``/``kv`` and ``proj`` modules
on tensors of the shapes they see in the layer). It prints the measured ratio timm/visattn next to the bound.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import timm
import torch
from torch import nn

import visattn.models  # noqa: F401  (registers visattn_* in timm)
from _common import run_header
from models_davit_halonet import attention_calls as davit_halonet_calls
from models_maxvit_swin import attention_calls as maxvit_swin_calls
from visattn.bench import load_average
from visattn.bench.paired import paired_ratio, run_all
from visattn.testing import randomize_module

DEFAULT_MODELS = ("maxvit_tiny_tf_224", "swinv2_tiny_window8_256", "davit_tiny", "halonet26t")
PROJECTIONS = ("qkv", "q", "kv", "proj")


def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    theirs = randomize_module(timm.create_model(name), seed=0, scale=0.05)
    ours = timm.create_model(f"visattn_{name}").eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def projection_calls(model: nn.Module, images: torch.Tensor) -> list[Callable[[], object]]:
    """The projections of each attention module (a module with a ``qkv`` or ``q`` and ``kv`` child: ``qkv``, ``q``,
    ``kv`` and ``proj``, all mapping the layer's channels), called on random tensors shaped as the module's input in
    one forward of ``images``."""
    calls: list[Callable[[], object]] = []
    hooks = []

    def record(module: nn.Module, args: tuple) -> None:
        x = torch.randn_like(args[0])
        for child in PROJECTIONS:
            projection = getattr(module, child, None)
            if isinstance(projection, (nn.Linear, nn.Conv2d)):
                calls.append(lambda p=projection, x=x: p(x))

    for module in model.modules():
        if isinstance(getattr(module, "qkv", None), nn.Linear) or isinstance(getattr(module, "kv", None), nn.Conv2d):
            hooks.append(module.register_forward_pre_hook(record))
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="timm names with a visattn_ twin")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved samples per side")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(run_header(args.threads, args.batch, args.rounds))
    print("| model | layers | timm / visattn (measured) | timm / projections alone (the bound) | timm ms | "
          "projections ms | projections' share of timm's layer time |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        theirs, ours = _pair(name)
        size = theirs.pretrained_cfg["input_size"][1:]
        images = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(0))
        recorder = maxvit_swin_calls if name.startswith(("maxvit", "swinv2")) else davit_halonet_calls
        timm_calls, visattn_calls = recorder(theirs, ours, images)
        projections = projection_calls(theirs, images)
        measured = paired_ratio(run_all(timm_calls), run_all(visattn_calls), args.rounds, 1)
        bound = paired_ratio(run_all(timm_calls), run_all(projections), args.rounds, 1)
        print(f"| {name} ({size[0]} px) | {len(timm_calls)} | {measured.ratio:.2f}x "
              f"({measured.low:.2f}-{measured.high:.2f}) | {bound.ratio:.2f}x ({bound.low:.2f}-{bound.high:.2f}) | "
              f"{bound.theirs_ms:.0f} | {bound.ours_ms:.0f} | {bound.ours_ms / bound.theirs_ms:.0%} |", flush=True)
    print(f"load average after {load_average()}")


if __name__ == "__main__":
    main()
