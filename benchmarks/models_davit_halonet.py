"""visattn's DaViT and HaloNets against timm's, same weights, ratios measured in one run.

    python benchmarks/models_davit_halonet.py                  # DaViT-T 224, HaloNet-26t 256
    python benchmarks/models_davit_halonet.py --models davit_tiny sehalonet33ts halonet50ts --rounds 7 --train
    python benchmarks/models_davit_halonet.py --models halonet26t sehalonet33ts halonet50ts --train  # timm's HaloNets

For each timm model and its ``visattn_*`` twin holding the same (randomised) state dict, fp32, eval, ``--batch``
images at the model's published resolution:

- ``attn``: every attention layer alone, in place. The inputs each of timm's attention layers receives in one
  forward are recorded, then all of timm's layers and all of visattn's run on those same inputs. DaViT spatial:
  timm's pad, window partition, ``WindowAttention``, window reverse and crop vs visattn's
  ``SpatialWindowAttention`` on the map (the same span of ``SpatialBlock.forward``); DaViT channel: timm's
  ``ChannelAttention`` vs visattn's; HaloNet: timm's ``HaloAttn`` vs visattn's ``HaloAttention``. Ratio = timm's
  time / visattn's time (> 1: visattn faster).
- ``model``: whole-model inference, the same ratio (= images/s of visattn / images/s of timm). HaloNets also
  with ``fold_bn=False`` (visattn's halo layers, every other op timm's; the default folds each conv's batch norm).
- ``train`` (``--train``): one forward + backward in train mode.

Samples are taken in interleaved rounds (timm, then visattn, each a burst of ``--calls`` calls); each ratio is the
median of the per-round ratios, with their range, so that a shared machine's drift hits both sides alike. The
largest logit difference is printed as a check that both compute the same function.

``--ops`` (HaloNets) prints, without timing, the aten ops of one forward of each model: whether the ops outside the
attention layers (name, argument shapes and strides) are the same sequence, the first difference if not, and the
ops inside the attention layers counted by name (copies, permutes, pads).

``--share`` (HaloNets, one thread) times, by the thread's CPU time (which other jobs on the machine move less than
wall time), whole-model forwards of timm's model, visattn's with ``fold_bn=False`` and visattn's default,
interleaved, and inside them each attention layer (forward hooks): the layers' share of timm's forward, their ratio
as run inside the model, and the models' ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from timm.layers.halo_attn import HaloAttn
from timm.models import davit as timm_davit
from torch import nn

import visattn.models  # noqa: F401  (registers visattn_* in timm)
from visattn.bench import load_average
from visattn.bench.op_log import logged_ops
from visattn.bench.paired import inference_call, paired_ratio, run_all, train_step_call
from visattn.models.halonet import HaloNet
from visattn.nn.halo import HaloAttention
from visattn.testing import randomize_module

DEFAULT_MODELS = ("davit_tiny", "halonet26t")


def _pair(name: str, **kwargs: object) -> tuple[nn.Module, nn.Module]:
    theirs = randomize_module(timm.create_model(name), seed=0, scale=0.1)
    ours = timm.create_model(f"visattn_{name}", **kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def op_list(model: nn.Module, images: torch.Tensor) -> list[tuple[bool, str, str]]:
    """The aten ops of one forward of ``model`` without gradients (after an unlogged one, which fills the folded
    batch-norm cache), marked inside/outside its halo layers."""
    with torch.no_grad():
        model(images)
    return logged_ops(model, images, (HaloAttention, HaloAttn))


def print_op_comparison(name: str, images: torch.Tensor) -> None:
    """Op lists of timm's model and visattn's (unfolded and default) compared outside the attention layers."""
    theirs, unfolded = _pair(name, fold_bn=False)
    folded = _pair(name)[1]
    timm_ops = op_list(theirs, images)
    outside = [op[1:] for op in timm_ops if not op[0]]
    for label, model in (("visattn fold_bn=False", unfolded), ("visattn (default, fold_bn=True)", folded)):
        ops = op_list(model, images)
        ours = [op[1:] for op in ops if not op[0]]
        first = next((i for i, (a, b) in enumerate(zip(outside, ours, strict=False)) if a != b), None)
        verdict = "identical" if ours == outside else f"differ (first at op {first}: timm {outside[first]} / ours "\
            f"{ours[first]})" if first is not None else "differ in length"
        print(f"{name}, {label}: {len(outside)} timm / {len(ours)} visattn ops outside attention: {verdict}; "
              f"outside counts timm {dict(Counter(op[0] for op in outside).most_common(6))} / visattn "
              f"{dict(Counter(op[0] for op in ours).most_common(6))}")
    for label, ops in (("timm", timm_ops), ("visattn", op_list(unfolded, images))):
        print(f"{name}, inside attention, {label}: {dict(Counter(op[1] for op in ops if op[0]).most_common())}")


def _timm_spatial(block: timm_davit.SpatialBlock, x: torch.Tensor) -> torch.Tensor:
    """The window-attention span of timm's ``SpatialBlock.forward`` on the normed map ``x`` ``(B, H, W, C)``."""
    _, h, w, c = x.shape
    wh, ww = block.window_size
    x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
    hp, wp = x.shape[1:3]
    windows = timm_davit.window_partition(x, block.window_size).view(-1, wh * ww, c)
    out = block.attn(windows).view(-1, wh, ww, c)
    return timm_davit.window_reverse(out, block.window_size, hp, wp)[:, :h, :w, :].contiguous()


