"""visattn.models.cdfsod: each module against a naive float64 loop, gradients, the meta device, attach/detach on a
tiny random DETR, and errors for boxes outside images and empty support sets."""

from __future__ import annotations

import math

import pytest
import torch

from visattn.models import cdfsod

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64


def _support(seed: int = 0, dim: int = 5, h: int = 6, w: int = 7):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, dim, h, w, generator=g, dtype=D)
    boxes = [torch.tensor([[4.0, 8.0, 20.0, 30.0]], dtype=D), torch.tensor([[10.0, 2.0, 30.0, 14.0],
                                                                            [0.0, 20.0, 12.0, 48.0]], dtype=D)]
    labels = [torch.tensor([1]), torch.tensor([0, 1])]
    return features, boxes, labels, (h * 8, w * 8)


def test_prototypes_of_a_linear_map_are_the_box_centres():
    # bilinear sampling of a linear field is exact and RoIAlign's samples are symmetric about the box centre,
    # so each RoI's mean equals the field at the centre (in feature coordinates, shifted by aligned=True's -0.5)
    h, w, stride = 9, 11, 4
    ys, xs = torch.meshgrid(torch.arange(h, dtype=D), torch.arange(w, dtype=D), indexing="ij")
    field = torch.stack([2 * xs - ys + 1, 0.5 * ys + 3])[None].repeat(2, 1, 1, 1)
    boxes = [torch.tensor([[8.0, 8.0, 24.0, 20.0]], dtype=D), torch.tensor([[12.0, 6.0, 28.0, 30.0],
                                                                            [6.0, 10.0, 18.0, 26.0]], dtype=D)]
    labels = [torch.tensor([0]), torch.tensor([1, 0])]
    protos = cdfsod.class_prototypes(field, boxes, labels, 2, (h * stride, w * stride))

    def at_centre(box):
        cx, cy = (box[0] + box[2]) / 2 / stride - 0.5, (box[1] + box[3]) / 2 / stride - 0.5
        return torch.stack([2 * cx - cy + 1, 0.5 * cy + 3])

    expect0 = (at_centre(boxes[0][0]) + at_centre(boxes[1][1])) / 2
    torch.testing.assert_close(protos[0], expect0)
    torch.testing.assert_close(protos[1], at_centre(boxes[1][0]))


def test_negative_context_matches_a_loop():
    features, boxes, _, size = _support()
    got = cdfsod.negative_context(features, boxes, size)
    total, count = torch.zeros(features.shape[1], dtype=D), 0
    sy, sx = size[0] / features.shape[2], size[1] / features.shape[3]
    for b in range(features.shape[0]):
        for i in range(features.shape[2]):
            for j in range(features.shape[3]):
                cy, cx = (i + 0.5) * sy, (j + 0.5) * sx
                if not any(x1 <= cx <= x2 and y1 <= cy <= y2 for x1, y1, x2, y2 in boxes[b].tolist()):
                    total += features[b, :, i, j]
                    count += 1
    torch.testing.assert_close(got, total / count)


def test_ppr_matches_a_loop():
    torch.manual_seed(0)
    ppr = cdfsod.PositivePatternRefinement(6, gamma=0.7).double()
    x, p = torch.randn(2, 5, 6, dtype=D), torch.randn(3, 6, dtype=D)
    got = ppr(x, p)
    wq, wk, wv = ppr.q.weight, ppr.k.weight, ppr.v.weight
    for b in range(2):
        for i in range(5):
            scores = torch.stack([(wq @ x[b, i]) @ (wk @ p[k]) / math.sqrt(6) for k in range(3)])
            a = torch.exp(scores) / torch.exp(scores).sum()
            expect = x[b, i] + 0.7 * sum(a[k] * (wv @ p[k]) for k in range(3))
            torch.testing.assert_close(got[b, i], expect)


def test_ncm_matches_a_loop():
    ncm = cdfsod.NegativeContextModulation(scale=3.0, strength=0.4).double()
    with torch.no_grad():
        ncm.bias.fill_(-0.2)
    g = torch.Generator().manual_seed(1)
    x, refined = torch.randn(2, 7, 4, generator=g, dtype=D), torch.randn(2, 7, 4, generator=g, dtype=D)
    p, n = torch.randn(3, 4, generator=g, dtype=D), torch.randn(4, generator=g, dtype=D)
    got = ncm(refined, x, p, n)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    for b in range(2):
        for i in range(7):
            s = cos(x[b, i], n) - max(cos(x[b, i], p[k]) for k in range(3))
            expect = refined[b, i] * (1 - 0.4 * sig(3.0 * s - 0.2))
            torch.testing.assert_close(got[b, i], expect)


def test_tsa_matches_a_loop():
    torch.manual_seed(2)
    tsa = cdfsod.TextualSemanticAlignment(4, 3, temperature=0.2).double().requires_grad_(False)
    torch.nn.init.normal_(tsa.inject.weight)
    p, t = torch.randn(3, 4, dtype=D), torch.randn(3, 3, dtype=D)
    torch.testing.assert_close(tsa(p, t), p + t @ tsa.inject.weight.T)
    loss = 0.0
    for k in range(3):
        a = tsa.align.weight @ p[k]
        logits = [float(a @ t[j] / (a.norm() * t[j].norm())) / 0.2 for j in range(3)]
        loss += -logits[k] + math.log(sum(math.exp(v) for v in logits))
    torch.testing.assert_close(tsa.loss(p, t), torch.tensor(loss / 3, dtype=D))


