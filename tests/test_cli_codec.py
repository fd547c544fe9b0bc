"""``visattn codec encode|decode``: a picture of any size through a tiny S2LIC checkpoint and back, bit-equal to the
model's own reconstruction; bad paths, files and checkpoints give one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visattn import cli
from visattn.models.s2lic import S2LIC, pad_to_multiple
from visattn.tasks import compression as comp

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]

TINY = dict(N=16, M=20, num_slices=4, depths=(1, 1, 1), num_heads=(2, 2, 2), enhancement_channels=4, img_size=64)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec")
    torch.manual_seed(0)
    model = S2LIC(**TINY).eval()
    comp.save_checkpoint(model, root / "codec.pt")
    torch.manual_seed(1)
    comp.save_checkpoint(S2LIC(**TINY).eval(), root / "other.pt")
    pixels = np.random.default_rng(0).integers(0, 256, size=(70, 100, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "photo.png")
    return root, model, pixels


def test_encode_decode_round_trip(files, capsys):
    root, model, pixels = files
    assert cli.main(["codec", "encode", str(root / "photo.png"), str(root / "photo.bin"),
                     "--checkpoint", str(root / "codec.pt")]) == 0
    assert "bpp" in capsys.readouterr().out
    assert cli.main(["codec", "decode", str(root / "photo.bin"), str(root / "decoded.png"),
                     "--checkpoint", str(root / "codec.pt")]) == 0
    decoded = np.asarray(Image.open(root / "decoded.png"))
    assert decoded.shape == pixels.shape
    x = pad_to_multiple(comp.to_tensor(pixels)[None])
    with torch.no_grad():
        expected = comp.to_uint8(model(x)["x_hat"][0, :, :70, :100])
    assert np.array_equal(decoded, expected)
    strings, shape, size, _ = comp.unpack_stream((root / "photo.bin").read_bytes())
    assert size == (70, 100) and shape == (2, 2)


@pytest.mark.parametrize(("args", "status", "message"), [
    (["encode", "{root}/missing.png", "{root}/x.bin"], 2, "does not exist"),
    (["encode", "{root}/photo.png", "{root}/no_folder/x.bin"], 2, "does not exist; create it first"),
    (["encode", "{root}/codec.pt", "{root}/x.bin"], 1, "cannot identify image file"),
    (["decode", "{root}/photo.png", "{root}/x.png"], 2, "not an S2LIC bitstream"),
    (["encode", "{root}/photo.png", "{root}/x.bin", "--checkpoint", "{root}/photo.png"], 2, "could not be read"),
])
def test_bad_paths_and_files(files, capsys, args, status, message):
    root = files[0]
    argv = ["codec", *(a.format(root=root) for a in args)]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(root / "codec.pt")]
    assert cli.main(argv) == status
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and len(err.strip().splitlines()) <= 2, err


def test_decode_with_another_checkpoint_is_refused(files, capsys):
    root = files[0]
    assert cli.main(["codec", "encode", str(root / "photo.png"), str(root / "again.bin"),
                     "--checkpoint", str(root / "codec.pt")]) == 0
    assert cli.main(["codec", "decode", str(root / "again.bin"), str(root / "x.png"),
                     "--checkpoint", str(root / "other.pt")]) == 2
    assert "another checkpoint" in " ".join(capsys.readouterr().err.split())
