"""CARVE (arXiv 2509.06461): the contrast equals the released step/layer loop, regions equal a flood fill, the
mask keeps the strongest regions, the refined image is the masked crop covering the original size, and the
recorder collects the generated token's attention to the image."""

from __future__ import annotations

from collections import deque

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens import STATE, AttentionCall, lens_attention
from visattn.lens.edits import (
    VisualAttentionRecorder,
    connected_regions,
    contrastive_attention,
    refine_image,
    salient_regions,
    upsample_map,
)


def flood_fill_count(mask: torch.Tensor) -> tuple[int, list[set[tuple[int, int]]]]:
    h, w = mask.shape
    seen: set[tuple[int, int]] = set()
    regions = []
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or (y, x) in seen:
                continue
            region, todo = set(), deque([(y, x)])
            seen.add((y, x))
            while todo:
                cy, cx = todo.popleft()
                region.add((cy, cx))
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and (ny, nx) not in seen:
                        seen.add((ny, nx))
                        todo.append((ny, nx))
            regions.append(region)
    return len(regions), regions


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), h=st.integers(1, 9), w=st.integers(1, 9), p=st.floats(0.1, 0.9))
def test_regions_equal_a_flood_fill(seed, h, w, p):
    mask = torch.rand(h, w, generator=torch.Generator().manual_seed(seed)) < p
    labels = connected_regions(mask)
    count, regions = flood_fill_count(mask)
    assert int(labels.max()) == count
    for region in regions:
        values = {int(labels[y, x]) for y, x in region}
        assert len(values) == 1 and 0 not in values
    assert torch.equal(labels == 0, ~mask)


def test_contrast_equals_the_step_and_layer_loop():
    g = torch.Generator().manual_seed(0)
    task = torch.rand(3, 28, 16, generator=g, dtype=torch.float64)
    general = torch.rand(4, 28, 16, generator=g, dtype=torch.float64)
    expected = torch.zeros(16, dtype=torch.float64)
    for step in range(3):
        expected += (step + 1) * sum(task[step, layer] / (general[step, layer] + 1e-8) for layer in range(20, 26))
    torch.testing.assert_close(contrastive_attention(task, general), expected, atol=1e-12, rtol=1e-12)
    first = sum(task[0, layer] / (general[0, layer] + 1e-8) for layer in (1, 2))
    torch.testing.assert_close(contrastive_attention(task, general, [1, 2], "first"), first, atol=0, rtol=1e-15)


def test_mask_keeps_the_strongest_regions():
    saliency = torch.zeros(20, 20, dtype=torch.float64)
    for (y, x), value in zip([(1, 1), (1, 14), (14, 1), (14, 14)], [4.0, 3.0, 2.0, 1.0], strict=True):
        saliency[y:y + 4, x:x + 4] = value
    saliency[9:11, 9:11] = 0.5
    mask = salient_regions(saliency, top_fraction=0.17, min_regions=3)
    assert mask[1:5, 1:5].all() and mask[1:5, 14:18].all() and mask[14:18, 1:5].all()
    assert not mask[14:18, 14:18].any() and int(mask.sum()) == 48
    by_size = salient_regions(saliency, top_fraction=0.17, min_regions=4, strategy="size")
    assert int(by_size.sum()) == 64


def test_refined_image_is_the_masked_crop_covering_the_original():
    image = torch.rand(3, 30, 40, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(30, 40, dtype=torch.bool)
    mask[5:15, 10:30] = True
    result = refine_image(image, mask)
    assert result.box == (10, 5, 30, 15)
    assert torch.equal(result.masked[:, ~mask], torch.zeros(3, int((~mask).sum())))
    assert result.refined.shape == (3, 30, 60)
    assert result.query_images(image)[0] is image
    whole = refine_image(image, torch.zeros(30, 40, dtype=torch.bool))
    assert whole.box == (0, 0, 40, 30)


def test_pipeline_finds_the_region_the_question_looks_at():
    grid = (6, 6)
    general = torch.full((2, 26, 36), 1 / 36, dtype=torch.float64)
    task = general.clone()
    task[:, :, [14, 15, 20, 21]] *= 6.0
    saliency = upsample_map(contrastive_attention(task, general), grid, (24, 24))
    mask = salient_regions(saliency, top_fraction=0.05, min_regions=1)
    ys, xs = mask.nonzero(as_tuple=True)
    assert 8 <= int(ys.min()) and int(ys.max()) < 16 and 8 <= int(xs.min()) and int(xs.max()) < 16


def test_recorder_collects_the_last_rows_attention_to_the_image():
    recorder = VisualAttentionRecorder()
    STATE.recorders.append(recorder)
    g = torch.Generator().manual_seed(2)
    expected = []
    for step in range(2):
        for layer in range(3):
            q, k, v = (torch.randn(1, 2, 9 + step, 4, generator=g, dtype=torch.float64) for _ in range(3))
            call = AttentionCall(layer=layer, name="m", q=q, k=k, v=v, scale=0.5, image_tokens=torch.arange(1, 5))
            probs = lens_attention(call)[1]
            expected.append(probs[:, :, -1, 1:5].mean(1))
    maps = recorder.maps()
    assert maps.shape == (2, 3, 1, 4)
    torch.testing.assert_close(maps.reshape(6, 1, 4), torch.stack(expected), atol=0, rtol=0)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="none of layers"):
        contrastive_attention(torch.rand(1, 4, 5), torch.rand(1, 4, 5))
    with pytest.raises(ValueError, match="step_weights"):
        contrastive_attention(torch.rand(1, 30, 5), torch.rand(1, 30, 5), step_weights="all")
    with pytest.raises(ValueError, match="mask must be a bool tensor of shape"):
        refine_image(torch.rand(3, 4, 4), torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="strategy"):
        salient_regions(torch.rand(4, 4), strategy="biggest")
    with pytest.raises(ValueError, match="recorded nothing"):
        VisualAttentionRecorder().maps()
