"""timm's model contract, checked on a tiny config of a ``visattn_*`` model, and two helpers every family test uses.

    from contract import check_lens_cli, check_timm_contract, count_params_meta, digits_loss_falls

    check_timm_contract("visattn_vit_tiny_patch16_224", 32, patch_size=8, depth=2)
    assert count_params_meta("visattn_vit_small_patch16_224") == 22_050_664
    digits_loss_falls(timm.create_model("visattn_vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), 32)
    check_lens_cli("visattn_vit_tiny_patch16_224", tmp_path, "img_size=32,patch_size=8,depth=2")

(``tests/models/conftest.py`` puts this folder on ``sys.path``.) On the shared 2-core machine mark family test
files ``pytestmark = pytest.mark.usefixtures("one_thread")``: tiny models on two busy threads run many times slower.
Every check compares a model with itself or with timm's own bookkeeping (``feature_info``, ``pretrained_cfg``), so
a family that breaks a convention fails here.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import visattn.models  # noqa: F401  (registers visattn_* in timm)

ATOL = 1e-5
"""float32 tolerance between two evaluations of the same computation (grad checkpointing, forward split in two)."""


def _timm():
    import timm

    return timm


def _images(img_size: int | tuple[int, int], batch: int = 2, seed: int = 0) -> torch.Tensor:
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _check_feature_map(tensor: torch.Tensor, info: dict[str, Any], img_hw: tuple[int, int], fmt: str,
                       where: str) -> None:
    channel_dim, h_dim, w_dim = (1, 2, 3) if fmt == "NCHW" else (3, 1, 2)
    assert tensor.dim() == 4, f"{where}: expected a 4-d feature map, got shape {tuple(tensor.shape)}"
    assert tensor.shape[channel_dim] == info["num_chs"], (
        f"{where}: {tensor.shape[channel_dim]} channels, feature_info says {info['num_chs']} ({info})")
    for dim, side in ((h_dim, img_hw[0]), (w_dim, img_hw[1])):
        reduction = info["reduction"]
        assert side // reduction <= tensor.shape[dim] <= math.ceil(side / reduction), (
            f"{where}: side {tensor.shape[dim]} of an image side {side}, feature_info says reduction {reduction}")


def check_timm_contract(model_name: str, img_size: int | tuple[int, int], *, out_indices: Sequence[int] | None = None,
                        feature_fmt: str = "NCHW", intermediates_fmt: str | None = None, check_meta: bool = True,
                        pass_img_size: bool = True,
                        **kwargs: Any) -> nn.Module:
    """Create ``model_name`` with ``kwargs`` (and ``img_size=img_size`` when ``pass_img_size``, for families whose
    constructor takes it) through ``timm.create_model`` and check timm's conventions on images of ``img_size``;
    return the model (eval mode, classifier reset to 5 classes). ``feature_fmt`` is the layout of the feature maps,
    ``intermediates_fmt`` that of ``forward_intermediates`` (default ``feature_fmt``; timm's Swin gives NHWC maps
    from ``features_only`` and NCHW from ``forward_intermediates``).

    Checked: logits ``(B, num_classes)``; ``forward_head(forward_features(x)) == forward(x)``; ``pretrained_cfg``
    names the architecture; ``features_only=True`` with ``out_indices`` (all of ``feature_info`` when None) gives
    maps whose channels and reductions are those ``feature_info`` states, the same as the classifier model's
    ``feature_info`` at those indices; ``forward_intermediates`` (when the model has it) returns
    ``forward_features`` and one map per ``feature_info`` entry; ``reset_classifier(0)`` gives the pre-logits
    features and ``reset_classifier(5)`` 5 logits; ``set_grad_checkpointing()`` recomputes in backward (forward
    hooks run again) with equal outputs and gradients; construction under ``torch.device("meta")`` allocates
    nothing and its forward gives the logits' shape.
    """
    timm = _timm()
    assert feature_fmt in ("NCHW", "NHWC"), feature_fmt
    if pass_img_size:
        kwargs = {"img_size": img_size, **kwargs}
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, **kwargs).eval()
    x = _images(img_size)
    img_hw = tuple(x.shape[-2:])
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (x.shape[0], model.num_classes), (tuple(logits.shape), model.num_classes)
        assert torch.isfinite(logits).all()
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), logits, atol=ATOL, rtol=0)
        pre_logits = model.forward_head(features, pre_logits=True)

    cfg = model.pretrained_cfg
    assert isinstance(cfg, dict) and cfg.get("architecture") == model_name, cfg
    assert len(cfg.get("input_size", ())) == 3 and "num_classes" in cfg and "mean" in cfg and "std" in cfg, cfg

    infos = list(model.feature_info)
    assert infos, f"{model_name} has an empty feature_info"
    indices = tuple(range(len(infos))) if out_indices is None else tuple(out_indices)
    torch.manual_seed(0)
    feature_model = timm.create_model(model_name, pretrained=False, features_only=True, out_indices=indices,
                                      **kwargs).eval()
    with torch.no_grad():
        maps = feature_model(x)
    feature_infos = feature_model.feature_info.get_dicts()
    assert len(maps) == len(indices) == len(feature_infos), (len(maps), indices, len(feature_infos))
    for i, (index, tensor, info) in enumerate(zip(indices, maps, feature_infos, strict=True)):
        assert (info["num_chs"], info["reduction"]) == (infos[index]["num_chs"], infos[index]["reduction"]), (
            info, infos[index])
        _check_feature_map(tensor, info, img_hw, feature_fmt, f"features_only output {i} (out_indices {index})")

    if hasattr(model, "forward_intermediates"):
        with torch.no_grad():
            final, intermediates = model.forward_intermediates(x)
            torch.testing.assert_close(final, features, atol=ATOL, rtol=0)
            assert len(intermediates) == len(infos), (len(intermediates), len(infos))
            for i, (tensor, info) in enumerate(zip(intermediates, infos, strict=True)):
                _check_feature_map(tensor, info, img_hw, intermediates_fmt or feature_fmt,
                                   f"forward_intermediates output {i}")
            last = model.forward_intermediates(x, indices=[len(infos) - 1], intermediates_only=True)
            torch.testing.assert_close(last[0], intermediates[-1], atol=ATOL, rtol=0)

    _check_grad_checkpointing(model, x)

    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == pre_logits.shape, (tuple(model(x).shape), tuple(pre_logits.shape))
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(x).shape == (x.shape[0], 5)
    assert model.num_classes == 5

    if check_meta:
        with torch.device("meta"):
            meta_model = timm.create_model(model_name, pretrained=False, **kwargs)
        assert all(p.device.type == "meta" for p in meta_model.parameters())
        assert all(b.device.type == "meta" for b in meta_model.buffers())
        out = meta_model.eval()(torch.empty(x.shape, device="meta"))
        assert out.shape == logits.shape and out.device.type == "meta"
    return model


def _check_grad_checkpointing(model: nn.Module, x: torch.Tensor) -> None:
    """Train-mode forward and backward with and without grad checkpointing: equal outputs and gradients, and the
    checkpointed run calls its modules' forwards again during backward (else nothing was checkpointed)."""
    plain = copy.deepcopy(model).train()
    checkpointed = copy.deepcopy(model).train()
    checkpointed.set_grad_checkpointing(True)
    results = []
    for net in (plain, checkpointed):
        calls: list[nn.Module] = []
        hooks = [m.register_forward_hook(lambda module, *_, seen=calls: seen.append(module)) for m in net.modules()]
        torch.manual_seed(0)
        out = net(x)
        after_forward = len(calls)
        out.float().square().sum().backward()
        for hook in hooks:
            hook.remove()
        grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads, len(calls) - after_forward))
    (out_plain, grads_plain, recomputed_plain), (out_ck, grads_ck, recomputed_ck) = results
    assert recomputed_plain == 0
    assert recomputed_ck > 0, "set_grad_checkpointing(True) recomputed nothing in backward"
    torch.testing.assert_close(out_ck, out_plain, atol=ATOL, rtol=0)
    assert grads_ck.keys() == grads_plain.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_ck[name], grads_plain[name], atol=1e-4, rtol=1e-4, msg=name)


