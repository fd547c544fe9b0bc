"""ops.paro_quant (arXiv 2506.16054): per-block fake quantisation error bounds, INT8 below INT4."""

from __future__ import annotations

import torch

from visattn.ops.paro_quant import fake_quant_tiles, fake_quant_tokens


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_fake_quant_error_is_bounded_and_int8_beats_int4() -> None:
    x = rand(2, 3, 37, 16)
    for bits in (8, 4):
        err = (fake_quant_tokens(x, 8, bits) - x).abs()
        blocks = torch.nn.functional.pad(x, (0, 0, 0, 3)).unflatten(-2, (-1, 8)).abs().amax((-2, -1))
        step = blocks / (2 ** (bits - 1) - 1)
        bound = step.repeat_interleave(8, -1)[..., :37, None] / 2
        assert (err <= bound + 1e-12).all()
    e8 = (fake_quant_tokens(x, 8, 8) - x).abs().mean()
    e4 = (fake_quant_tokens(x, 8, 4) - x).abs().mean()
    assert 0 < e8 < e4
    p = torch.softmax(rand(2, 16, 24), -1)
    p8, p4 = ((fake_quant_tiles(p, 8, 8, b) - p).abs().mean() for b in (8, 4))
    assert 0 < p8 < p4
    assert (fake_quant_tiles(p, 8, 8, 8) >= 0).all()
