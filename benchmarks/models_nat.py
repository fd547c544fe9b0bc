"""NAT-Tiny and DiNAT-Tiny on visattn against the same networks on NATTEN's CPU path, ratios measured in one run.

The NATTEN network is visattn's model with every attention layer's core swapped for ``natten.functional.na2d``
(same ``qkv`` / ``proj`` weights, same padding rule, NATTEN's ``(B, H, W, heads, d)`` layout). Current NATTEN has
no relative position bias, so its network skips ``rpb``: it does strictly less work than the published model, and
the ratio is conservative. Forward (inference mode) and forward + backward (a training step without optimiser;
NATTEN 0.21's CPU path is FlexAttention, which has no backward on the CPU, so that line reports visattn alone),
fp32, images/s at ``--batch`` (8 by default), timed in interleaved bursts (``visattn.bench.interleaved_bursts``),
median of ``--repeats``.

Run: ``python benchmarks/models_nat.py`` (``--threads 2`` by default; ``--img-size 224``).
"""

from __future__ import annotations

import argparse
import copy
import statistics

import timm
import torch
from torch import Tensor, nn

import visattn.models  # noqa: F401  (registers visattn_* in timm)
from _common import set_threads
from visattn.bench import interleaved_bursts
from visattn.models.nat_attention import NeighborhoodAttention2dRPB


class NattenCore(nn.Module):
    """The layer of :class:`NeighborhoodAttention2dRPB` with its attention on ``natten.functional.na2d`` (no rpb)."""

    def __init__(self, source: NeighborhoodAttention2dRPB) -> None:
        super().__init__()
        self.source = source

    def forward(self, x: Tensor) -> Tensor:
        from natten.functional import na2d

        src = self.source
        height, width = x.shape[1], x.shape[2]
        window = src.kernel_size * src.dilation
        pad_h, pad_w = max(0, window - height), max(0, window - width)
        if pad_h or pad_w:
            x = nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        batch, hp, wp, _ = x.shape
        q, k, v = src.qkv(x).reshape(batch, hp, wp, 3, src.num_heads, src.head_dim).unbind(3)
        out = na2d(q, k, v, kernel_size=src.kernel_size, dilation=src.dilation, scale=src.scale)
        out = src.proj(out.reshape(batch, hp, wp, src.dim))
        return out[:, :height, :width]


def natten_network(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose neighborhood attention runs on NATTEN (same weights)."""
    net = copy.deepcopy(model)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, NeighborhoodAttention2dRPB):
                setattr(module, name, NattenCore(child))
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["visattn_nat_tiny", "visattn_dinat_tiny"])
    args = parser.parse_args()
    set_threads(args.threads)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    print(f"batch {args.batch}, {args.img_size} px, fp32, {args.threads} threads, median of {args.repeats}; "
          "NATTEN runs without rpb (it has none), visattn with it")
    for name in args.models:
        torch.manual_seed(0)
        ours = timm.create_model(name, drop_path_rate=0.0).eval()
        theirs = natten_network(ours)

        def forward(net: nn.Module = ours) -> None:
            with torch.inference_mode():
                net(x)

        def forward_natten(net: nn.Module = theirs) -> None:
            with torch.inference_mode():
                net(x)

        def step(net: nn.Module = ours) -> None:
            net.zero_grad(set_to_none=True)
            net(x).sum().backward()

        def step_natten(net: nn.Module = theirs) -> None:
            step(net)

        for label, fns in (("forward", (forward, forward_natten)),
                           ("forward+backward", (step, step_natten))):
            try:
                fns[1]()
            except (NotImplementedError, RuntimeError) as error:
                fns[0]()
                (samples,) = interleaved_bursts([fns[0]], [1], args.repeats, lambda: None)
                print(f"{name:20s} {label:17s} visattn {args.batch / statistics.median(samples) * 1e3:7.2f} img/s   "
                      f"NATTEN cannot: {type(error).__name__}: {str(error).splitlines()[0]}")
                continue
            fns[0]()
            samples = interleaved_bursts(list(fns), [1, 1], args.repeats, lambda: None)
            ms_ours, ms_natten = (statistics.median(s) for s in samples)
            print(f"{name:20s} {label:17s} visattn {args.batch / ms_ours * 1e3:7.2f} img/s   NATTEN "
                  f"{args.batch / ms_natten * 1e3:7.2f} img/s   ratio {ms_natten / ms_ours:6.2f}x")

if __name__ == "__main__":
    main()