def count_params_meta(model_name: str, **kwargs: Any) -> int:
    """Parameters of ``timm.create_model(model_name, **kwargs)``, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = _timm().create_model(model_name, pretrained=False, **kwargs)
    return sum(p.numel() for p in model.parameters())


def digits(img_size: int, count: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` of scikit-learn's 8x8 digits, upsampled (bilinear) to ``img_size``, repeated over RGB and
    standardised, with their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images[:count], dtype=torch.float32)[:, None] / 16
    x = nn.functional.interpolate(x, size=img_size, mode="bilinear", align_corners=False)
    x = ((x - x.mean()) / x.std()).expand(-1, 3, -1, -1).contiguous()
    return x, torch.tensor(data.target[:count])


def digits_loss_falls(model: nn.Module, img_size: int, steps: int = 20, lr: float = 1e-3,
                      factor: float = 0.8) -> list[float]:
    """Train ``model`` (its classifier reset to 10 classes if it has another count) for ``steps`` full-batch AdamW
    steps on 64 digits at ``img_size``; assert the mean of the last three losses is below ``factor`` times the
    first; return the losses."""
    if getattr(model, "num_classes", 10) != 10:
        model.reset_classifier(10)
    x, y = digits(img_size)
    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses), losses
    assert sum(losses[-3:]) / 3 < factor * losses[0], f"loss did not fall: {losses}"
    return losses


def check_lens_cli(model_name: str, tmp_path: Path, model_kwargs: str = "", min_layers: int = 1) -> dict[str, Any]:
    """Run ``visattn lens IMAGE --model model_name --model-kwargs model_kwargs`` in-process on a generated 64x64
    picture (resized by the model's data config); assert it exits 0, writes the report and the four pictures, and
    measures at least ``min_layers`` attention layers; return metrics.json."""
    import numpy as np
    from PIL import Image

    from visattn import cli

    image = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    out = tmp_path / "lens"
    args = ["lens", str(image), "--model", model_name, "--out", str(out)]
    if model_kwargs:
        args += ["--model-kwargs", model_kwargs]
    assert cli.main(args) == 0
    for name in ("report.html", "attention.png", "heads.png", "metrics.png", "similarity.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "metrics.json").read_text())
    layers = {layer for values in data["per_layer"].values() for layer in values}
    assert len(layers) >= min_layers, data["per_layer"]
    assert model_name in (out / "report.html").read_text(encoding="utf-8")
    return data


def check_state_dict_layout_is_timms(model_name: str, timm_name: str, ordered: bool = True) -> None:
    """Built on the meta device, ``model_name`` and timm's ``timm_name`` have the same state-dict keys (in the same
    order when ``ordered``) with the same shapes, so timm's checkpoints load unchanged."""
    with torch.device("meta"):
        ours = _timm().create_model(model_name).state_dict()
        theirs = _timm().create_model(timm_name).state_dict()
    assert (list(ours) == list(theirs)) if ordered else (ours.keys() == theirs.keys())
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def load_pretrained_file(model_name: str, checkpoint: Any, tmp_path: Path, **kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, pretrained=True, **kwargs)`` from ``checkpoint`` (a state dict, or whatever an
    official checkpoint file holds) saved as ``tmp_path / "checkpoint.pth"``: timm's loader, the model's
    ``checkpoint_filter_fn`` and the strict ``load_state_dict`` run as for a downloaded checkpoint."""
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    return _timm().create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


def check_meta_build_matches(model_name: str, model: nn.Module, x: torch.Tensor, **kwargs: Any) -> None:
    """Meta construction, ``to_empty``, timm's ``reinit_non_persistent_buffers`` and ``model``'s state dict give
    ``model``'s logits on ``x`` (``kwargs``: what ``model`` was built with)."""
    import timm
    from timm.models._manipulate import reinit_non_persistent_buffers

    with torch.device("meta"):
        meta = timm.create_model(model_name, **kwargs)
    meta = meta.to_empty(device="cpu")
    reinit_non_persistent_buffers(meta)
    meta.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(meta.eval()(x), model.eval()(x), atol=1e-5, rtol=0)


def check_lens_matches(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, num_layers: int) -> None:
    """visattn.lens finds the same attention layers in ``ours`` and ``theirs`` (same weights), captures equal maps
    and leaves both outputs equal, with no instance ``forward`` left behind."""
    from visattn import lens

    layers = lens.attention_layers(ours)
    assert [info.name for info in layers] == [info.name for info in lens.attention_layers(theirs)]
    assert len(layers) == num_layers
    records = []
    for model in (ours, theirs):
        with lens.capture(model, what=("probs",)) as rec, torch.no_grad():
            records.append((model(x), rec))
    (out_ours, rec_ours), (out_theirs, rec_theirs) = records
    for i in range(len(layers)):
        torch.testing.assert_close(rec_ours.get("probs", i).tensor, rec_theirs.get("probs", i).tensor)
    torch.testing.assert_close(out_ours, out_theirs)
    assert all("forward" not in m.__dict__ for m in ours.modules())
