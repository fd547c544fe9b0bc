"""visattn.models._pretrained: the pretrained configurations of paper models and of timm counterparts."""

from __future__ import annotations

from dataclasses import asdict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, get_pretrained_cfg

from visattn.models._pretrained import paper_cfg, timm_pretrained_cfg


def test_paper_cfg_defaults_are_imagenet_1k_without_weights() -> None:
    cfg = paper_cfg("2404.00358", first_conv="embed.conv")
    assert cfg == dict(url="", num_classes=1000, input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic",
                       mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, paper_ids="arXiv:2404.00358",
                       first_conv="embed.conv")


def test_paper_cfg_overrides_and_extra_fields_reach_timms_pretrained_cfg() -> None:
    cfg = paper_cfg("2102.02717", input_size=97, num_classes=11, crop_pct=1.0, interpolation="bilinear",
                    mean=(0.5,) * 3, std=(0.25,) * 3, url="https://example.org/w.pth", pool_size=(3, 3),
                    notes=("a note",))
    pretrained = generate_default_cfgs({"model.tag": cfg})["model"].default
    got = asdict(pretrained)
    assert got["input_size"] == (3, 97, 97) and got["num_classes"] == 11 and got["crop_pct"] == 1.0
    assert got["interpolation"] == "bilinear" and got["mean"] == (0.5,) * 3 and got["std"] == (0.25,) * 3
    assert got["url"] == "https://example.org/w.pth" and got["pool_size"] == (3, 3) and got["notes"] == ("a note",)
    assert got["paper_ids"] == "arXiv:2102.02717"


def test_registered_paper_models_carry_their_arxiv_id() -> None:
    assert get_pretrained_cfg("visattn_rst").paper_ids == "arXiv:2404.00358"
    assert get_pretrained_cfg("visattn_nat_mini").paper_ids == "arXiv:2204.07143"
    assert get_pretrained_cfg("visattn_dinat_mini").paper_ids == "arXiv:2209.15001"


def test_timm_pretrained_cfg_drops_architecture_and_tag() -> None:
    cfg = timm_pretrained_cfg("resnet18", url="")
    assert "architecture" not in cfg and "tag" not in cfg and cfg["url"] == "" and cfg["custom_load"] is False
