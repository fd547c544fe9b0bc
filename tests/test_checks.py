"""Shared argument checks: a zero head dim and an integer attention mask are refused, naming the argument."""

from __future__ import annotations

import pytest
import torch

import visattn
from visattn import masks, ops
from visattn._checks import check_attn_mask, check_heads, check_image_batch, check_qkv, positive_int


def test_head_dim_zero_is_a_value_error_naming_head_dim():
    q = torch.randn(1, 2, 16, 0)
    with pytest.raises(ValueError, match=r"head_dim must be >= 1 .*got q=\(1, 2, 16, 0\)"):
        check_qkv(q, q, q)
    with pytest.raises(ValueError, match="head_dim must be >= 1"):
        ops.masked_attention(q, q, q, masks.neighborhood_mask(3), shape=(4, 4))
    with pytest.raises(ValueError, match="head_dim must be >= 1"):
        ops.attention(q, q, q)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("is_causal", [False, True])
def test_integer_attn_mask_is_a_type_error_naming_attn_mask(dtype, is_causal):
    attention = visattn.Attention(8, num_heads=2)
    mask = torch.ones(16, 16, dtype=dtype)
    with pytest.raises(TypeError, match=f"attn_mask must be bool .* got {dtype}"):
        attention(torch.randn(1, 16, 8), attn_mask=mask, is_causal=is_causal)


def test_check_attn_mask_accepts_bool_float_and_none():
    for mask in (None, torch.ones(2, 2, dtype=torch.bool), torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.half)):
        check_attn_mask(mask)
    with pytest.raises(TypeError, match="attn_mask must be a torch.Tensor or None, got list"):
        check_attn_mask([[True]])


def test_check_heads_returns_the_head_width_and_names_the_bad_argument():
    assert check_heads(12, 3) == 4
    assert check_heads(8, 8, "embed_dim") == 1
    with pytest.raises(ValueError, match="embed_dim must be a positive int, got 0"):
        check_heads(0, 2, "embed_dim")
    with pytest.raises(ValueError, match="num_heads must be a positive int, got True"):
        check_heads(4, True)
    with pytest.raises(ValueError, match="num_heads must be a positive int, got 2.0"):
        check_heads(4, 2.0)
    with pytest.raises(ValueError, match="dim must be divisible by num_heads, got dim=10, num_heads=3"):
        check_heads(10, 3)


def test_positive_int_refuses_non_ints_with_a_type_error_and_small_ints_with_a_value_error():
    assert positive_int(3, "n") == 3
    assert positive_int(0, "n", 0) == 0
    with pytest.raises(TypeError, match="n must be an int, got False"):
        positive_int(False, "n")
    with pytest.raises(TypeError, match="n must be an int, got 1.0"):
        positive_int(1.0, "n")
    with pytest.raises(ValueError, match="n must be >= 2, got 1"):
        positive_int(1, "n", 2)


def test_check_image_batch_names_the_argument_and_the_expected_channels():
    check_image_batch(torch.zeros(2, 3, 5, 7), 3)
    check_image_batch(torch.zeros(1, 4, 2, 2, device="meta"))
    with pytest.raises(ValueError, match=r"x must be an image batch \(B, 3, H, W\), got \(2, 1, 5, 7\)"):
        check_image_batch(torch.zeros(2, 1, 5, 7), 3)
    with pytest.raises(ValueError, match=r"images must be an image batch \(B, C, H, W\), got \(3, 5, 7\)"):
        check_image_batch(torch.zeros(3, 5, 7), name="images")
    with pytest.raises(ValueError, match=r"x must be an image batch \(B, C, H, W\), got list"):
        check_image_batch([1, 2])
