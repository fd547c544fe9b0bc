"""Vision Matters perturbations (arXiv 2506.09736): sizes and value ranges per the authors' scripts, naive rotation
formula, same seed same output, PIL and torchvision.transforms.v2 pipelines, gradients, errors."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from visattn.transforms import (
    DistractorConcat,
    DominanceMixup,
    RandomRotationExpand,
    concat_distractor,
    dominance_mixup,
    letterbox,
    rotate_expand,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_concat_sizes_follow_the_paper():
    image, distractor = torch.rand(3, 20, 30), torch.rand(3, 10, 8)
    out = concat_distractor(image, distractor)
    # distractor at height 20 is 16 wide; half = max(30, 16) // 2 = 15
    assert out.shape == (3, 20, 30)
    wide = concat_distractor(torch.rand(3, 9, 7), torch.rand(3, 18, 50))  # 50 * 9 / 18 = 25 -> half 12
    assert wide.shape == (3, 9, 24)
    assert out.min() >= 0 and out.max() <= 1
    # the left half is the image resized to (20, 15), the right half the distractor resized to (20, 15)
    left = torch.nn.functional.interpolate(image[None], size=(20, 15), mode="bicubic", align_corners=False)[0]
    torch.testing.assert_close(out[..., :15], left.clamp(0, 1))


def test_letterbox_and_mixup_sizes_and_ranges():
    main, other = torch.rand(3, 20, 40), torch.rand(3, 30, 10)
    box = letterbox(main, 32)  # scaled to 32 x 16, centred: rows 8..24 hold the image, the rest is white
    assert box.shape == (3, 32, 32)
    assert (box[:, :8] == 1).all() and (box[:, 24:] == 1).all()
    mixed = dominance_mixup(main, other, 0.75, 32)
    assert mixed.shape == (3, 32, 32) and mixed.min() >= 0 and mixed.max() <= 1
    torch.testing.assert_close(mixed, 0.75 * box + 0.25 * letterbox(other, 32))
    corner = dominance_mixup(main, other, 0.8, 32)[:, 0, 0]  # white in both letterboxes
    torch.testing.assert_close(corner, torch.ones(3))
    assert dominance_mixup(main, other, 0.7).shape == (3, 256, 256)  # the paper's canvas
    u8 = dominance_mixup((main * 255).round().to(torch.uint8), (other * 255).round().to(torch.uint8), 0.9, 32)
    assert u8.dtype == torch.uint8 and int(u8[0, 0, 0]) == 255


def test_rotation_canvas_and_naive_formula(bilinear):
    image = torch.rand(1, 7, 10, dtype=torch.float64)
    angle = 37.0
    out = rotate_expand(image, angle)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    new_w, new_h = int(7 * abs(s) + 10 * abs(c)), int(7 * abs(c) + 10 * abs(s))
    assert out.shape == (1, new_h, new_w)
    for yy in range(new_h):
        for xx in range(new_w):  # cv2.getRotationMatrix2D about (w // 2, h // 2), shifted to the new centre
            dx, dy = xx - new_w / 2, yy - new_h / 2
            sx, sy = 10 // 2 + c * dx - s * dy, 7 // 2 + s * dx + c * dy
            ref = bilinear(image - 1, sy, sx) + 1  # white fill, blended at the border
            torch.testing.assert_close(out[:, yy, xx], ref.clamp(0, 1), rtol=0, atol=1e-12)
    assert out[:, 0, 0].item() == 1.0  # corners are white
    even = torch.rand(2, 8, 10, dtype=torch.float64)  # an odd side moves by half a pixel (the OpenCV centre)
    torch.testing.assert_close(rotate_expand(even, 0.0), even)


def test_same_seed_same_output_and_pools():
    image = torch.rand(3, 16, 20)
    pool = [torch.rand(3, 12, 12), torch.rand(3, 8, 30), torch.rand(3, 20, 10)]
    for make in (lambda seed: RandomRotationExpand(seed=seed), lambda seed: DominanceMixup(pool, 32, seed=seed),
                 lambda seed: DistractorConcat(pool, seed=seed)):
        a, b, c = make(7), make(7), make(8)
        outs_a = [a(image) for _ in range(4)]
        outs_b = [b(image) for _ in range(4)]
        outs_c = [c(image) for _ in range(4)]
        assert all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(outs_a, outs_b, strict=True))
        assert any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(outs_a, outs_c, strict=True))


def test_pil_and_v2_pipeline():
    rng = np.random.default_rng(0)
    pil = PIL.Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8))
    other = PIL.Image.fromarray((rng.random((10, 14, 3)) * 255).astype(np.uint8))
    rot = RandomRotationExpand(seed=1)
    assert isinstance(rot(pil), PIL.Image.Image)
    pipeline = v2.Compose([DominanceMixup([other], 64, seed=0), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    out, label = pipeline(pil, 3)
    assert isinstance(out, tv_tensors.Image) and out.shape == (3, 64, 64) and label == 3
    cat = DistractorConcat([other], seed=0)(tv_tensors.Image(torch.rand(3, 20, 30)))
    assert isinstance(cat, tv_tensors.Image) and cat.shape == (3, 20, 30)
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[1, 1, 4, 4]]), format="XYXY", canvas_size=(20, 30))
    with pytest.raises(TypeError, match="does not transform BoundingBoxes"):
        rot(tv_tensors.Image(torch.rand(3, 20, 30)), boxes)


def test_gradients():
    image = torch.rand(1, 1, 5, 6, dtype=torch.float64, requires_grad=True) * 0.5 + 0.25
    image = image.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: rotate_expand(x, 23.0), (image,))
    other = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 0.5 + 0.25
    lam = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: dominance_mixup(x, other, t, 8), (image, lam))


def test_bad_input():
    with pytest.raises(ValueError, match="lam must be a real number in"):
        dominance_mixup(torch.rand(3, 4, 4), torch.rand(3, 4, 4), 1.5)
    with pytest.raises(ValueError, match="lam_range must satisfy"):
        DominanceMixup([torch.rand(3, 4, 4)], lam_range=(0.9, 0.7))
    with pytest.raises(ValueError, match="others must be a non-empty sequence"):
        DominanceMixup([])
    with pytest.raises(ValueError, match="distractor must have 3 channels"):
        concat_distractor(torch.rand(3, 4, 4), torch.rand(1, 4, 4))
    with pytest.raises(TypeError, match="image must be floating point in"):
        rotate_expand(torch.zeros(3, 4, 4, dtype=torch.int32), 10.0)
    with pytest.raises(ValueError, match="degrees must be a real number in"):
        RandomRotationExpand(degrees=400)
    with pytest.raises(TypeError, match="seed must be an int"):
        RandomRotationExpand(seed="1")
    with pytest.raises(ValueError, match=r"image must be shaped \(C, H, W\)"):
        letterbox(torch.rand(4, 4), 8)
