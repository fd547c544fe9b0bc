"""NeighborhoodAttention1d/2d/3d: the definition with the reference backend, NATTEN's modules on equal weights."""

from __future__ import annotations

import math

import pytest
import torch

from visattn import masks
from visattn.nn import NeighborhoodAttention1d, NeighborhoodAttention2d, NeighborhoodAttention3d
from visattn.ops import masked_attention

MODULES = {1: NeighborhoodAttention1d, 2: NeighborhoodAttention2d, 3: NeighborhoodAttention3d}


pytestmark = pytest.mark.usefixtures("one_thread")


def definition(module, x):
    """``proj(masked_attention(qkv(x)))`` on the naive dense reference, written out."""
    batch, *spatial, dim = x.shape
    qkv = module.qkv(x).reshape(batch, math.prod(spatial), 3, module.num_heads, dim // module.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    mask = masks.neighborhood_mask(module.kernel_size, module.stride, module.dilation, module.is_causal)
    out = masked_attention(q, k, v, mask, tuple(spatial), backend="reference", scale=module.scale)
    return module.proj(out.transpose(1, 2).reshape(x.shape))


CASES = [
    (1, (13,), dict(kernel_size=5, dilation=2, stride=2, is_causal=True)),
    (1, (9,), dict(kernel_size=4)),
    (2, (7, 9), dict(kernel_size=3, dilation=(2, 1), stride=(1, 3), is_causal=(False, True))),
    (2, (6, 6), dict(kernel_size=(2, 5), qk_scale=0.3)),
    (3, (4, 5, 6), dict(kernel_size=(2, 3, 3), is_causal=(True, False, False))),
    (3, (3, 7, 5), dict(kernel_size=3, dilation=(1, 2, 1), stride=(1, 1, 2))),
]


@pytest.mark.parametrize(("ndim", "spatial", "kwargs"), CASES)
def test_module_equals_definition_with_gradients(ndim, spatial, kwargs):
    torch.manual_seed(0)
    module = MODULES[ndim](12, 3, **kwargs).double()
    x = torch.randn(2, *spatial, 12, dtype=torch.float64, requires_grad=True)
    out = module(x)
    assert out.shape == x.shape
    x_ref = x.detach().clone().requires_grad_()
    expected = definition(module, x_ref)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, *module.parameters()], grad)
    want = torch.autograd.grad(expected, [x_ref, *module.parameters()], grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("ndim", "spatial", "kwargs"), CASES)
def test_equals_natten_on_identical_weights(ndim, spatial, kwargs):
    natten = pytest.importorskip("natten")
    torch.manual_seed(1)
    ours = MODULES[ndim](16, 2, **kwargs).eval()
    theirs = getattr(natten, f"NeighborhoodAttention{ndim}D")(
        embed_dim=16, num_heads=2, kernel_size=kwargs["kernel_size"], stride=kwargs.get("stride", 1),
        dilation=kwargs.get("dilation", 1), is_causal=kwargs.get("is_causal", False),
        qk_scale=kwargs.get("qk_scale")).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, *spatial, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_bfloat16_within_tolerance():
    torch.manual_seed(2)
    module = NeighborhoodAttention2d(32, 4, kernel_size=5, dilation=2).eval()
    x = torch.randn(2, 15, 17, 32)
    with torch.no_grad():
        expected = module(x)
        got = module.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=5e-2)


def test_attention_dropout_only_in_training():
    torch.manual_seed(3)
    module = NeighborhoodAttention1d(8, 2, kernel_size=3, attn_drop=0.5)
    x = torch.randn(1, 10, 8)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x), module(x))
        evaluated = module(x)
    module.train()
    trained = module(x)
    trained.sum().backward()
    assert not torch.allclose(trained, evaluated)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="embed_dim must be divisible by num_heads"):
        NeighborhoodAttention2d(10, 3, kernel_size=3)
    with pytest.raises(ValueError, match="stride must be <= kernel_size"):
        NeighborhoodAttention2d(8, 2, kernel_size=3, stride=4)
    with pytest.raises(ValueError, match="kernel_size must have one entry per spatial axis"):
        NeighborhoodAttention2d(8, 2, kernel_size=(3, 3, 3))
    with pytest.raises(ValueError, match="attn_drop"):
        NeighborhoodAttention1d(8, 2, kernel_size=3, attn_drop=1.0)
    module = NeighborhoodAttention2d(8, 2, kernel_size=5)
    with pytest.raises(ValueError, match=r"x must be shaped \(B, L0, L1, embed_dim=8\)"):
        module(torch.randn(1, 16, 8))
    with pytest.raises(ValueError, match="kernel_size"):
        module(torch.randn(1, 4, 6, 8))


@pytest.mark.slow
def test_compiles_as_one_graph_and_matches_eager():
    """The tile plan is a trace-time constant: ``fullgraph=True`` works (``dynamic=False`` keeps it so across grid
    shapes). Compiling takes 5-20 s on 2 busy cores, hence slow."""
    torch.manual_seed(4)
    module = NeighborhoodAttention2d(16, 2, kernel_size=3, dilation=(1, 2))
    compiled = torch.compile(module, fullgraph=True, dynamic=False)
    for shape in ((6, 7), (5, 9)):
        x = torch.randn(2, *shape, 16, requires_grad=True)
        expected = module(x)
        want = torch.autograd.grad(expected.sum(), [x, *module.parameters()])
        got_out = compiled(x)
        got = torch.autograd.grad(got_out.sum(), [x, *module.parameters()])
        torch.testing.assert_close(got_out, expected, rtol=1e-5, atol=1e-5)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
