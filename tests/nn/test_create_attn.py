"""create_attn / get_attn / insert_attn: the registry, timm drop-in (ResNet-50 attn_layer, MobileNetV2 se_layer,
ConvNeXt-T after conv_dw) counted on the meta device, and a few training steps on scikit-learn's digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import visattn
from visattn.nn import PolarizedSelfAttention, SubspaceAttention, create_attn, get_attn, insert_attn
from visattn.registry import get_module_spec, list_mixers, list_modules

pytestmark = pytest.mark.usefixtures("one_thread")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "modules.md"
ATTN_LAYERS = [n for n in list_modules() if "attn_layer" in get_module_spec(n).faces]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_is_apart_from_the_mixers():
    assert set(list_modules("modules")) >= {"psa_p", "psa_s", "ulsam", "pconv", "pat_ch", "pat_sp", "pat_sf",
                                            "radial_embedding", "hybrid_block"}
    assert not set(list_modules()) & set(list_mixers())
    assert get_module_spec("ulsam").paper.arxiv == "2006.15102"
    with pytest.raises(ValueError, match="unknown module"):
        get_module_spec("se")


def test_create_attn_by_name():
    m = visattn.create_attn("psa_s", 32, variant="official")
    assert isinstance(m, PolarizedSelfAttention) and m.mode == "sequential" and m.variant == "official"
    assert isinstance(create_attn("ulsam", 16, groups=2), SubspaceAttention)
    with pytest.raises(TypeError, match="name"):
        create_attn(SubspaceAttention, 16)


@pytest.mark.parametrize("name", ATTN_LAYERS)
def test_resnet50_block_args_attn_layer(name):
    kwargs = {"num_heads": 3} if name == "pat_sf" else {}
    with torch.device("meta"):
        base = timm.create_model("resnet50")
        model = timm.create_model("resnet50", block_args=dict(attn_layer=get_attn(name, **kwargs)))
    added = [b.se for b in model.modules() if isinstance(b, timm.models.resnet.Bottleneck)]
    assert len(added) == 16
    assert n_params(model) == n_params(base) + sum(n_params(a) for a in added)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.eval()(torch.empty(1, 3, 64, 64, device="meta")).shape == (1, 1000)


@pytest.mark.parametrize("name", ["psa_p", "ulsam", "pat_sp"])
def test_mobilenetv2_after_conv_dw(name):
    """timm's MobileNetV2 blocks have no SE, so its ``se_layer`` slot stays empty: the module goes after each
    depthwise convolution instead (17 blocks)."""
    with torch.device("meta"):
        model = timm.create_model("mobilenetv2_100")
    base = n_params(model)
    assert insert_attn(model, name) == 17
    added = [b.conv_dw[1] for b in model.modules() if isinstance(getattr(b, "conv_dw", None), torch.nn.Sequential)]
    assert len(added) == 17
    assert n_params(model) == base + sum(n_params(a) for a in added)
    assert model.eval()(torch.empty(1, 3, 64, 64, device="meta")).shape == (1, 1000)


def test_se_layer_slot_accepts_act_layer():
    with torch.device("meta"):
        model = timm.create_model("efficientnet_b0", se_layer=get_attn("ulsam"))
    assert sum(isinstance(m, SubspaceAttention) for m in model.modules()) == 16
    assert model.eval()(torch.empty(1, 3, 64, 64, device="meta")).shape == (1, 1000)


@pytest.mark.parametrize("name", ["psa_s", "ulsam", "pconv"])
def test_convnext_tiny_after_conv_dw(name):
    with torch.device("meta"):
        model = timm.create_model("convnext_tiny")
    base = n_params(model)
    inserted = insert_attn(model, name)
    assert inserted == 18
    added = [blk.conv_dw[1] for blk in model.modules() if isinstance(getattr(blk, "conv_dw", None),
                                                                        torch.nn.Sequential)]
    assert n_params(model) == base + sum(n_params(a) for a in added)
    assert model.eval()(torch.empty(1, 3, 64, 64, device="meta")).shape == (1, 1000)
    with pytest.raises(ValueError, match="after='conv9'"):
        insert_attn(model, name, after="conv9")


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    """64 of scikit-learn's digits, 8x8 upsampled to 32x32 and repeated over RGB, with their labels."""
    sklearn = pytest.importorskip("sklearn.datasets")
    digits = sklearn.load_digits()
    x = torch.tensor(digits.images[:64], dtype=torch.float32)[:, None] / 16
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear").expand(-1, 3, -1, -1).contiguous()
    return x, torch.tensor(digits.target[:64])


def _losses(model: torch.nn.Module, steps: int, lr: float) -> list[float]:
    x, y = _digits()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("name", ["psa_p", "ulsam"])
def test_trains_a_few_steps_on_digits(name):
    """resnet10t with the module in every block: cross-entropy on 64 digits (8x8 upsampled to 32) falls."""
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10, block_args=dict(attn_layer=get_attn(name)))
    losses = _losses(model, 8, 3e-3)
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
@pytest.mark.parametrize(("model_name", "name"), [("resnet50", "psa_p"), ("mobilenetv2_100", "ulsam"),
                                                   ("convnext_tiny", "ulsam")])
def test_full_size_timm_models_train_with_the_module(model_name, name):
    """The three hosts the paper tables name, full size (random init): PSA as ResNet-50's attn_layer, ULSAM after
    every depthwise convolution of MobileNetV2 and ConvNeXt-T; six Adam steps on 64 digits (about 17 s on 2 cores
    for the three)."""
    torch.manual_seed(0)
    if model_name == "resnet50":
        model = timm.create_model(model_name, num_classes=10, block_args=dict(attn_layer=get_attn(name)))
    else:
        model = timm.create_model(model_name, num_classes=10)
        assert insert_attn(model, name) > 0
    losses = _losses(model, 6, 1e-3)
    assert losses[-1] < 0.5 * losses[0], losses


def test_docs_page_lists_every_module():
    text = DOCS.read_text()
    missing = [n for n in list_modules() if f"`{n}`" not in text]
    assert not missing, f"docs/modules.md does not mention {missing}"


def test_cli_lists_the_modules(capsys):
    from visattn.cli import main

    assert main(["list", "--family", "modules"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in list_modules())
