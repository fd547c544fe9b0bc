"""visattn.tasks.detection: seeded balanced scenes in both domains, DETR labels, pycocotools mAP on known answers,
attention distances, errors, and a tiny DETR with the refiner whose fine-tuning loss falls."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from visattn.models.cdfsod import CenterPeripheryRefiner, attach_cdfsod
from visattn.tasks import detection as det

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("domain", ["source", "target"])
def test_scenes_are_seeded_balanced_and_boxed(domain):
    one = det.shapes_scenes(12, domain, 48, torch.Generator().manual_seed(0))
    two = det.shapes_scenes(12, domain, 48, torch.Generator().manual_seed(0))
    other = det.shapes_scenes(12, domain, 48, torch.Generator().manual_seed(1))
    assert torch.equal(one[0], two[0]) and all(torch.equal(a, b) for a, b in zip(one[1], two[1], strict=True))
    assert not torch.equal(one[0], other[0])
    images, boxes, labels = one
    assert images.shape == (12, 3, 48, 48) and 0 <= images.min() and images.max() <= 1
    counts = torch.bincount(torch.cat(labels), minlength=3)
    assert counts.max() - counts.min() <= 1, counts
    for b in boxes:
        assert ((b[:, :2] >= 0) & (b[:, 2:] <= 48)).all()
        sides = b[:, 2:] - b[:, :2]
        assert ((sides >= 0.15 * 48) & (sides <= 0.4 * 48)).all(), sides


def test_domains_differ_in_texture():
    src = det.shapes_scenes(8, "source", 64, torch.Generator().manual_seed(0))[0]
    tgt = det.shapes_scenes(8, "target", 64, torch.Generator().manual_seed(0))[0]
    grad = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert grad(tgt) > 1.5 * grad(src)  # stripes, noise and bars: 1.9x at this seed


def test_detr_labels_are_normalised_centres():
    labels = det.to_detr_labels([torch.tensor([[8.0, 4.0, 24.0, 12.0]])], [torch.tensor([2])], (16, 32))
    torch.testing.assert_close(labels[0]["boxes"], torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    assert labels[0]["class_labels"].tolist() == [2]
    with pytest.raises(ValueError, match="inside the 16x32 image"):
        det.to_detr_labels([torch.tensor([[8.0, 4.0, 40.0, 12.0]])], [torch.tensor([0])], (16, 32))


def _map(preds, boxes, labels):
    with contextlib.redirect_stdout(io.StringIO()):
        return det.mean_average_precision(preds, boxes, labels)


def test_map_on_known_answers():
    boxes = [torch.tensor([[2.0, 2.0, 20.0, 20.0], [30.0, 30.0, 50.0, 44.0]]), torch.tensor([[5.0, 8.0, 25.0, 30.0]])]
    labels = [torch.tensor([0, 1]), torch.tensor([2])]
    perfect = [{"boxes": b, "scores": torch.ones(len(b)), "labels": lab} for b, lab in zip(boxes, labels, strict=True)]
    assert _map(perfect, boxes, labels) == pytest.approx({"map": 1.0, "map_50": 1.0})
    wrong_class = [{**p, "labels": (p["labels"] + 1) % 3} for p in perfect]
    assert _map(wrong_class, boxes, labels) == {"map": 0.0, "map_50": 0.0}
    # shifted 5 pixels: IoU 13/23, 15/25 and 15/25, above 0.5 but below most COCO thresholds
    shifted = [{**p, "boxes": p["boxes"] + torch.tensor([5.0, 0.0, 5.0, 0.0])} for p in perfect]
    result = _map(shifted, boxes, labels)
    assert 0 < result["map"] < 0.5 and result["map_50"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one entry per image"):
        det.mean_average_precision(perfect[:1], boxes, labels)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="domain"):
        det.shapes_scenes(2, "art")
    with pytest.raises(ValueError, match="count"):
        det.shapes_scenes(0)
    with pytest.raises(ValueError, match="stride must be 8 or 16"):
        det.tiny_detr(stride=4)
    with pytest.raises(ValueError, match="kind must be 'detr' or 'conditional'"):
        det.tiny_detr(kind="deformable")
    with pytest.raises(TypeError, match="DETR-family"):
        det.trainable_backbone(torch.nn.Linear(2, 2))
    model = det.tiny_detr(d_model=16, layers=1, queries=4)
    images = torch.rand(2, 3, 48, 48)
    with pytest.raises(ValueError, match="support set is empty"):
        det.finetune_detector(model, images, [torch.zeros(0, 4)] * 2, [torch.zeros(0)] * 2, steps=1)
    with pytest.raises(ValueError, match="one entry per image"):
        det.finetune_detector(model, images, [torch.zeros(0, 4)], [torch.zeros(0)], steps=1)


def test_tiny_detr_with_refiner_trains_and_reports_distances():
    torch.manual_seed(0)
    images, boxes, labels = det.shapes_scenes(6, "target", 48, torch.Generator().manual_seed(0))
    model = det.tiny_detr(d_model=16, layers=1, queries=4)
    refiner = CenterPeripheryRefiner(16, 3, torch.randn(3, 8))
    attach_cdfsod(model, refiner)
    losses = det.finetune_detector(model, images, boxes, labels, steps=30, lr=3e-3, batch_size=6, refiner=refiner,
                                    max_grad_norm=1.0)
    assert sum(losses[-5:]) < 0.85 * sum(losses[:5]), losses
    distances = det.attention_distances(model, images)
    assert distances.shape == (1,) and (distances > 0).all() and (distances < 3 * 2**0.5).all()
    with torch.no_grad():
        own = model(pixel_values=images, output_attentions=True).encoder_attentions[0].double()
    ys, xs = torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], -1).double()
    naive = (own * torch.cdist(pos, pos)).sum(dim=(-2, -1)).mean() / 9
    torch.testing.assert_close(distances[0].double(), naive, rtol=1e-5, atol=1e-6)
    preds = det.predict(model, images)
    assert preds[0]["boxes"].shape == (4, 4) and preds[0]["scores"].shape == (4,)


@pytest.mark.parametrize("kind", ["detr", "conditional"])
def test_tiny_detr_backbone_is_trainable_and_normalised(kind):
    model = det.tiny_detr(d_model=16, layers=1, queries=4, kind=kind)
    backbone = model.model.backbone.model
    names = {type(m).__name__ for m in backbone.modules()}
    assert not any(n.endswith("FrozenBatchNorm2d") for n in names) and "GroupNorm" in names, names
    assert all(p.requires_grad for p in model.parameters())
    # the stem's convolution (frozen by transformers for pretrained backbones) now receives gradients
    stem = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    images, boxes, labels = det.shapes_scenes(2, "source", 48, torch.Generator().manual_seed(0))
    model(pixel_values=images, labels=det.to_detr_labels(boxes, labels, (48, 48))).loss.backward()
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0


def test_conditional_detr_trains_and_predicts_per_class():
    torch.manual_seed(0)
    images, boxes, labels = det.shapes_scenes(6, "source", 48, torch.Generator().manual_seed(0))
    model = det.tiny_detr(d_model=16, layers=1, queries=4, kind="conditional")
    losses = det.finetune_detector(model, images, boxes, labels, steps=30, lr=3e-3, batch_size=6, max_grad_norm=1.0)
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses
    preds = det.predict(model, images)
    # one detection per (query, class): 4 queries x 3 classes, scores are sigmoid probabilities
    assert preds[0]["boxes"].shape == (12, 4) and preds[0]["labels"].tolist() == [0, 1, 2] * 4
    assert ((preds[0]["scores"] > 0) & (preds[0]["scores"] < 1)).all()
    assert ((preds[0]["boxes"] >= 0) & (preds[0]["boxes"] <= 48)).all()
    # the lens records Conditional DETR's encoder self-attention too (a 3 x 3 grid at stride 16)
    distances = det.attention_distances(model, images)
    assert distances.shape == (1,) and (distances > 0).all() and (distances < 3 * 2**0.5).all()


def test_refiner_trains_at_its_own_learning_rate():
    torch.manual_seed(0)
    images, boxes, labels = det.shapes_scenes(4, "target", 48, torch.Generator().manual_seed(0))
    model = det.tiny_detr(d_model=16, layers=1, queries=4)
    refiner = CenterPeripheryRefiner(16, 3)
    attach_cdfsod(model, refiner)
    before = [p.detach().clone() for p in refiner.parameters()]
    head = model.class_labels_classifier.weight.detach().clone()
    det.finetune_detector(model, images, boxes, labels, steps=2, lr=1e-2, refiner=refiner, refiner_lr=0.0)
    assert all(torch.equal(a, b) for a, b in zip(before, refiner.parameters(), strict=True))
    assert not torch.equal(head, model.class_labels_classifier.weight)
    det.finetune_detector(model, images, boxes, labels, steps=2, lr=0.0, refiner=refiner, refiner_lr=1e-2)
    assert refiner.ppr.gamma.abs() > 0 and refiner.ncm.strength.abs() > 0
