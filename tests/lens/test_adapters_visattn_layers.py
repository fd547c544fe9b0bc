"""The lens on visattn's attention layers (NAT/DiNAT, HaloNet, DaViT, PATNet): capture leaves outputs unchanged,
records row-stochastic attention with token layouts, and NAT's recorded attention equals its written-out formula."""

import math

import pytest
import torch
from torch import nn

from visattn.lens import attention_layers, capture
from visattn.models.nat_attention import NeighborhoodAttention2dRPB
from visattn.nn.davit import ChannelAttention, SpatialWindowAttention
from visattn.nn.feature_maps.pat_attention import RelativePositionMHSA
from visattn.nn.halo import HaloAttention

from .test_layout import halo_like


class Block(nn.Module):
    """A parent block around one layer, as in the models (the lens reads the block input as ``hidden``)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


def captured(layer: nn.Module, x: torch.Tensor):
    model = nn.Sequential(Block(layer)).double().eval()
    with torch.no_grad():
        expected = model(x)
        with capture(model, None, ("probs", "hidden")) as rec:
            out = model(x)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    probs = rec.get("probs", 0).tensor
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones_like(probs[..., 0]))
    return rec, probs


def naive_nat_probs(module: NeighborhoodAttention2dRPB, x: torch.Tensor) -> torch.Tensor:
    """``softmax_j(q_i . k_j * scale + rpb[h, dy + k - 1, dx + k - 1])`` over each query's NATTEN neighborhood."""
    b, h, w, c = x.shape
    k, d, heads = module.kernel_size, module.dilation, module.num_heads
    q, key, _ = module.qkv(x).reshape(b, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)

    def window(i: int, length: int) -> list[int]:
        group = [p for p in range(length) if p % d == i % d]
        index = group.index(i)
        start = min(max(index - k // 2, 0), len(group) - k)
        return group[start:start + k]

    out = torch.zeros(b, heads, h * w, h * w, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            keys = [(y, xx) for y in window(i, h) for xx in window(j, w)]
            index = torch.tensor([y * w + xx for y, xx in keys])
            bias = torch.stack([module.rpb[:, (y - i) // d + k - 1, (xx - j) // d + k - 1] for y, xx in keys], -1)
            logits = (q[:, :, i * w + j, None] * key[:, :, index]).sum(-1) * module.scale + bias
            out[:, :, i * w + j, index] = logits.softmax(-1)
    return out


@pytest.mark.parametrize("size, kernel, dilation", [((5, 6), 3, 1), ((7, 6), 3, 2), ((6, 7), 5, 1)])
def test_nat_attention_is_recorded_exactly(size, kernel, dilation):
    torch.manual_seed(0)
    layer = NeighborhoodAttention2dRPB(8, 2, kernel, dilation)
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    rec, probs = captured(layer, x)
    torch.testing.assert_close(probs, naive_nat_probs(layer.double(), x))
    layout = rec.layout(0)
    assert layout.grid == size and layout.windows == 1
    assert rec.get("hidden", 0).tensor.shape == (2, size[0] * size[1], 8)


def test_nat_attention_on_a_map_smaller_than_its_window_marks_the_padding_off_the_map():
    rec, probs = captured(NeighborhoodAttention2dRPB(8, 2, 5, 1), torch.randn(1, 3, 4, 8, dtype=torch.float64))
    layout = rec.layout(0)
    assert probs.shape[-1] == 25 and layout.grid == (3, 4)
    assert int(layout.key_inside().sum()) == 12


@pytest.mark.parametrize("stride, halo", [(1, 1), (1, 3), (2, 1)])
def test_halo_attention_is_recorded_per_block(stride, halo):
    torch.manual_seed(0)
    layer = HaloAttention(8, 8, stride=stride, num_heads=2, block_size=4, halo_size=halo)
    rec, probs = captured(layer, torch.randn(2, 8, 8, 8, dtype=torch.float64))
    layout = rec.layout(0)
    assert probs.shape == (2 * 4, 2, (4 // stride) ** 2, (4 + 2 * halo) ** 2)
    if stride == 1:
        expected = halo_like((8, 8), 4, halo)
        torch.testing.assert_close(layout.queries, expected.queries)
        torch.testing.assert_close(layout.keys, expected.keys)
    else:
        assert layout.queries[0].tolist() == [[0, 0], [0, 2], [2, 0], [2, 2]]
    assert rec.get("hidden", 0).tensor.shape == (2, 64, 8)


def test_davit_spatial_windows_include_padded_keys_off_the_map():
    torch.manual_seed(0)
    rec, probs = captured(SpatialWindowAttention(8, 2, window_size=3), torch.randn(2, 4, 5, 8, dtype=torch.float64))
    layout = rec.layout(0)
    assert layout.windows == 4 and probs.shape == (2 * 4, 2, 9, 9)
    assert int(layout.key_inside().sum()) == 20


def test_davit_channel_attention_is_attention_over_channels():
    torch.manual_seed(0)
    layer = ChannelAttention(8, 2)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    rec, probs = captured(layer, x)
    q, k, v = layer.qkv.double()(x).reshape(2, 10, 3, 2, 4).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(probs, (k.transpose(-1, -2) @ v * layer.scale).softmax(dim=-1))
    assert rec.layout(0) is None


def test_pat_self_attention_over_the_whole_map():
    torch.manual_seed(0)
    rec, probs = captured(RelativePositionMHSA(8, 2), torch.randn(1, 8, 3, 5, dtype=torch.float64))
    assert probs.shape == (1, 2, 15, 15) and rec.layout(0).grid == (3, 5)


def test_layers_are_found_and_named():
    model = nn.Sequential(Block(NeighborhoodAttention2dRPB(8, 2, 3)), Block(HaloAttention(8, 8, num_heads=2)),
                          Block(SpatialWindowAttention(8, 2)), Block(ChannelAttention(8, 2)))
    kinds = [info.kind for info in attention_layers(model)]
    assert kinds == ["NeighborhoodAttention2dRPB", "HaloAttention", "SpatialWindowAttention", "ChannelAttention"]
    assert all("hidden" in info.provides for info in attention_layers(model))
    assert math.isclose(NeighborhoodAttention2dRPB(8, 2).scale, 0.5)
