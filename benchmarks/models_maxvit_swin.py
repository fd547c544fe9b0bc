"""visattn's MaxViT and Swin-V2 against timm's, same weights, ratios measured in one run.

    python benchmarks/models_maxvit_swin.py                       # MaxViT-T 224/384/512, Swin-V2-T window 8/16
    python benchmarks/models_maxvit_swin.py --models maxvit_tiny_tf_224 --rounds 3 --train

For each timm model and its ``visattn_*`` twin holding the same state dict (fp32, eval, ``--batch`` images):

- ``attn``: every attention layer alone, in place: the inputs each of timm's attention layers receives in one
  forward are recorded, then all of timm's layers and all of visattn's run on those same inputs (MaxViT: partition,
  attention and merge of each block / grid layer; Swin-V2: the window attention on the partitioned windows with
  the shift mask). Ratio = timm's time / visattn's time (> 1: visattn faster).
- ``model``: whole-model inference, images/s ratio (visattn / timm).
- ``train`` (``--train``): one forward + backward of the whole model in train mode, same ratio.

Samples are taken in rounds (timm, then visattn, each a burst of ``--calls`` calls) and each ratio is the median of
the per-round ratios, with their range, so that a shared, loaded machine's drift hits both sides alike. The
largest logit difference between the two models is printed as a check that they compute the same function.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import timm
import torch
from torch import nn

import visattn.models  # noqa: F401  (registers visattn_* in timm)
from _common import git_commit, run_header
from visattn.bench import load_average
from visattn.bench.paired import inference_call, paired_ratio, run_all, train_step_call
from visattn.testing import randomize_module

DEFAULT_MODELS = ("maxvit_tiny_tf_224", "maxvit_tiny_tf_384", "maxvit_tiny_tf_512",
                  "swinv2_tiny_window8_256", "swinv2_tiny_window16_256")


def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    """timm's model with seeded random weights (Swin-V2's post-norms start at 0, which would hide the attention
    from the logit check) and visattn's twin holding the same state dict."""
    theirs = randomize_module(timm.create_model(name), seed=0, scale=0.05)
    ours = timm.create_model(f"visattn_{name}").eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def attention_calls(theirs: nn.Module, ours: nn.Module,
                    images: torch.Tensor) -> tuple[list[Callable[[], object]], list[Callable[[], object]]]:
    """Zero-argument calls of each attention layer of timm's model and of visattn's, on the inputs timm's layers
    received in one forward of ``images``."""
    from timm.models.maxxvit import PartitionAttentionCl
    from timm.models.swin_transformer_v2 import WindowAttention

    ours_modules = dict(ours.named_modules())
    recorded: list[tuple[str, tuple, dict]] = []
    hooks = []
    for name, module in theirs.named_modules():
        if isinstance(module, PartitionAttentionCl):
            hooks.append(module.norm1.register_forward_hook(
                lambda _m, _args, out, name=name: recorded.append((name, (out,), {}))))
        elif isinstance(module, WindowAttention):
            hooks.append(module.register_forward_pre_hook(
                lambda _m, args, kwargs, name=name: recorded.append((name, args, kwargs)), with_kwargs=True))
    with torch.no_grad():
        theirs(images)
    for hook in hooks:
        hook.remove()
    theirs_modules = dict(theirs.named_modules())
    timm_calls, visattn_calls = [], []
    for name, args, kwargs in recorded:
        timm_layer, our_layer = theirs_modules[name], ours_modules[name]
        if isinstance(timm_layer, PartitionAttentionCl):
            timm_calls.append(lambda f=timm_layer._partition_attn, a=args: f(*a))
            visattn_calls.append(lambda f=our_layer.attn, a=args: f(*a))
        else:
            timm_calls.append(lambda f=timm_layer, a=args, k=kwargs: f(*a, **k))
            visattn_calls.append(lambda f=our_layer, a=args, k=kwargs: f(*a, **k))
    return timm_calls, visattn_calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="timm names with a visattn_ twin")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved samples per side")
    parser.add_argument("--calls", type=int, default=1, help="calls per burst")
    parser.add_argument("--train", action="store_true", help="also time forward + backward in train mode")
    parser.add_argument("--skip-model", action="store_true", help="attention layers only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    header = run_header(args.threads, args.batch, args.rounds)
    print(f"visattn {git_commit()}, {header}")
    print("| model | measured | ratio timm/visattn time | range | timm ms | visattn ms |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        theirs, ours = _pair(name)
        size = theirs.pretrained_cfg["input_size"][1:]
        images = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            logits = theirs(images)
            diff = (logits - ours(images)).abs().max().item() / logits.abs().max().item()
        case = f"{name} ({size[0]} px, logits differ by {diff:.0e} of their max)"
        timm_calls, visattn_calls = attention_calls(theirs, ours, images)
        attn = paired_ratio(run_all(timm_calls), run_all(visattn_calls), args.rounds, args.calls)
        print(attn.markdown_row(case, f"attn ({len(timm_calls)} layers)"), flush=True)
        del timm_calls, visattn_calls
        if not args.skip_model:
            inference = paired_ratio(inference_call(theirs, images), inference_call(ours, images), args.rounds,
                                     args.calls)
            print(inference.markdown_row(case, "model inference"), flush=True)
        if args.train:
            theirs.train(), ours.train()
            step = paired_ratio(train_step_call(theirs, images), train_step_call(ours, images), args.rounds,
                                args.calls)
            print(step.markdown_row(case, "model train step"), flush=True)
    print(f"load average after {load_average()}")


if __name__ == "__main__":
    main()
