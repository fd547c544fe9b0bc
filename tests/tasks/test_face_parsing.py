"""visattn.tasks.face_parsing: synthetic faces, the folder loader on a folder written here, IoU/F1 against a naive
count, errors, and a tiny RTNet whose loss falls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visattn.models.rtnet import RTNet
from visattn.tasks import face_parsing as fp

pytestmark = pytest.mark.usefixtures("one_thread")


def test_synthetic_faces_are_seeded_and_labelled():
    one = fp.synthetic_faces(3, (40, 56), torch.Generator().manual_seed(0))
    two = fp.synthetic_faces(3, (40, 56), torch.Generator().manual_seed(0))
    other = fp.synthetic_faces(3, (40, 56), torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    assert not torch.equal(one[1], other[1])
    images, labels, boxes = one
    assert images.shape == (3, 3, 40, 56) and labels.shape == (3, 40, 56) and boxes.shape == (3, 4)
    assert 0 <= images.min() and images.max() <= 1
    assert labels.min() >= 0 and labels.max() < len(fp.CLASSES)
    for label, box in zip(labels, boxes, strict=True):
        assert {1, 10} <= set(label.unique().tolist()), "skin and hair in every scene"
        ys, xs = torch.nonzero((label > 0) & (label != 10), as_tuple=True)
        x1, y1, x2, y2 = box.tolist()
        assert x1 - 2 <= xs.min() and xs.max() <= x2 + 2 and y1 - 2 <= ys.min() and ys.max() <= y2 + 2


def _naive_scores(pred: np.ndarray, target: np.ndarray, k: int):
    iou, f1 = [], []
    for c in range(k):
        tp = int(((pred == c) & (target == c)).sum())
        fp_ = int(((pred == c) & (target != c)).sum())
        fn = int(((pred != c) & (target == c)).sum())
        iou.append(tp / (tp + fp_ + fn) if tp + fp_ + fn else float("nan"))
        f1.append(2 * tp / (2 * tp + fp_ + fn) if tp + fp_ + fn else float("nan"))
    return iou, f1


def test_segmentation_scores_match_a_naive_count():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 9, 11), generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.7, target, torch.randint(0, 4, target.shape,
                                                                                            generator=g))
    scores = fp.segmentation_scores(pred, target, 5)
    iou, f1 = _naive_scores(pred.numpy(), target.numpy(), 5)
    np.testing.assert_allclose(scores["iou"], iou, rtol=1e-12)
    np.testing.assert_allclose(scores["f1"], f1, rtol=1e-12)
    assert np.isnan(scores["iou"][4]), "a class absent from both is NaN"
    assert scores["miou"] == pytest.approx(np.mean(iou[1:4]))
    assert scores["mean_f1"] == pytest.approx(np.mean(f1[1:4]))
    assert fp.segmentation_scores(target, target, 4)["miou"] == 1.0


def test_folder_loader_reads_the_standard_layout(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    images, labels, _ = fp.synthetic_faces(2, (30, 40), torch.Generator().manual_seed(3))
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            tmp_path / "images" / f"face{i}.png")
        Image.fromarray(label.numpy().astype(np.uint8)).save(tmp_path / "labels" / f"face{i}.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "labels" / "orphan.png")
    data = fp.FaceParsingFolder(tmp_path, box_margin=0.0)
    assert len(data) == 2
    image, label, box = data[1]
    assert image.shape == (3, 30, 40) and label.dtype == torch.int64
    torch.testing.assert_close(image, images[1], rtol=0, atol=0.5 / 255 + 1e-6)
    assert torch.equal(label, labels[1])
    ys, xs = torch.nonzero((label > 0) & (label != 10), as_tuple=True)
    assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item(), ys.max().item()]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    batch = next(iter(loader))
    assert batch[0].shape == (2, 3, 30, 40) and batch[2].shape == (2, 4)


def test_folder_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="images/ and labels/"):
        fp.FaceParsingFolder(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(ValueError, match="no labels"):
        fp.FaceParsingFolder(tmp_path)


@pytest.mark.parametrize(("kwargs", "match"), [({"count": 0}, "count"), ({"size": 8}, "size"),
                                               ({"scale": (0.3, 0.2)}, "scale")])
def test_synthetic_faces_bad_arguments(kwargs, match):
    args = dict(count=1, size=32) | kwargs
    with pytest.raises(ValueError, match=match):
        fp.synthetic_faces(**args)


def test_segmentation_scores_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        fp.segmentation_scores(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2)


def test_tiny_rtnet_loss_falls_on_synthetic_faces():
    torch.manual_seed(0)
    images, labels, boxes = fp.synthetic_faces(4, 48, torch.Generator().manual_seed(0))
    model = RTNet(num_classes=11, layers=(1, 1, 1, 1), warp_size=32, base_width=8)
    target = model.warp_labels(labels, boxes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(model(images, boxes), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses
    scores = fp.evaluate_face_parser(model, images, labels, boxes)
    assert 0 <= scores["miou"] <= 1


def test_training_entry_reports_scores_in_the_image_frame():
    torch.manual_seed(0)
    model = RTNet(num_classes=11, layers=(1, 1, 1, 1), warp_size=32, base_width=4)
    report = fp.train_face_parser(model, steps=2, batch_size=2, size=32, eval_count=2, log_every=1)
    assert len(report.losses) == 2 and all(np.isfinite(report.losses))
    assert len(report.scores["iou"]) == 11 and 0 <= report.scores["miou"] <= 1
