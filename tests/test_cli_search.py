"""``visattn search``: a generated display searched by chance and a picture searched by a small random-weight VGG;
the PNG and the metrics come out, the metrics agree with the RT model, and bad arguments fail before any run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from visattn import cli
from visattn.search.asymmetry import reaction_time

pytestmark = [pytest.mark.usefixtures("one_thread")]

SMALL_VGG = ["--backbone", "vgg11", "--model-kwargs", "mlp_ratio=0.01"]


def test_chance_on_a_generated_display(tmp_path, capsys):
    png, report = tmp_path / "scanpath.png", tmp_path / "search.json"
    assert cli.main(["search", "--display", "intersection:cross:6", "--model", "chance", "--seed", "3",
                     "--output", str(png), "--json", str(report)]) == 0
    assert png.stat().st_size > 0 and Image.open(png).format == "PNG"
    metrics = json.loads(report.read_text())
    assert metrics["found"] and metrics["set_size"] == 6 and metrics["condition"] == "cross"
    assert 1 <= metrics["fixations"] <= 6 and len(metrics["scanpath"]) == metrics["fixations"] + 1
    assert metrics["rt_ms"] == pytest.approx(reaction_time(metrics["fixations"]))
    assert "rt_ms" in capsys.readouterr().out


def test_eccnet_on_a_picture_with_a_checkpoint(tmp_path, capsys):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(24, 28, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "scene.png")
    Image.fromarray(pixels[4:12, 8:16]).save(tmp_path / "target.png")
    torch.manual_seed(0)
    vgg = timm.create_model("vgg11", num_classes=0, mlp_ratio=0.01)
    torch.save(vgg.state_dict(), tmp_path / "vgg.pth")
    png = tmp_path / "out.png"
    report = tmp_path / "out.json"
    assert cli.main(["search", str(tmp_path / "scene.png"), "--target", str(tmp_path / "target.png"),
                     "--target-box", "4,8,12,16", *SMALL_VGG, "--checkpoint", str(tmp_path / "vgg.pth"),
                     "--corner-bias", "4", "--max-fixations", "3", "--output", str(png), "--json", str(report)]) == 0
    metrics = json.loads(report.read_text())
    assert 1 <= len(metrics["scanpath"]) <= 4
    for r, c in metrics["scanpath"]:
        assert 0 <= r < 24 and 0 <= c < 28
    assert Image.open(png).format == "PNG"


@pytest.mark.parametrize("argv, message", [
    (["--display", "intersection:cross:6", "--output", "{tmp}/missing/x.png"], "--output"),
    (["--display", "intersection:cross:10"], "set_size"),
    (["--display", "intersection:cross"], "EXPERIMENT:CONDITION:SET_SIZE"),
    (["{tmp}/none.png", "--target", "{tmp}/none.png"], "is not a file"),
    (["--display", "t_vs_l:Ts:3", "--model", "chance", "--scale", "0"], "--scale"),
    ([], "either IMAGE"),
])
def test_bad_arguments_fail_cleanly(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "x.png")]
    assert cli.main(["search", "--model", "chance", *argv] if "--model" not in argv else ["search", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
