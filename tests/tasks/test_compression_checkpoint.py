"""The shipped S2LIC checkpoint (benchmarks/checkpoints/s2lic_tiny_lambda0035.pt, docs/tasks.md): issue 17's target
"better rate-distortion than JPEG at equal bpp on scikit-image's sample images", checked on real bitstream files of
the two held-out pictures (never seen in training), decoded, against Pillow's JPEG interpolated at the same bpp.

Measured when it was trained: +1.59 dB (astronaut) and +2.14 dB (coffee). The test asks for +1 dB, leaving room for
another CPU's float rounding in the transforms."""

from __future__ import annotations

from pathlib import Path

import pytest

from visattn.tasks import compression as comp

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning")]

CHECKPOINT = Path(__file__).resolve().parents[2] / "benchmarks" / "checkpoints" / "s2lic_tiny_lambda0035.pt"


@pytest.fixture(scope="module")
def codec():
    return comp.load_checkpoint(CHECKPOINT)


def test_checkpoint_is_the_tiny_config_trained_at_the_documented_lambda(codec):
    import torch

    payload = torch.load(CHECKPOINT, weights_only=True)
    assert payload["lmbda"] == pytest.approx(0.0035) and payload["steps"] == 8883
    assert dict(codec.config) == {**dict(codec.config), **comp.TINY_CONFIG}
    assert not codec.training


@pytest.mark.parametrize("name", comp.TEST_IMAGES)
def test_held_out_picture_beats_jpeg_at_equal_bpp(codec, name):
    point = comp.compare_with_jpeg(codec, comp.to_uint8(comp.sample_image(name, 256)))
    assert point.gain_db > 1.0, point
    assert point.jpeg_bpp > point.bpp, point  # JPEG needs more bits for the same PSNR
    header_bpp = 8 * 21 / 256**2  # pack_stream's header
    assert point.bpp <= 1.02 * point.estimate + header_bpp, point