def attention_calls(theirs: nn.Module, ours: nn.Module,
                    images: torch.Tensor) -> tuple[list[Callable[[], object]], list[Callable[[], object]]]:
    """Zero-argument calls of each attention layer of timm's model and of visattn's, on the inputs timm's layers
    received in one forward of ``images``."""
    recorded: list[tuple[str, torch.Tensor]] = []
    hooks = []
    for name, module in theirs.named_modules():
        if isinstance(module, timm_davit.SpatialBlock):
            hooks.append(module.norm1.register_forward_hook(
                lambda _m, _a, out, block=module, name=name: recorded.append(
                    (name, out.view(out.shape[0], *block._hw, -1)))))
            hooks.append(module.register_forward_pre_hook(
                lambda m, args: setattr(m, "_hw", tuple(args[0].shape[-2:]))))
        elif isinstance(module, (timm_davit.ChannelAttention, HaloAttn)):
            hooks.append(module.register_forward_pre_hook(
                lambda _m, args, name=name: recorded.append((name, args[0]))))
    with torch.no_grad():
        theirs(images)
    for hook in hooks:
        hook.remove()
    theirs_modules, ours_modules = dict(theirs.named_modules()), dict(ours.named_modules())
    timm_calls, visattn_calls = [], []
    for name, x in recorded:
        timm_layer = theirs_modules[name]
        if isinstance(timm_layer, timm_davit.SpatialBlock):
            timm_calls.append(lambda b=timm_layer, x=x: _timm_spatial(b, x))
            visattn_calls.append(lambda f=ours_modules[name].attn, x=x: f(x))
        else:
            timm_calls.append(lambda f=timm_layer, x=x: f(x))
            visattn_calls.append(lambda f=ours_modules[name], x=x: f(x))
    with torch.no_grad():
        for t, o in zip(timm_calls, visattn_calls, strict=True):
            torch.testing.assert_close(o(), t(), atol=1e-4, rtol=1e-4)
    return timm_calls, visattn_calls


