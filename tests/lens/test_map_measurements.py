"""``visattn lens`` on every family of visattn backbones whose layers attend in windows, blocks, halos or
neighborhoods: it captures every attention layer, measures entropy and distance in input pixels, and draws the
attention each position receives (tiny configs, random weights, a generated picture)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from visattn import cli
from visattn.lens.layout import grid_layout
from visattn.lens.map_measurements import MapMeasurements
from visattn.lens.measurements import LensOptions


def at(size: int) -> str:
    """The model kwarg that makes the lens feed ``size x size`` pictures (timm's data config reads it)."""
    return f"pretrained_cfg_overlay={{'input_size':(3,{size},{size})}}"


FAMILIES = {
    "visattn_maxvit_tiny_tf_224": "img_size=64,depths=(1,1,1,1),embed_dim=(32,32,64,64),head_hidden_size=64,"
                                  f"stem_width=16,{at(64)}",
    "visattn_swinv2_tiny_window8_256": f"img_size=64,embed_dim=16,num_heads=(1,2,4,8),depths=(2,2,2,2),window_size=2,"
                                       f"{at(64)}",
    "visattn_davit_tiny": f"depths=(1,2,1,1),embed_dims=(16,32,48,64),num_heads=(1,2,3,4),{at(64)}",
    "visattn_halonet26t": at(256),
    "visattn_nat_mini": f"embed_dim=16,depths=(1,1,2,1),num_heads=(1,2,2,4),kernel_size=3,{at(64)}",
    "visattn_dinat_mini": "embed_dim=16,depths=(1,1,2,1),num_heads=(1,2,2,4),kernel_size=3,"
                          f"dilations=((2,),(1,),(1,2),(1,)),{at(64)}",
    "visattn_l2vit_tiny": f"dims=(16,32,32,64),depths=(2,2,2,2),num_heads=(1,2,2,4),window_size=3,{at(96)}",
    "visattn_inline_swin_tiny": f"img_size=64,embed_dim=16,num_heads=(1,2,2,4),depths=(2,2,2,2),window_size=2,"
                                f"{at(64)}",
    "visattn_patnet_t0": f"embed_dim=16,depths=(1,2,1,1),feature_dim=32,{at(64)}",
}


def run_lens(tmp_path, model: str, kwargs: str) -> tuple[dict, list[str]]:
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "lens"
    args = ["lens", str(image), "--model", model, "--out", str(out)]
    if kwargs:
        args += ["--model-kwargs", kwargs]
    assert cli.main(args) == 0
    return json.loads((out / "metrics.json").read_text()), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_lens_cli_reports_on_every_windowed_family(tmp_path, model):
    import timm

    import visattn.models  # noqa: F401  (registers the models)
    from visattn.lens import attention_layers

    data, files = run_lens(tmp_path, model, FAMILIES[model])
    built = timm.create_model(model, **cli_kwargs(FAMILIES[model]))
    layers = len(attention_layers(built))
    entropy = data["per_layer"]["entropy over keys (nats)"]
    assert len(entropy) == layers
    distance = data["per_layer"]["mean attention distance (input pixels)"]
    assert all(value > 0 for value in distance.values())
    assert {"attention.png", "heads.png", "metrics.png", "metrics.json", "report.html"} <= set(files)
    assert "feature maps" in data["info"]
    assert any("rollout skipped" in note for note in data["notes"])


def cli_kwargs(text: str) -> dict:
    from visattn.cli_lens import parse_model_kwargs

    return parse_model_kwargs(text)


def test_a_model_without_attention_is_refused_in_one_line(tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    code = cli.main(["lens", str(image), "--model", "visattn_fasternet_t0", "--out", str(tmp_path / "out"),
                     "--model-kwargs", "embed_dim=16,depths=(1,2,1,1),feature_dim=64"])
    assert code == 2
    assert "cannot hook FasterNet" in capsys.readouterr().err


def test_rollout_asked_for_on_a_windowed_model_is_an_error(tmp_path):
    options = LensOptions(image=tmp_path / "x.png", model="m", metrics=("rollout",), out=tmp_path)
    measured = MapMeasurements(options, (0,), True, {0: grid_layout((2, 2))}, (8, 8))
    with pytest.raises(ValueError, match="--metrics rollout"):
        measured.attention(("rollout",), {0: torch.full((1, 1, 4, 4), 0.25)})


def test_distance_is_in_input_pixels():
    options = LensOptions(image="x.png", model="m", out="unused")
    measured = MapMeasurements(options, (0, 1), False, {0: grid_layout((2, 2)), 1: None}, (8, 16))
    probs = torch.zeros(1, 1, 4, 4)
    probs[..., 0, 1] = probs[..., 1, 0] = probs[..., 2, 3] = probs[..., 3, 2] = 1.0
    measured.attention(("distance", "entropy"), {0: probs, 1: torch.full((1, 1, 3, 3), 1 / 3)})
    assert measured.per_layer["mean attention distance (input pixels)"] == {0: 8.0}
    assert measured.per_layer["entropy over keys (nats)"][1] == pytest.approx(np.log(3))
    assert any("layers 1 attend over channels" in note for note in measured.notes)


@pytest.mark.parametrize("model, kwargs", [
    ("visattn_dependencyvit_tiny_patch16_224", "embed_dim=32,depth=2,num_heads=2"),
    ("visattn_dependencyvit_lite_tiny_patch16_224", "embed_dim=32,depth=3,num_heads=2,prune_layers=(2,)"),
])
def test_lens_cli_reports_on_dependency_vit(tmp_path, model, kwargs):
    """DependencyViT's reversed attention is observed through ``forward_with_message``: the ViT report while every
    layer sees the whole grid, the feature-map report once Lite has pruned tokens."""
    data, files = run_lens(tmp_path, model, kwargs)
    entropy = next(values for name, values in data["per_layer"].items() if name.startswith("entropy"))
    assert len(entropy) == (2 if "lite" not in model else 3)
    assert "report.html" in files
