"""visattn.tasks.compression: the rate-distortion loss, bpp, PSNR, the JPEG baseline, the stream file format, the
training loop and checkpoints of the S2LIC codec."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visattn.tasks import compression as comp

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]

TINY = dict(N=16, M=20, num_slices=4, depths=(1, 1, 1), num_heads=(2, 2, 2), enhancement_channels=4, img_size=64,
            drop_path_rate=0.0)


def test_rate_distortion_loss_is_bpp_plus_lambda_255_squared_mse():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 6, generator=g)
    x_hat = torch.rand(2, 3, 8, 6, generator=g)
    likelihoods = {"y": torch.rand(2, 4, 2, 2, generator=g) * 0.9 + 0.05, "z": torch.rand(2, 3, 1, 1, generator=g)}
    terms = comp.rate_distortion_loss({"x_hat": x_hat, "likelihoods": likelihoods}, x, 0.0130)
    bits = sum(-math.log2(v) for t in likelihoods.values() for v in t.double().flatten().tolist())
    mse = float(((x_hat.double() - x.double()) ** 2).mean())
    assert terms["bpp"].item() == pytest.approx(bits / (2 * 8 * 6), rel=1e-5)
    assert terms["mse"].item() == pytest.approx(mse, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(bits / 96 + 0.0130 * 255 ** 2 * mse, rel=1e-5)


def test_rate_distortion_loss_bad_inputs():
    out = {"x_hat": torch.zeros(1, 3, 4, 4), "likelihoods": {}}
    with pytest.raises(ValueError, match="lmbda"):
        comp.rate_distortion_loss(out, torch.zeros(1, 3, 4, 4), 0)
    with pytest.raises(ValueError, match="differ in shape"):
        comp.rate_distortion_loss(out, torch.zeros(1, 3, 4, 5), 0.01)


def test_psnr_matches_its_definition():
    g = np.random.default_rng(0)
    ref = g.random((5, 7, 3))
    test = np.clip(ref + g.normal(0, 0.05, ref.shape), 0, 1)
    assert comp.psnr(ref, test) == pytest.approx(10 * math.log10(1 / np.mean((ref - test) ** 2)), rel=1e-12)
    assert comp.psnr(torch.from_numpy(ref), torch.from_numpy(test)) == pytest.approx(comp.psnr(ref, test))
    with pytest.raises(ValueError, match="differ in shape"):
        comp.psnr(ref, test[:4])


def test_jpeg_curve_and_interpolation():
    pixels = comp.to_uint8(comp.sample_image("astronaut", 64))
    data, decoded = comp.jpeg_roundtrip(pixels, 50)
    assert data[:2] == b"\xff\xd8" and decoded.shape == pixels.shape
    curve = comp.jpeg_curve(pixels, (10, 50, 90))
    assert [p.bpp for p in curve] == sorted(p.bpp for p in curve)
    assert curve[0].psnr < curve[-1].psnr
    middle = (curve[0].bpp + curve[1].bpp) / 2
    assert comp.jpeg_psnr_at_bpp(curve, middle) == pytest.approx((curve[0].psnr + curve[1].psnr) / 2)
    assert math.isnan(comp.jpeg_psnr_at_bpp(curve, curve[0].bpp / 2))
    with pytest.raises(ValueError, match="quality"):
        comp.jpeg_roundtrip(pixels, 0)


def test_stream_format_round_trip_and_bad_data():
    strings = [[b"abc"], [b"defg"]]
    data = comp.pack_stream(strings, (2, 3), (100, 70), 1234)
    assert comp.unpack_stream(data) == (strings, (2, 3), (100, 70), 1234)
    assert comp.stream_bpp(strings, 10) == pytest.approx(8 * 7 / 10)
    with pytest.raises(ValueError, match="not an S2LIC bitstream"):
        comp.unpack_stream(b"\x89PNG....")
    with pytest.raises(ValueError, match="truncated"):
        comp.unpack_stream(data[:22])


def test_sample_image():
    image = comp.sample_image("coffee", 64)
    assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    assert comp.sample_image("coffee").shape == (3, 400, 600)
    with pytest.raises(ValueError, match="skimage"):
        comp.sample_image("no_such_picture")
    assert not set(comp.TRAIN_IMAGES) & set(comp.TEST_IMAGES)


def test_train_and_checkpoint_round_trip(tmp_path):
    from visattn.models.s2lic import S2LIC

    torch.manual_seed(0)
    model = S2LIC(**TINY)
    losses = comp.train(model, [comp.sample_image("astronaut", 96)], steps=2, batch=1, crop=64)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    path = tmp_path / "codec.pt"
    comp.save_checkpoint(model.eval(), path, lmbda=0.013)
    loaded = comp.load_checkpoint(path)
    assert comp.model_fingerprint(loaded) == comp.model_fingerprint(model)
    x = comp.sample_image("coffee", 64)[None]
    coded = model.compress(x)
    assert torch.equal(loaded.decompress(coded["strings"], coded["shape"])["x_hat"],
                       model.decompress(coded["strings"], coded["shape"])["x_hat"])
    with pytest.raises(ValueError, match="steps"):
        comp.train(model, [x[0]], steps=0)
    with pytest.raises(ValueError, match="crop"):
        comp.train(model, [x[0, :, :32, :32]], steps=1)


def test_load_checkpoint_refuses_other_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        comp.load_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not an S2LIC checkpoint"):
        comp.load_checkpoint(other)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="could not be read"):
        comp.load_checkpoint(text)
