"""``visattn lens``: a subprocess run on scikit-image's astronaut with a tiny random timm ViT writes decodable PNGs,
an HTML report embedding them, and metrics.json; in-process runs check the numbers against the metrics computed
from a capture of the same model, checkpoints, --pretrained, layer selection and bad input."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import subprocess
import sys

import pytest
import timm
import torch
from PIL import Image
from skimage import data as skimage_data

from visattn import cli
from visattn.lens import capture, metrics
from visattn.lens.command import LensOptions, build_model, layout, load_image, parse_model_kwargs, prepare

TINY = "img_size=32,patch_size=8,embed_dim=32,depth=2,num_heads=4"
PICTURES = ("attention.png", "heads.png", "metrics.png", "similarity.png")


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    path = tmp_path_factory.mktemp("picture") / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


def lens(*args: str) -> int:
    return cli.main(["lens", *map(str, args)])


def test_subprocess_writes_pngs_html_and_json(astronaut, tmp_path):
    out = tmp_path / "report"
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "visattn", "lens", str(astronaut), "--model",
                             "vit_tiny_patch16_224", "--model-kwargs", TINY, "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "random weights" in result.stderr
    pngs = {}
    for name in PICTURES:
        data = (out / name).read_bytes()
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.format == "PNG" and min(image.size) > 50
        pngs[name] = data
    page = (out / "report.html").read_text(encoding="utf-8")
    embedded = [base64.b64decode(e) for e in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]
    assert sorted(embedded) == sorted(pngs.values())
    assert "vit_tiny_patch16_224" in page and "mean attention distance (patches)" in page
    data = json.loads((out / "metrics.json").read_text())
    assert set(data) == {"info", "per_layer", "summary", "notes"}
    assert all(set(values) == {"0", "1"} for values in data["per_layer"].values())
    assert "wrote" in result.stdout and "report.html" in result.stdout


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(LensOptions(image=None, model="vit_tiny_patch16_224", model_kwargs=parse_model_kwargs(TINY),
                                   seed=seed))


def test_numbers_match_metrics_on_a_capture_of_the_same_model(astronaut, tmp_path):
    assert lens(astronaut, "--model", "vit_tiny_patch16_224", "--model-kwargs", TINY, "--out", tmp_path,
                "--seed", "3", "--metrics", "entropy", "distance", "sinks", "--sink-tau", "3.0") == 0
    data = json.loads((tmp_path / "metrics.json").read_text())
    model = tiny_model(3)
    x, _ = prepare(model, load_image(astronaut))
    grid, prefix = layout(model, x)
    assert (grid, prefix) == ((4, 4), 1)
    with torch.no_grad(), capture(model, what=("probs", "hidden")) as rec:
        model(x)
    entropy = next(v for k, v in data["per_layer"].items() if k.startswith("entropy"))
    for layer in (0, 1):
        probs, hidden = rec.get("probs", layer).tensor, rec.get("hidden", layer).tensor
        assert entropy[str(layer)] == pytest.approx(float(metrics.attention_entropy(probs, slice(1, None)).mean()))
        assert data["per_layer"]["mean attention distance (patches)"][str(layer)] == pytest.approx(
            float(metrics.mean_attention_distance(probs, grid, prefix).mean()))
        assert data["per_layer"]["max |x|/RMS"][str(layer)] == pytest.approx(float(metrics.rms_ratio(hidden).max()))
    assert entropy["0"] <= math.log(16) + 1e-6
    assert "rollout" not in " ".join(data["per_layer"]) and not (tmp_path / "similarity.png").exists()


def test_checkpoint_file_loads_the_saved_weights(astronaut, tmp_path):
    checkpoint = tmp_path / "tiny.pth"
    torch.save(tiny_model(7).state_dict(), checkpoint)
    by_name, from_file = tmp_path / "name", tmp_path / "file"
    common = ("--model-kwargs", TINY, "--metrics", "distance")
    assert lens(astronaut, "--model", "vit_tiny_patch16_224", "--seed", "7", "--out", by_name, *common) == 0
    assert lens(astronaut, "--model", checkpoint, "--model-name", "vit_tiny_patch16_224", "--out", from_file,
                *common) == 0
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (by_name, from_file))
    assert first["per_layer"] == second["per_layer"]
    assert second["info"]["weights"] == "checkpoint"


def test_layer_selection_and_pretrained_flag(astronaut, tmp_path, monkeypatch):
    assert lens(astronaut, "--model", "vit_tiny_patch16_224", "--model-kwargs", TINY, "--out", tmp_path,
                "--layers", "1", "--metrics", "entropy", "rollout") == 0
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["info"]["layers"] == "1"
    assert all(set(values) == {"1"} for values in data["per_layer"].values())
    calls = []
    create = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    monkeypatch.setattr("visattn.lens.command._hub_reachable", lambda: True)  # as if online: no offline stop
    # the run stops after building the model (layer 5 does not exist): enough to see how it was built
    assert lens(astronaut, "--model", "vit_tiny_patch16_224", "--model-kwargs", TINY, "--out", tmp_path / "p",
                "--pretrained", "--layers", "5") == 2
    assert calls == [True]


@pytest.mark.parametrize(("args", "message"), [
    (("--layers", "5"), r"layers \[5\] out of range: VisionTransformer has 2 attention layers"),
    (("--metrics", "entropy", "vhd"), r"--metrics has unknown names \['vhd'\]"),
    (("--layers", "0", "--metrics", "phases"), "--metrics phases: layer dissimilarity needs at least 2"),
    (("--model-name", "vit_tiny_patch16_224"), "--model-name is only for checkpoint files"),
    (("--query", "40"), "query 40 out of range for 17 tokens"),
])
def test_bad_input_exits_2_with_a_message(astronaut, tmp_path, capsys, args, message):
    assert lens(astronaut, "--model", "vit_tiny_patch16_224", "--model-kwargs", TINY, "--out", tmp_path, *args) == 2
    assert re.search(message, " ".join(capsys.readouterr().err.split()))


def test_bad_model_and_image(astronaut, tmp_path, capsys):
    assert lens(astronaut, "--model", "no_such_model_xyz", "--out", tmp_path) == 2
    assert "neither a checkpoint file nor a timm model name" in " ".join(capsys.readouterr().err.split())
    assert lens(tmp_path / "missing.png", "--model", "vit_tiny_patch16_224", "--out", tmp_path) == 2
    assert "is not a file" in capsys.readouterr().err
    (tmp_path / "bad.png").write_text("not an image")
    assert lens(tmp_path / "bad.png", "--model", "vit_tiny_patch16_224", "--out", tmp_path) == 2
    assert "could not be read as an image" in capsys.readouterr().err
    checkpoint = tmp_path / "weights.pth"
    torch.save({"x": torch.zeros(1)}, checkpoint)
    assert lens(astronaut, "--model", checkpoint, "--out", tmp_path) == 2
    assert "pass --model-name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lens(astronaut, "--model", "vit_tiny_patch16_224", "--model-kwargs", "depth=", "--out", tmp_path)
    assert "--model-kwargs must look like key=value" in capsys.readouterr().err


def test_parse_model_kwargs():
    assert parse_model_kwargs("img_size=32,global_pool=avg,qkv_bias=False") == {
        "img_size": 32, "global_pool": "avg", "qkv_bias": False}
    assert parse_model_kwargs(" ") == {}
    with pytest.raises(ValueError, match="must be a Python literal"):
        parse_model_kwargs("depth=f(2)")