def print_share(name: str, images: torch.Tensor, rounds: int) -> None:
    """Attention layers inside whole-model forwards, by thread CPU time (see the module docstring)."""
    theirs, unfolded = _pair(name, fold_bn=False)
    folded = _pair(name)[1]
    models = {"timm": theirs, "visattn fold_bn=False": unfolded, "visattn": folded}
    layer_s: dict[str, list[float]] = {label: [] for label in models}
    model_s: dict[str, list[float]] = {label: [] for label in models}
    for label, model in models.items():
        started: list[float] = []
        for module in model.modules():
            if isinstance(module, (HaloAttention, HaloAttn)):
                module.register_forward_pre_hook(lambda *_, s=started: s.append(time.thread_time()))
                module.register_forward_hook(lambda *_, s=started, out=layer_s[label]: out.append(
                    time.thread_time() - s.pop()))
    with torch.no_grad():
        for model in models.values():
            model(images)
        for times in layer_s.values():
            times.clear()
        for _ in range(rounds):
            for label, model in models.items():
                start = time.thread_time()
                model(images)
                model_s[label].append(time.thread_time() - start)
    layers = len(layer_s["timm"]) // rounds

    def per_forward(label: str) -> list[float]:
        times = layer_s[label]
        return [sum(times[i * layers:(i + 1) * layers]) for i in range(rounds)]

    def ratio(a: list[float], b: list[float]) -> str:
        r = [x / y for x, y in zip(a, b, strict=True)]
        return f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})"

    timm_layers, timm_model = per_forward("timm"), model_s["timm"]
    share = statistics.median(a / m for a, m in zip(timm_layers, timm_model, strict=True))
    print(f"| {name} | {layers} | {share:.0%} | {ratio(timm_layers, per_forward('visattn'))} | "
          f"{ratio(timm_model, model_s['visattn fold_bn=False'])} | {ratio(timm_model, model_s['visattn'])} | "
          f"{statistics.median(timm_model) * 1e3:.0f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="timm names with a visattn_ twin")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved samples per side")
    parser.add_argument("--calls", type=int, default=1, help="calls per burst")
    parser.add_argument("--train", action="store_true", help="also time forward + backward in train mode")
    parser.add_argument("--ops", action="store_true", help="HaloNets: compare aten op lists of one forward, no timing")
    parser.add_argument("--share", action="store_true",
                        help="HaloNets, one thread: attention layers timed inside the model by thread CPU time")
    args = parser.parse_args(argv)
    torch.set_num_threads(1 if args.share else args.threads)
    if args.share:
        print(f"thread CPU time, 1 thread, batch {args.batch}, {args.rounds} rounds, load average before "
              f"{load_average()}")
        print("| model | layers | layers' share of timm's forward | layers in the model, timm / visattn | "
              "model, timm / visattn fold_bn=False | model, timm / visattn | timm ms |")
        print("|---|---|---|---|---|---|---|")
        for name in args.models:
            size = timm.models.get_pretrained_cfg(name).input_size[1:]
            print_share(name, torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(0)),
                        args.rounds)
        print(f"load average after {load_average()}")
        return
    if args.ops:
        for name in args.models:
            size = timm.models.get_pretrained_cfg(name).input_size[1:]
            print_op_comparison(name, torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(0)))
        return
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{args.rounds} rounds, load average before {load_average()}")
    print("| model | measured | ratio timm/visattn time | range | timm ms | visattn ms |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        theirs, ours = _pair(name)
        size = theirs.pretrained_cfg["input_size"][1:]
        images = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = (theirs(images) - ours(images)).abs().max().item()
        case = f"{name} ({size[0]}, max logit diff {diff:.1e})"
        timm_calls, visattn_calls = attention_calls(theirs, ours, images)
        attn = paired_ratio(run_all(timm_calls), run_all(visattn_calls), args.rounds, args.calls)
        print(attn.markdown_row(case, f"attn ({len(timm_calls)} layers)"), flush=True)
        del timm_calls, visattn_calls
        inference = paired_ratio(inference_call(theirs, images), inference_call(ours, images), args.rounds,
                                 args.calls)
        print(inference.markdown_row(case, "model inference"), flush=True)
        if isinstance(ours, HaloNet):
            unfolded = _pair(name, fold_bn=False)[1]
            plain = paired_ratio(inference_call(theirs, images), inference_call(unfolded, images), args.rounds,
                                 args.calls)
            print(plain.markdown_row(case, "model inference, fold_bn=False"), flush=True)
            del unfolded
        if args.train:
            theirs.train(), ours.train()
            step = paired_ratio(train_step_call(theirs, images), train_step_call(ours, images), args.rounds,
                                args.calls)
            print(step.markdown_row(case, "model train step"), flush=True)
    print(f"load average after {load_average()}")


if __name__ == "__main__":
    main()
