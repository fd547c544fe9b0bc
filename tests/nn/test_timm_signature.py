"""``visattn.nn.Attention`` takes timm 1.0.31's ``timm.layers.Attention`` arguments in timm's order (issue 13:
``Attention(384, 6, 32)`` used to build a qkv of 1152 x 384 with bias here and 576 x 384 without in timm)."""

from __future__ import annotations

import inspect

import pytest
import torch
from timm.layers import Attention as TimmAttention

from visattn.nn import Attention

TIMM_PARAMETERS = list(inspect.signature(TimmAttention).parameters.values())


def test_signature_is_timms_parameter_for_parameter():
    ours = list(inspect.signature(Attention).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[:len(TIMM_PARAMETERS)]] == [
        (p.name, p.kind, p.default) for p in TIMM_PARAMETERS
    ]
    extras = ours[len(TIMM_PARAMETERS):]
    assert [p.name for p in extras] == ["mixer", "num_prefix_tokens", "shape", "mixer_kwargs"]
    assert all(p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD) for p in extras)


def test_forward_takes_timms_arguments_in_timms_order():
    theirs = list(inspect.signature(TimmAttention.forward).parameters)
    ours = inspect.signature(Attention.forward).parameters
    assert list(ours)[:len(theirs)] == theirs
    assert ours["shape"].kind is inspect.Parameter.KEYWORD_ONLY


def _random_(module: torch.nn.Module) -> None:
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.2)


@pytest.mark.parametrize("args", [
    (384, 6, 32),
    (48, 4, None, 24, True, True, True, False, True, 0.0, 0.0, torch.nn.LayerNorm),
    (40, 5, 6, None, True, False, False, True, True),
])
def test_positional_call_builds_timms_module_and_matches_it(args):
    torch.manual_seed(0)
    theirs = TimmAttention(*args).eval()
    ours = Attention(*args).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    _random_(theirs)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 9, args[0])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, shape=(9,)), theirs(x), rtol=1e-5, atol=1e-5)
        mask = torch.rand(9, 9) > 0.3
        mask |= torch.eye(9, dtype=torch.bool)
        torch.testing.assert_close(ours(x, mask, shape=(9,)), theirs(x, mask), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x, None, True, shape=(9,)), theirs(x, None, True), rtol=1e-5, atol=1e-5)


def test_attn_head_dim_is_head_dim():
    ours = Attention(384, 6, 32)
    assert (ours.head_dim, ours.attn_dim, tuple(ours.qkv.weight.shape), ours.qkv.bias) == (32, 192, (576, 384), None)


@pytest.mark.parametrize("mixer", ["softmax", "hedgehog"])
def test_device_and_dtype_factory_arguments(mixer):
    module = Attention(16, 2, qkv_bias=True, qk_norm=True, gated=True, device="meta", dtype=torch.float64,
                       mixer=mixer)
    tensors = list(module.parameters()) + list(module.buffers())
    assert tensors and all(t.device.type == "meta" for t in tensors)
    assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point())
    out = module(torch.empty(2, 5, 16, device="meta", dtype=torch.float64), shape=(5,))
    assert (out.device.type, out.dtype, tuple(out.shape)) == ("meta", torch.float64, (2, 5, 16))


def test_bad_head_dim_and_dim_out_raise():
    with pytest.raises(ValueError, match="attn_head_dim must be a positive int, got 0"):
        Attention(16, 2, 0)
    with pytest.raises(ValueError, match="dim_out must be a positive int, got -1"):
        Attention(16, 2, None, -1)
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        Attention(16, 2)(torch.randn(1, 4, 16), None, "yes")