def test_refiner_gradients():
    torch.manual_seed(3)
    features, boxes, labels, size = _support(dim=3)
    refiner = cdfsod.CenterPeripheryRefiner(3, 2, torch.randn(2, 3, dtype=D)).double()
    torch.nn.init.normal_(refiner.tsa.inject.weight)
    with torch.no_grad():
        refiner.ppr.gamma.fill_(0.6)
        refiner.ncm.strength.fill_(0.4)
    x = torch.randn(1, 3, 2, 3, dtype=D, requires_grad=True)
    features.requires_grad_(True)

    def f(x, features):
        refiner.set_support(features, boxes, labels, size)
        return refiner(x), refiner.alignment_loss()

    assert torch.autograd.gradcheck(f, (x, features))


def test_refiner_runs_on_meta():
    refiner = cdfsod.CenterPeripheryRefiner(8, 3).to("meta")
    refiner.prototypes, refiner.negative = torch.empty(3, 8, device="meta"), torch.empty(8, device="meta")
    out = refiner(torch.empty(2, 8, 5, 3, device="meta"))
    assert out.shape == (2, 8, 5, 3) and out.device.type == "meta"


def _tiny_detr(kind: str = "detr"):
    from visattn.tasks.detection import tiny_detr

    torch.manual_seed(0)
    return tiny_detr(d_model=16, layers=1, queries=4, kind=kind).eval()


@pytest.mark.parametrize("kind", ["detr", "conditional"])
def test_attach_detach_and_disabled_leave_outputs_unchanged(kind):
    model = _tiny_detr(kind)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(pixel_values=x).logits
        refiner = cdfsod.CenterPeripheryRefiner(16, 3, torch.randn(3, 8))
        support = cdfsod.detr_feature_map(model, x)
        refiner.set_support(support, [torch.tensor([[4.0, 4.0, 30.0, 40.0]]), torch.tensor([[10.0, 0.0, 64.0, 20.0],
                                                                                        [0.0, 30.0, 20.0, 64.0]])],
                            [torch.tensor([0]), torch.tensor([1, 2])], (64, 64))
        handle = cdfsod.attach_cdfsod(model, refiner)
        fresh = model(pixel_values=x).logits
        refiner.ppr.gamma.fill_(0.5)
        refiner.ncm.strength.fill_(0.3)
        enabled = model(pixel_values=x).logits
        refiner.enabled = False
        disabled = model(pixel_values=x).logits
        refiner.enabled = True
        handle.remove()
        detached = model(pixel_values=x).logits
    # a fresh refiner is the identity (zero-initialised gamma, NCM strength and text injection)
    torch.testing.assert_close(fresh, before, rtol=0, atol=0)
    assert not torch.allclose(enabled, before)
    torch.testing.assert_close(disabled, before, rtol=0, atol=0)
    torch.testing.assert_close(detached, before, rtol=0, atol=0)


def test_attach_rejects_other_models_and_widths():
    with pytest.raises(TypeError, match="DetrForObjectDetection"):
        cdfsod.attach_cdfsod(torch.nn.Linear(2, 2), cdfsod.CenterPeripheryRefiner(2, 1))
    with pytest.raises(ValueError, match="d_model 16"):
        cdfsod.attach_cdfsod(_tiny_detr(), cdfsod.CenterPeripheryRefiner(8, 3))


def test_bad_support_raises():
    features, boxes, labels, size = _support()
    with pytest.raises(ValueError, match="inside the 48x56 image"):
        cdfsod.class_prototypes(features, [boxes[0], torch.tensor([[0.0, 0.0, 60.0, 10.0]], dtype=D)],
                                [labels[0], torch.tensor([0])], 2, size)
    with pytest.raises(ValueError, match="x2 > x1"):
        cdfsod.validate_boxes(torch.tensor([[5.0, 5.0, 5.0, 9.0]]), (10, 10))
    empty = [torch.zeros(0, 4, dtype=D), torch.zeros(0, 4, dtype=D)]
    with pytest.raises(ValueError, match="support set is empty"):
        cdfsod.class_prototypes(features, empty, [torch.zeros(0), torch.zeros(0)], 2, size)
    with pytest.raises(ValueError, match="support set is empty"):
        cdfsod.negative_context(features, empty, size)
    with pytest.raises(ValueError, match="every class"):
        cdfsod.class_prototypes(features, boxes, labels, 3, size)
    with pytest.raises(ValueError, match="text_embeddings"):
        cdfsod.CenterPeripheryRefiner(5, 2, torch.randn(3, 4))
    with pytest.raises(ValueError, match="set_support"):
        cdfsod.CenterPeripheryRefiner(5, 2).alignment_loss()


def test_refiner_without_support_is_identity():
    x = torch.randn(1, 4, 3, 3)
    assert cdfsod.CenterPeripheryRefiner(4, 2)(x) is x
