"""eccNET: ring geometry against the published formula, pooling against a naive loop, the search loop's contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visattn.search.asymmetry import asymmetry_index
from visattn.search.chance import chance_search
from visattn.search.eccentricity_pooling import (
    PUBLISHED_DEG2PX,
    PUBLISHED_SLOPES,
    EccentricityPool2d,
    ring_layout,
    round_number,
    same_pool2d,
)
from visattn.search.eccnet import (
    KERAS_VGG16_CONVS,
    KERAS_VGG16_MEAN,
    KERAS_VGG16_STD,
    EccentricityConfig,
    EccNet,
    difference_of_gaussians,
    gaussian_blur,
    keras_vgg_state_dict,
    load_backbone_checkpoint,
    vgg_like_backbone,
)


def test_published_constants():
    assert PUBLISHED_DEG2PX == (30, 15, 8, 4, 2)
    assert PUBLISHED_SLOPES == pytest.approx((0, 0, 0.07, 0.16, 0.32))


def test_ring_layout_by_hand():
    # pool3: deg2px 8, slope 0.07; input 101 -> output 51, fovea radius round(4*8/2)=16, step round(8/2)=4.
    # rings end at 20, 24 (< 25.5) and the last region at 28; rf = 2 + round(0.07 (2e - 32)) = 3, 3, 4.
    layout = ring_layout(101, slope=0.07, deg2px=8)
    assert layout.out_size == 51
    assert layout.outer_radii == (16, 20, 24, 28)
    assert layout.rf_sizes == (2, 3, 3, 4)
    # pool5: deg2px 2, slope 0.32, input 20 -> output 10, fovea 4, step 1: rings 5 (< 5 fails) -> last region 5.
    layout = ring_layout(20, slope=0.32, deg2px=2)
    assert layout.outer_radii == (4, 5)
    assert layout.rf_sizes == (2, 2 + round(0.32 * 2))


def test_fovea_covering_the_map_gives_one_region():
    layout = ring_layout(40, slope=0.16, deg2px=15)  # fovea radius 30 > 20 / 2
    assert layout.rf_sizes == (2,) and layout.out_size == 20


@pytest.mark.parametrize("in_size", [17, 40, 63])
@pytest.mark.parametrize("layer", [2, 3, 4])
def test_ring_layout_matches_formula(in_size, layer):
    slope, deg2px = PUBLISHED_SLOPES[layer], PUBLISHED_DEG2PX[layer]
    layout = ring_layout(in_size, slope=slope, deg2px=deg2px)
    out = (in_size + 1) // 2
    assert layout.out_size == out
    e0 = round(4 * deg2px / 2)
    if e0 > out / 2:
        assert layout.rf_sizes == (2,)
        return
    step = round(deg2px / 2)
    # fovea e0, then e0 + k step (k >= 1) while < out / 2, then the first e0 + k step (k >= 1) that is not
    candidates = [e0 + k * step for k in range(1, out + 2)]
    radii = [e0] + [e for e in candidates if e < out / 2]
    radii.append(next(e for e in candidates if e >= out / 2))
    assert layout.outer_radii == tuple(radii)
    assert layout.rf_sizes == (2,) + tuple(2 + round(slope * (2 * e - 4 * deg2px)) for e in radii[1:])


def test_bankers_rounding_vs_half_up():
    # slope 0.25, deg2px 2: rf(e) = 2 + round(0.25 (2e - 8)); e = 5 -> round(0.5), e = 9 -> round(2.5).
    even = ring_layout(39, slope=0.25, deg2px=2, rounding="half_even")
    up = ring_layout(39, slope=0.25, deg2px=2, rounding="half_up")
    assert even.outer_radii == up.outer_radii == (4, 5, 6, 7, 8, 9, 10)
    assert even.rf_sizes == (2, 2, 3, 4, 4, 4, 5)
    assert up.rf_sizes == (2, 3, 3, 4, 4, 5, 5)
    assert round_number(2.5) == 2 and round_number(2.5, "half_up") == 3
    with pytest.raises(ValueError, match="rounding"):
        round_number(1.0, "up")


def test_published_constants_have_no_half_cases_at_the_curvature_view():
    """The 800-px view (336-px display, release margins): both roundings give the same rings, as printed in docs."""
    size = 800
    for slope, deg2px in zip(PUBLISHED_SLOPES, PUBLISHED_DEG2PX, strict=True):
        even = ring_layout(size, slope=slope, deg2px=deg2px)
        assert even == ring_layout(size, slope=slope, deg2px=deg2px, rounding="half_up")
        size = even.out_size
    assert ring_layout(200, slope=0.07, deg2px=8).rf_sizes == (2, 3, 3, 4, 4, 5, 5, 6, 6, 7)


def test_region_index_matches_distance_rule():
    layout = ring_layout(41, slope=0.32, deg2px=2)
    index = layout.region_index()
    n, c = layout.out_size, layout.out_size // 2
    for r in range(n):
        for col in range(n):
            d2 = (r - c) ** 2 + (col - c) ** 2
            expected = next((i for i, e in enumerate(layout.outer_radii[:-1]) if d2 < e * e),
                            len(layout.rf_sizes) - 1)
            assert index[r, col] == expected


def _naive_same_pool(x, k, stride, mode):
    b, ch, h, w = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    ph = max((oh - 1) * stride + k - h, 0) // 2
    pw = max((ow - 1) * stride + k - w, 0) // 2
    out = torch.empty(b, ch, oh, ow, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * stride - ph, j * stride - pw
            win = x[:, :, max(r0, 0):r0 + k, max(c0, 0):c0 + k]
            out[:, :, i, j] = win.mean((-2, -1)) if mode == "avg" else win.amax((-2, -1))
    return out


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_same_pool_matches_naive(mode, k):
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(same_pool2d(x, k, 2, mode), _naive_same_pool(x, k, 2, mode))


@pytest.mark.parametrize("shape", [(15, 15), (13, 10)])
def test_eccentricity_pool_matches_naive(shape):
    pool = EccentricityPool2d(slope=0.5, deg2px=2, fovea=2)
    x = torch.randn(1, 2, *shape, dtype=torch.float64)
    side = max(shape)
    padded = torch.zeros(1, 2, side, side, dtype=torch.float64)
    top, left = (side - shape[0]) // 2, (side - shape[1]) // 2
    padded[..., top:top + shape[0], left:left + shape[1]] = x
    layout = pool.layout(side)
    index = layout.region_index()
    assert len(layout.rf_sizes) > 2
    expected = torch.empty(1, 2, layout.out_size, layout.out_size, dtype=torch.float64)
    for region, k in enumerate(layout.rf_sizes):
        full = _naive_same_pool(padded, k, 2, "avg")
        expected = torch.where(index == region, full, expected)
    torch.testing.assert_close(pool(x), expected)


def test_eccentricity_pool_gradients_and_meta():
    pool = EccentricityPool2d(slope=1.0, deg2px=2, fovea=1)
    assert pool.layout(6).rf_sizes == (2, 2 + round(1.0 * (2 * 2 - 2)))
    x = torch.randn(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pool, (x,))
    out = pool(torch.empty(2, 3, 11, 11, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3, 6, 6)
    with pytest.raises(ValueError, match="mode"):
        EccentricityPool2d(mode="median")


def test_gaussian_blur_keeps_constants_and_dog_of_constant_is_constant():
    x = torch.full((1, 1, 7, 9), 2.5, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(x, 5, 0.0), x)
    torch.testing.assert_close(difference_of_gaussians(x), x)
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(x, 4, 1.0)


def tiny_backbone(channels=(4, 6, 8, 8, 8)) -> nn.Module:
    return vgg_like_backbone(channels)


SMALL = EccentricityConfig(slopes=(0, 0, 0.5, 0.5, 0.5), deg2px=(8, 4, 2, 2, 1), fovea=2)


def grid_display(seed=0, cells=3, cell=12):
    g = torch.Generator().manual_seed(seed)
    side = cells * cell
    image = torch.rand(3, side, side, generator=g)
    masks = torch.zeros(cells * cells, side, side, dtype=torch.bool)
    for i in range(cells * cells):
        r, c = divmod(i, cells)
        masks[i, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = True
    return image, masks


@pytest.mark.parametrize("eccentricity", [SMALL, None], ids=["eccNET", "IVSN"])
def test_search_terminates_never_revisits_and_stays_in_display(eccentricity):
    torch.manual_seed(0)
    model = EccNet(tiny_backbone(), eccentricity=eccentricity)
    image, masks = grid_display(cell=8)
    for target_item in (0, 7):
        target = image[:, masks[target_item].any(1)][:, :, masks[target_item].any(0)]
        result = model.search(image, target, masks[target_item], item_masks=masks, corner_bias=2, ior_size=2)
        assert 1 <= result.num_fixations <= masks.shape[0] + 1
        assert len(set(result.fixated_items)) == len(result.fixated_items)
        for (r, c), item in zip(result.fixations[1:], result.fixated_items, strict=True):
            assert 0 <= r < image.shape[1] and 0 <= c < image.shape[2]
            assert masks[item, r, c]
        if result.found:
            assert result.fixated_items[-1] == target_item
        else:
            assert target_item not in result.fixated_items


def test_search_finds_every_target_with_enough_budget():
    model = EccNet(tiny_backbone(), eccentricity=SMALL)
    image, masks = grid_display(seed=1)
    result = model.search(image, image[:, :12, :12], masks[0], item_masks=masks, corner_bias=4)
    # nine cells, each fixated at most once, budget 10: the target cell is reached
    assert result.found and result.fixated_items[-1] == 0


def test_search_budget_and_square_ior_without_cells():
    model = EccNet(tiny_backbone(), eccentricity=SMALL)
    image, masks = grid_display()
    result = model.search(image, image[:, :12, :12], masks[0], max_fixations=3, corner_bias=4, ior_size=6)
    assert len(result.fixations) <= 4
    assert len(set(result.fixations)) == len(result.fixations)


def test_search_bad_inputs():
    model = EccNet(tiny_backbone(), eccentricity=SMALL)
    image, masks = grid_display()
    with pytest.raises(ValueError, match="inside the 36x36 display"):
        model.search(image, image[:, :8, :8], masks[0], item_masks=masks, start=(36, 3))
    with pytest.raises(ValueError, match="target_mask"):
        model.search(image, image[:, :8, :8], masks[0][:-1], item_masks=masks)
    with pytest.raises(ValueError, match="item_masks"):
        model.search(image, image[:, :8, :8], masks[0], item_masks=masks[:, :-1])
    with pytest.raises(ValueError, match="pooling layers"):
        EccNet(tiny_backbone((4, 4)), eccentricity=SMALL)
    with pytest.raises(ValueError, match="feature_layers"):
        EccNet(tiny_backbone(), feature_layers=(0, 3))
    with pytest.raises(TypeError, match="backbone"):
        EccNet(3)


def test_checkpoint_weights_are_loaded(tmp_path):
    torch.manual_seed(0)
    source = tiny_backbone()
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    loaded = EccNet(tiny_backbone(), checkpoint_path=path, eccentricity=SMALL)
    fresh = EccNet(tiny_backbone(), eccentricity=SMALL)
    reference = EccNet(source, eccentricity=SMALL)
    target = torch.rand(3, 16, 16)
    for a, b in zip(loaded.target_kernels(target), reference.target_kernels(target), strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(fresh.target_kernels(target)[0], reference.target_kernels(target)[0])


def test_top_down_map_is_the_target_convolution():
    """One feature layer, fixed weight: the map before smoothing is min-max(conv(S, T)) (checked through DoG)."""
    model = EccNet(tiny_backbone(), eccentricity=None, feature_layers=(3,), layer_weights=(1.0,))
    view = torch.rand(3, 40, 40)
    kernels = model.target_kernels(torch.rand(3, 16, 16))
    feats = model._features(view[None], target=False)[0]
    m = torch.nn.functional.conv2d(feats, kernels[0], padding="same")
    m = (m - m.min()) / (m.max() - m.min())
    expected = torch.nn.functional.interpolate(difference_of_gaussians(m), size=(40, 40), mode="bilinear")[0, 0]
    torch.testing.assert_close(model.attention_map(view, kernels), expected - expected.min())


def test_chance_search():
    _, masks = grid_display()
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        result = chance_search(masks, 4, candidates=[1, 4, 7], generator=g)
        assert result.found and result.fixated_items[-1] == 4
        assert len(set(result.fixated_items)) == len(result.fixated_items) <= 3
    with pytest.raises(ValueError, match="target_item"):
        chance_search(masks, 2, candidates=[1, 4])


def tiny_vgg16(width=4) -> nn.Module:
    """VGG16's topology (2, 2, 3, 3, 3 convolutions, five max-pools) with ``width``-channel layers."""
    layers, c = [], 3
    for block, convs in enumerate((2, 2, 3, 3, 3)):
        for _ in range(convs):
            layers += [nn.Conv2d(c, width * (block + 1), 3, padding=1), nn.ReLU()]
            c = width * (block + 1)
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def write_keras_h5(path, model, seed=0, nested=True):
    """Random weights in Keras' HDF5 layout: one group per layer, (kh, kw, in, out) kernels, plus a dense fc1."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(seed)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    arrays = {}
    with h5py.File(path, "w") as f:
        names = list(KERAS_VGG16_CONVS) + ["fc1"]
        f.attrs["layer_names"] = [n.encode() for n in names]
        for name, conv in zip(KERAS_VGG16_CONVS, convs, strict=True):
            kernel = rng.standard_normal((3, 3, conv.in_channels, conv.out_channels)).astype("float32") * 0.3
            bias = rng.standard_normal(conv.out_channels).astype("float32") * 0.1
            group = f.create_group(name)
            inner = group.create_group(name) if nested else group
            inner["kernel:0"], inner["bias:0"] = kernel, bias
            group.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            arrays[name] = (kernel, bias)
        f.create_group("fc1")["fc1"] = rng.standard_normal((8, 4)).astype("float32")
    return arrays


def _keras_same_conv(x_hwc, kernel, bias):
    """Naive Keras Conv2D(padding="same") on (H, W, C_in) with a (3, 3, C_in, C_out) kernel, float64."""
    import numpy as np

    h, w, _ = x_hwc.shape
    padded = np.pad(x_hwc, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((h, w, kernel.shape[-1]))
    for i in range(h):
        for j in range(w):
            out[i, j] = np.einsum("abc,abco->o", padded[i:i + 3, j:j + 3], kernel) + bias
    return out


@pytest.mark.parametrize("nested", [True, False], ids=["keras2-nested", "flat"])
def test_keras_h5_weights_match_a_naive_keras_convolution(tmp_path, nested):
    import numpy as np

    path = tmp_path / "vgg16_imagenet_filters.h5"
    arrays = write_keras_h5(path, tiny_vgg16(), nested=nested)
    model = tiny_vgg16()
    model.load_state_dict(keras_vgg_state_dict(path, model))
    # first layer: Keras reads BGR, the converted torch layer RGB
    x = np.random.default_rng(1).random((5, 7, 3))
    kernel, bias = arrays["block1_conv1"]
    ref = _keras_same_conv(x[..., ::-1], kernel.astype(np.float64), bias.astype(np.float64))
    out = model.double()[0](torch.from_numpy(x.copy()).permute(2, 0, 1)[None])[0].permute(1, 2, 0).detach().numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-9)
    # a deeper layer keeps its channel order
    kernel, bias = arrays["block3_conv2"]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    y = np.random.default_rng(2).random((4, 4, kernel.shape[2]))
    out = convs[5](torch.from_numpy(y).permute(2, 0, 1)[None])[0].permute(1, 2, 0).detach().numpy()
    np.testing.assert_allclose(out, _keras_same_conv(y, kernel.astype(np.float64), bias.astype(np.float64)),
                               rtol=1e-6, atol=1e-9)
    # through the user path: weights loaded, Caffe input constants by default
    search = EccNet(tiny_vgg16(), checkpoint_path=path, eccentricity=SMALL)
    torch.testing.assert_close(search.backbone[0].weight, model[0].weight.float())
    torch.testing.assert_close(search.mean.flatten(), torch.tensor(KERAS_VGG16_MEAN))
    torch.testing.assert_close(search.std.flatten(), torch.tensor(KERAS_VGG16_STD))


def test_checkpoint_errors(tmp_path):
    import h5py

    path = tmp_path / "partial.h5"
    with h5py.File(path, "w") as f:
        f.create_group("block1_conv1")["kernel:0"] = torch.zeros(3, 3, 3, 4).numpy()
    with pytest.raises(ValueError, match="block1_conv1.*bias|no layer group 'block1_conv2'"):
        EccNet(tiny_vgg16(), checkpoint_path=path)
    with pytest.raises(ValueError, match="expects"):
        write_keras_h5(tmp_path / "wide.h5", tiny_vgg16(width=8))
        EccNet(tiny_vgg16(), checkpoint_path=tmp_path / "wide.h5")
    state = tiny_vgg16().state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("2.")}, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="lacks weights the search uses.*2.weight"):
        EccNet(tiny_vgg16(), checkpoint_path=tmp_path / "short.pth")
    torch.save({**state, "head.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="keys the backbone lacks.*head.weight"):
        EccNet(tiny_vgg16(), checkpoint_path=tmp_path / "extra.pth")
    torch.save({**state, "head.fc.weight": torch.zeros(1)}, tmp_path / "classifier.pth")
    assert not load_backbone_checkpoint(tiny_vgg16(), tmp_path / "classifier.pth", ignore_prefixes=("head.fc.",))
    with pytest.raises(ValueError, match="existing file"):
        EccNet(tiny_vgg16(), checkpoint_path=tmp_path / "missing.pth")
    # a head after the last used pooling layer may be missing (eccNET never runs it)
    with_head = nn.Sequential(*tiny_vgg16(), nn.Flatten(), nn.Linear(20, 3))
    torch.save({k: v for k, v in with_head.state_dict().items() if not k.startswith("32.")}, tmp_path / "nohead.pth")
    EccNet(nn.Sequential(*tiny_vgg16(), nn.Flatten(), nn.Linear(20, 3)), checkpoint_path=tmp_path / "nohead.pth")


@pytest.mark.slow
def test_six_experiments_end_to_end_from_a_saved_checkpoint(tmp_path, one_thread):
    """Random weights saved in the release's Keras layout, loaded through checkpoint_path, all six experiments at
    10% of the published display size with one display per set size: each reports its asymmetry index."""
    from visattn.search.asymmetry import EXPERIMENTS, eccnet_searcher, run_experiment

    path = tmp_path / "vgg16_imagenet_filters.h5"
    write_keras_h5(path, tiny_vgg16(width=2))
    model = EccNet(tiny_vgg16(width=2), checkpoint_path=path, eccentricity=SMALL)
    indices = {}
    for name, exp in EXPERIMENTS.items():
        result = run_experiment(eccnet_searcher(model, name, scale=0.1), name, displays_per_set_size=1)
        assert set(result.model_slopes) == set(exp.conditions)
        assert all(len(rts) == len(exp.set_sizes) for rts in result.rt_by_condition.values())
        # every search takes 0 .. set size fixations in the RT model: RT within the model's range
        for rts in result.rt_by_condition.values():
            assert all(376.271 <= rt <= 376.271 + 252.359 * (exp.grid[0] * exp.grid[1] + 1) for rt in rts)
        assert -1 <= result.model_index <= 1
        assert result.human_index == pytest.approx(
            asymmetry_index(*(exp.human_slope(c) for c in exp.conditions), *(exp.human_slope(c) for c in
                                                                              exp.conditions)))
        indices[name] = result.model_index
    assert list(indices) == list(EXPERIMENTS)


def test_vgg_like_backbone_stages_and_bad_channels():
    model = vgg_like_backbone((4, 6), in_channels=1)
    assert [type(m).__name__ for m in model] == ["Conv2d", "ReLU", "MaxPool2d"] * 2
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 6, 2, 2)
    for bad in ((), (4, 0), (4, True)):
        with pytest.raises(ValueError, match="channels"):
            vgg_like_backbone(bad)
