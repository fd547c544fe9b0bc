"""``torch.compile`` of a small network built from the structured attention modules, checked against eager."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from visattn.nn import HaloAttention, NeighborhoodAttention2d, PartitionAttention


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
