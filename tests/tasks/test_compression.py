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


def test_grey_pictures_are_repeated_on_three_channels():
    image = comp.sample_image("camera", 32)
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert set(comp.TRAIN_IMAGES) >= {"camera", "chelsea", "retina"}


def test_synthetic_texture_is_a_seeded_picture():
    first = comp.synthetic_texture(48, torch.Generator().manual_seed(1))
    again = comp.synthetic_texture(48, torch.Generator().manual_seed(1))
    other = comp.synthetic_texture(48, torch.Generator().manual_seed(2))
    assert first.shape == (3, 48, 48) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.std() > 0.01
    with pytest.raises(ValueError, match="size"):
        comp.synthetic_texture(0, torch.Generator())


def test_training_pictures_add_textures():
    pictures = comp.training_pictures(("coffee",), textures=2, texture_size=64)
    assert len(pictures) == 3 and pictures[0].shape == (3, 400, 600) and pictures[1].shape == (3, 64, 64)


def test_random_crops_are_flipped_windows_of_the_pictures():
    rows = torch.arange(20.0)[:, None].expand(20, 30)
    cols = torch.arange(30.0)[None, :].expand(20, 30)
    image = torch.stack((rows, cols, rows * 100 + cols))
    crops = comp.random_crops([image], 16, 8, torch.Generator().manual_seed(0))
    assert crops.shape == (16, 3, 8, 8)
    flips = set()
    for crop in crops:
        r, c = crop[0], crop[1]
        down, right = bool(r[1, 0] > r[0, 0]), bool(c[0, 1] > c[0, 0])
        flips.add((down, right))
        top, left = int(r.min()), int(c.min())
        window = image[:, top:top + 8, left:left + 8]
        expected = window if down else window.flip(-2)
        expected = expected if right else expected.flip(-1)
        assert torch.equal(crop, expected)
    assert len(flips) == 4
    scaled = comp.random_crops([image], 4, 8, torch.Generator().manual_seed(0), min_scale=0.5)
    assert scaled.shape == (4, 3, 8, 8)
    # area resizing of a window of up to 16 pixels: the row step between neighbours is 1 to 2
    steps = (scaled[:, 0, 1:, :] - scaled[:, 0, :-1, :]).abs()
    assert steps.min() >= 1 - 1e-5 and steps.max() <= 2 + 1e-5 and steps.max() > 1 + 1e-3
    with pytest.raises(ValueError, match="min_scale"):
        comp.random_crops([image], 1, 8, torch.Generator(), min_scale=0)


def test_learning_rate_schedule():
    rates = [comp.learning_rate_at(step, 10, 1e-3, warmup=4, decay_at=0.8) for step in range(10)]
    assert rates[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert rates[4:8] == pytest.approx([1e-3] * 4) and rates[8:] == pytest.approx([1e-4] * 2)
    assert comp.learning_rate_at(9, 10, 1e-3) == 1e-3


def test_learning_rate_drops_when_the_clock_reaches_decay_at_before_the_steps_do():
    assert comp.learning_rate_at(5, 100, 1e-3, decay_at=0.85, time_fraction=0.84) == pytest.approx(1e-3)
    assert comp.learning_rate_at(5, 100, 1e-3, decay_at=0.85, time_fraction=0.86) == pytest.approx(1e-4)
    assert comp.learning_rate_at(2, 100, 1e-3, warmup=4, decay_at=0.85, time_fraction=0.9) == pytest.approx(7.5e-4)


def test_train_schedule_and_time_limit():
    from visattn.models.s2lic import S2LIC

    torch.manual_seed(0)
    model = S2LIC(**TINY)
    images = [comp.sample_image("astronaut", 96), comp.synthetic_texture(64, torch.Generator().manual_seed(0))]
    losses = comp.train(model, images, steps=3, batch=1, crop=64, lr=1e-3, warmup=2, decay_at=0.5, min_scale=0.5)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert len(comp.train(model, images, steps=5, batch=1, crop=64, max_seconds=0.0)) == 1


def test_jpeg_bpp_at_psnr_inverts_the_curve():
    curve = [comp.JpegPoint(1, 0.1, 20.0), comp.JpegPoint(2, 0.2, 19.5), comp.JpegPoint(3, 0.4, 30.0)]
    assert comp.jpeg_bpp_at_psnr(curve, 25.0) == pytest.approx(0.25)  # between (0.1, 20) and (0.4, 30)
    assert comp.jpeg_bpp_at_psnr(curve, 20.0) == pytest.approx(0.1)
    assert math.isnan(comp.jpeg_bpp_at_psnr(curve, 31.0)) and math.isnan(comp.jpeg_bpp_at_psnr(curve, 19.0))


def test_compare_with_jpeg_codes_a_real_file():
    from visattn.models.s2lic import S2LIC, pad_to_multiple

    torch.manual_seed(0)
    model = S2LIC(**TINY).eval()
    model.update(force=True)
    pixels = comp.to_uint8(comp.sample_image("coffee", 128)[:, :80, :70])
    point = comp.compare_with_jpeg(model, pixels, qualities=(1, 20, 60, 95))
    x = pad_to_multiple(comp.to_tensor(pixels)[None])
    coded = model.compress(x)
    data = comp.pack_stream(coded["strings"], coded["shape"], (80, 70), comp.model_fingerprint(model))
    assert point.bpp == pytest.approx(8 * len(data) / (80 * 70))
    decoded = comp.to_uint8(model.decompress(coded["strings"], coded["shape"])["x_hat"][0, :, :80, :70])
    assert point.psnr == pytest.approx(comp.psnr(pixels / 255.0, decoded / 255.0))
    curve = comp.jpeg_curve(pixels, (1, 20, 60, 95))
    assert (point.jpeg_min_bpp, point.jpeg_min_psnr) == (curve[0].bpp, curve[0].psnr)
    assert point.jpeg_psnr == comp.jpeg_psnr_at_bpp(curve, point.bpp) or math.isnan(point.jpeg_psnr)
    assert point.gain_db == point.psnr - point.jpeg_psnr or math.isnan(point.gain_db)
    assert point.dominates_jpeg_minimum == (point.bpp <= curve[0].bpp and point.psnr > curve[0].psnr)
