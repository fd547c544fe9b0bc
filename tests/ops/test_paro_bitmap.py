"""ops.paro_bitmap: packing round-trips exactly for any block count, 8 blocks a byte in the documented bit order,
meta device, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.ops.paro_bitmap import pack_bitmap, unpack_bitmap


@settings(max_examples=30, deadline=None)
@given(lead=st.lists(st.integers(1, 3), max_size=3), nb=st.integers(0, 20), p=st.floats(0, 1), seed=st.integers(0, 99))
def test_round_trip_is_exact(lead, nb, p, seed):
    bitmap = torch.rand(*lead, nb, generator=torch.Generator().manual_seed(seed)) < p
    packed = pack_bitmap(bitmap)
    assert packed.dtype == torch.uint8 and packed.shape == (*lead, -(-nb // 8))
    assert torch.equal(unpack_bitmap(packed, nb), bitmap)


def test_block_j_is_bit_j_mod_8_of_byte_j_div_8():
    bitmap = torch.zeros(11, dtype=torch.bool)
    bitmap[[0, 3, 9]] = True
    assert pack_bitmap(bitmap).tolist() == [1 + 8, 2]


def test_meta_device():
    packed = pack_bitmap(torch.empty(2, 5, 9, dtype=torch.bool, device="meta"))
    assert packed.device.type == "meta" and unpack_bitmap(packed, 9).shape == (2, 5, 9)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="bitmap must be a bool tensor"):
        pack_bitmap(torch.ones(3))
    with pytest.raises(TypeError, match="packed must be a uint8 tensor"):
        unpack_bitmap(torch.ones(3, dtype=torch.bool), 3)
    with pytest.raises(ValueError, match=r"num_blocks must be an int with ceil\(num_blocks / 8\) = 2"):
        unpack_bitmap(torch.zeros(2, dtype=torch.uint8), 17)
