"""``torch.compile`` of a small network built from the structured attention modules, checked against eager."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from visattn import Attention
from visattn.nn import HaloAttention, NeighborhoodAttention2d, PartitionAttention
from visattn.ops.native import native_library

KERNELS = native_library("tile_attention") is not None and native_library("tile_attention_backward") is not None


class StructuredNet(nn.Module):
    """Conv stem, neighborhood attention, MaxViT block and padded grid attention (channels-last, residual), then
    HaloNet attention."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.neighborhood = NeighborhoodAttention2d(dim, num_heads=2, kernel_size=3, dilation=2)
        self.block = PartitionAttention(dim, "block", 4, dim_head=8)
        self.grid = PartitionAttention(dim, "grid", 3, dim_head=8, pad=True)
        self.halo = HaloAttention(dim, num_heads=2, block_size=4, halo_size=1, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x).permute(0, 2, 3, 1)
        x = x + self.neighborhood(x)
        x = x + self.block(x)
        x = x + self.grid(x)
        return self.halo(x.permute(0, 3, 1, 2))


@pytest.mark.slow
def test_compiled_network_equals_eager():
    """Compiles the whole forward as one graph (no graph breaks); 50-100 s on 2 busy cores, hence slow."""
    torch.manual_seed(0)
    net = StructuredNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = net(x)
        got = torch.compile(net, fullgraph=True)(x)
    assert got.shape == (2, 16, 4, 4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


class MixerNet(nn.Module):
    """NATTEN-style neighborhood attention, then ``Attention`` with the neighborhood, window, halo and axial mixers
    (residual), over ``(B, H, W, dim)``."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.neighborhood = NeighborhoodAttention2d(dim, num_heads=2, kernel_size=3)
        self.mixers = nn.ModuleList([
            Attention(dim, 2, mixer="neighborhood", kernel_size=3),
            Attention(dim, 2, mixer="window", window_size=4),
            Attention(dim, 2, mixer="halo", block_size=4, halo_size=2),
            Attention(dim, 2, mixer="axial", axis=0),
        ])

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        t = (x + self.neighborhood(x)).reshape(b, h * w, c)
        for mixer in self.mixers:
            t = t + mixer(t)
        return t


def _mixer_net(train: bool) -> tuple[MixerNet, Tensor]:
    torch.manual_seed(0)
    return MixerNet().train(train), torch.randn(2, 16, 16, 32)


@pytest.mark.skipif(not KERNELS, reason="the C++ kernels are not built on this machine")
def test_mixer_network_has_no_graph_break_and_keeps_the_kernel_in_the_graph():
    net, x = _mixer_net(False)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(net)(x)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
    calls = [node for graph in explanation.graphs for node in graph.graph.nodes
             if node.op == "call_function" and str(node.target) == "visattn.progression_attention.default"]
    assert len(calls) == 5  # one per attention module: the fused tile kernel, in the graph


@pytest.mark.skipif(not KERNELS, reason="the C++ kernels are not built on this machine")
def test_compiled_mixer_network_equals_eager_forward_and_training_step():
    """Fullgraph compile of inference, then of a training step: 8-15 s on 2 busy cores."""
    net, x = _mixer_net(False)
    torch._dynamo.reset()
    with torch.no_grad():
        expected = net(x)
        got = torch.compile(net, fullgraph=True)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    net.train()
    torch.compile(net, fullgraph=True)(x).square().mean().backward()
    compiled = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net(x).square().mean().backward()
    for name, got, want in zip([n for n, _ in net.named_parameters()], compiled,
                               [p.grad for p in net.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
@pytest.mark.skipif(not KERNELS, reason="the C++ kernels are not built on this machine")
def test_training_after_dynamic_inference_compiles():
    """Inference compiled at one size, then another (dynamic shapes), then a fresh instance trained compiled: the
    backward operator's outputs once had other strides in the fake kernel than in the real one (``empty_like`` of
    inputs that inductor laid out differently), so inductor's stride assert failed. 8-30 s on 2 cores, hence slow;
    tests/ops/engines/test_kernel_ops.py checks the cause (output strides independent of input strides) fast."""
    net, _ = _mixer_net(False)
    torch._dynamo.reset()
    compiled = torch.compile(net)
    with torch.no_grad():
        for side in (16, 8):
            x = torch.randn(2, side, side, 32)
            torch.testing.assert_close(compiled(x), net(x), rtol=1e-4, atol=1e-5)
    fresh, x = _mixer_net(True)
    torch.compile(fresh)(x).square().mean().backward()
    compiled_grads = [p.grad.clone() for p in fresh.parameters()]
    fresh.zero_grad()
    fresh(x).square().mean().backward()
    for got, want in zip(compiled_grads, [p.grad for p in fresh.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
