"""RTNet (arXiv 2102.02717): the released layout (which blocks are hybrid, dilation, head), warps and restores with
the background flip, label warping, errors and meta-device construction."""

from __future__ import annotations

import pytest
import timm
import torch
from contract import count_params_meta

from visattn.models.rtnet import WARPS, RTNet
from visattn.transforms.tanh_polar import roi_tanh_polar_restore, roi_tanh_polar_warp

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**kwargs):
    args = dict(num_classes=4, layers=(1, 2, 2, 2), warp_size=32, base_width=8) | kwargs
    return RTNet(**args)


def test_hybrid_blocks_are_the_non_first_blocks_of_stages_2_to_4():
    model = _tiny()
    hybrid = [[block.hybrid for block in stage] for stage in model.backbone.stages]
    assert hybrid == [[False], [False, True], [False, True], [False, True]]
    assert [[block.conv_cart[0].dilation[0] for block in stage] for stage in model.backbone.stages] == [
        [1], [1, 1], [1, 2], [2, 4]]
    assert all(not block.hybrid for stage in _tiny(warp="none").backbone.stages for block in stage)


def test_warps_share_one_architecture():
    counts = {warp: sum(p.numel() for p in _tiny(warp=warp).parameters()) for warp in WARPS}
    assert len(set(counts.values())) == 1, counts


def test_output_stride_8_and_logits_in_the_warped_frame():
    torch.manual_seed(0)
    model = _tiny().eval()
    images = torch.rand(2, 3, 40, 56)
    rois = torch.tensor([[10.0, 8.0, 30.0, 32.0], [20.0, 5.0, 50.0, 30.0]])
    with torch.no_grad():
        features = model.backbone(model.warp_images(images, rois), rois)
        logits = model(images, rois)
    assert features.shape == (2, 8 * 8 * 4, 4, 4)
    assert logits.shape == (2, 4, 32, 32)


def test_forward_is_warp_then_network_on_the_warped_images():
    torch.manual_seed(1)
    model = _tiny().eval().double()
    images = torch.rand(1, 3, 24, 30, dtype=torch.float64)
    rois = torch.tensor([[5.0, 4.0, 20.0, 19.0]], dtype=torch.float64)
    warped = roi_tanh_polar_warp(images, rois, (32, 32), keep_aspect_ratio=True)
    with torch.no_grad():
        torch.testing.assert_close(model(images, rois), model.forward_warped(warped, rois), rtol=0, atol=1e-12)


def test_predict_restores_probabilities_with_the_background_flip():
    """predict = restore of softmax with channel 0 flipped before and after; the result sums to 1 per pixel."""
    torch.manual_seed(2)
    model = _tiny().eval().double()
    images = torch.rand(1, 3, 24, 30, dtype=torch.float64)
    rois = torch.tensor([[5.0, 4.0, 20.0, 19.0]], dtype=torch.float64)
    with torch.no_grad():
        probs = model(images, rois).softmax(1)
        flipped = probs.clone()
        flipped[:, 0] = 1 - flipped[:, 0]
        expected = roi_tanh_polar_restore(flipped, rois, (24, 30), keep_aspect_ratio=True)
        expected[:, 0] = 1 - expected[:, 0]
        restored = model.predict(images, rois)
    torch.testing.assert_close(restored, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(restored.sum(1), torch.ones(1, 24, 30, dtype=torch.float64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("warp", WARPS)
def test_labels_survive_warp_and_restore(warp):
    """Labels warped to a fine frame and restored (one-hot, background flip) agree with the originals on most
    pixels (the tanh warps compress the periphery, so not all)."""
    from visattn.tasks.face_parsing import synthetic_faces

    images, labels, boxes = synthetic_faces(2, 48, torch.Generator().manual_seed(0))
    model = RTNet(num_classes=11, layers=(1, 1, 1, 1), warp_size=128, base_width=4, warp=warp)
    warped = model.warp_labels(labels, boxes)
    assert warped.shape == (2, 128, 128) and warped.dtype == torch.int64
    onehot = torch.nn.functional.one_hot(warped, 11).permute(0, 3, 1, 2).double()
    restored = model.restore(torch.log(onehot.clamp_min(1e-9)), boxes.double(), (48, 48)).argmax(1)
    assert (restored == labels).float().mean() > 0.9


@pytest.mark.parametrize(("rois", "match"), [
    (torch.tensor([[100.0, 100.0, 120.0, 130.0]]), "overlap"),
    (torch.tensor([[10.0, 10.0, 5.0, 20.0]]), "x1 < x2"),
    (torch.tensor([10.0, 10.0, 20.0, 20.0]), "rois"),
])
def test_bad_boxes_raise(rois, match):
    with pytest.raises(ValueError, match=match):
        _tiny()(torch.rand(1, 3, 32, 32), rois)


@pytest.mark.parametrize(("kwargs", "error"), [({"warp": "log_polar"}, ValueError), ({"num_classes": 1}, ValueError),
                                               ({"layers": (1, 1, 1)}, TypeError), ({"warp_size": 4}, ValueError)])
def test_bad_configs_raise(kwargs, error):
    with pytest.raises(error):
        _tiny(**kwargs)


def test_bad_images_raise():
    with pytest.raises(ValueError, match="images"):
        _tiny()(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="labels"):
        _tiny().warp_labels(torch.rand(1, 32, 32))


def test_meta_device_construction_and_forward():
    with torch.device("meta"):
        model = timm.create_model("visattn_rtnet50", pretrained=False)
        logits = model(torch.empty(1, 3, 512, 512))
    assert logits.shape == (1, 11, 512, 512) and logits.device.type == "meta"


def test_published_sizes_parameter_counts():
    """ResNet-50/101 layouts with HybridBlocks (two half-width 3x3 branches) and the FCN head (2048 -> 512 -> 11):
    27,293,259 and 41,271,883 parameters; the paper's figures could not be read (published.py records None)."""
    assert count_params_meta("visattn_rtnet50") == 27_293_259
    assert count_params_meta("visattn_rtnet101") == 41_271_883
    head = 2048 * 512 * 9 + 2 * 512 + 512 * 11 + 11
    assert count_params_meta("visattn_rtnet50") - head == count_params_meta("visattn_rtnet50", num_classes=2) - (
        2048 * 512 * 9 + 2 * 512 + 512 * 2 + 2)
