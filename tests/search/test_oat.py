import math

import pytest
import torch

from visattn.search.eccnet import EccentricityConfig, EccNet
from visattn.search.oat import (
    OAT,
    ObjectPositionalEncoding,
    cosine_prior,
    oat_loss,
    positional_prior_loss,
    scanpath_targets,
)
from visattn.search.object_displays import (
    eccnet_scanpath,
    generate_displays,
    greedy_search_scanpath,
    render_display,
    saliency_order_scanpath,
)

SMALL = EccentricityConfig(slopes=(0, 0, 0.5, 0.5, 0.5), deg2px=(8, 4, 2, 2, 1), fovea=2)


def _pooling_cnn(channels=(4, 6, 8, 8, 8)) -> torch.nn.Module:
    layers, c = [], 3
    for out in channels:
        layers += [torch.nn.Conv2d(c, out, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        c = out
    return torch.nn.Sequential(*layers)


def _searcher():
    torch.manual_seed(0)
    return EccNet(_pooling_cnn(), eccentricity=SMALL)


def _tiny(**kw):
    torch.manual_seed(0)
    return OAT("resnet10t", grid=(3, 3), dim=16, num_heads=2, encoder_layers=1, decoder_layers=1, dropout=0.0, **kw)


def test_cosine_prior_and_loss_naive_float64():
    p = cosine_prior(4, 2.0, torch.float64)
    assert p[0, 2].item() == pytest.approx(math.exp(-4 / 8))
    t = torch.randn(4, 6, dtype=torch.float64)
    cos = torch.tensor([[float(t[i] @ t[j] / (t[i].norm() * t[j].norm())) for j in range(4)] for i in range(4)],
                       dtype=torch.float64)
    norms = t.norm(dim=1)
    ref = ((cos - p) ** 2).mean() + ((norms - norms.mean()) ** 2).mean() / norms.mean() ** 2
    torch.testing.assert_close(positional_prior_loss(t), ref)


def test_positional_pretraining_reaches_prior():
    torch.manual_seed(0)
    pe = ObjectPositionalEncoding((5, 4), 16)
    rows, cols = pe.pretrain(steps=150)
    assert rows[-1] < 0.05 * rows[0] and cols[-1] < 0.05 * cols[0]
    unit = pe.rows / pe.rows.norm(dim=1, keepdim=True)
    torch.testing.assert_close(unit @ unit.T, cosine_prior(5), atol=0.05, rtol=0)
    assert pe(torch.tensor([[1, 2]])).shape == (1, 16)


def test_object_attention_head_naive_float64():
    model = _tiny().double().eval().requires_grad_(False)
    d = generate_displays(2, 3, (3, 3), crop=8, seed=1)
    crops, target = d.crops.double(), d.target.double()
    fixated = torch.tensor([[2, 0], [1, 1]])
    logits = model(crops, target, d.cells, fixated)
    assert logits.shape == (2, 3, 4)
    objects, memory = model.encode(crops, target, d.cells)
    steps = torch.cat((model.start.expand(2, 1, -1), objects[torch.arange(2)[:, None], fixated]), dim=1)
    pos = torch.zeros(3, 16, dtype=torch.float64)
    for t in range(3):
        for i in range(0, 16, 2):
            pos[t, i] = math.sin(t / 10000 ** (i / 16))
            pos[t, i + 1] = math.cos(t / 10000 ** (i / 16))
    mask = torch.triu(torch.full((3, 3), float("-inf"), dtype=torch.float64), 1)
    u = model.decoder(steps + pos, memory, tgt_mask=mask)
    we, wd = model.w_enc.weight, model.w_dec.weight
    for b in range(2):
        for t in range(3):
            for o in range(4):
                if o < 3:
                    s = [float((we[h * 16:(h + 1) * 16] @ memory[b, o]) @ (wd[h * 16:(h + 1) * 16] @ u[b, t])) / 4
                         for h in range(2)]
                else:
                    s = [0.0, 0.0]
                ref = model.mix.weight[0, 0] * s[0] + model.mix.weight[0, 1] * s[1] + model.mix.bias[0]
                assert logits[b, t, o].item() == pytest.approx(ref.item(), abs=1e-9)


def test_scanpath_targets_and_generate():
    inputs, targets = scanpath_targets([[2, 0], [1]], num_objects=3)
    assert inputs.tolist() == [[2, 0], [1, 0]]
    assert targets.tolist() == [[2, 0, 3], [1, 3, -100]]
    model = _tiny().eval()
    d = generate_displays(2, 3, (3, 3), crop=8, seed=2)
    out = model.generate(d.crops, d.target, d.cells, max_len=4)
    assert out.shape == (2, 4) and ((out >= -1) & (out < 3)).all()
    for row in out.tolist():  # -1 only after EOS, never before an object
        if -1 in row:
            assert all(v == -1 for v in row[row.index(-1):])


def test_object_mask_hides_padding():
    model = _tiny().eval()
    d = generate_displays(1, 3, (3, 3), crop=8, seed=3)
    mask = torch.tensor([[True, True, False]])
    logits = model(d.crops, d.target, d.cells, torch.tensor([[0]]), object_mask=mask)
    assert torch.isinf(logits[..., 2]).all() and torch.isfinite(logits[..., [0, 1, 3]]).all()


def test_render_display_places_crops_in_cells():
    d = generate_displays(2, 4, (3, 3), crop=8, seed=6)
    image, masks = render_display(d, 1, (3, 3), cell_px=12, background=0.25)
    assert image.shape == (3, 36, 36) and masks.shape == (4, 36, 36)
    assert int(masks.sum()) == 4 * 144 and int(masks.any(0).sum()) == 4 * 144  # whole, disjoint cells
    for o, (r, c) in enumerate(d.cells[1].tolist()):
        assert masks[o, r * 12: r * 12 + 12, c * 12: c * 12 + 12].all()
        torch.testing.assert_close(image[:, r * 12 + 2: r * 12 + 10, c * 12 + 2: c * 12 + 10], d.crops[1, o])
    assert (image[:, ~masks.any(0)] == 0.25).all()
    with pytest.raises(ValueError, match="cell_px"):
        render_display(d, 0, (3, 3), cell_px=6)
    with pytest.raises(ValueError, match="grid"):
        render_display(d, 0, (2, 2))


def test_eccnet_scanpaths_are_the_fixation_loop_mapped_to_objects(one_thread):
    model = _searcher()
    d = generate_displays(3, 4, (3, 3), crop=8, seed=7)
    paths = eccnet_scanpath(model, d, (3, 3), cell_px=12, corner_bias=4)
    for b, path in enumerate(paths):
        t = int(d.target_index[b])
        assert path[-1] == t and t not in path[:-1] and len(set(path)) == len(path)
        image, masks = render_display(d, b, (3, 3), cell_px=12)
        result = model.search(image, d.target[b], masks[t], item_masks=masks, background=0.5, corner_bias=4,
                              ior_size=1)
        assert result.fixated_items == path
        for (r, c), o in zip(result.fixations[1:], path, strict=True):
            assert masks[o, r, c]  # the fixation lies in the object's cell


@pytest.mark.slow
def test_trains_with_falling_loss(one_thread):
    model = _tiny()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    d = generate_displays(2, 3, (3, 3), crop=8, seed=4)
    inp, tgt = scanpath_targets(eccnet_scanpath(_searcher(), d, (3, 3), cell_px=12, corner_bias=4), 3)
    losses = []
    for _ in range(8):
        loss = oat_loss(model(d.crops, d.target, d.cells, inp), tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_searchers_end_on_target():
    d = generate_displays(5, 4, (3, 3), seed=5)
    for paths in (greedy_search_scanpath(d, (3, 3)), saliency_order_scanpath(d)):
        for b, path in enumerate(paths):
            assert path[-1] == int(d.target_index[b]) and len(set(path)) == len(path)


def test_meta_device():
    with torch.device("meta"):
        model = OAT(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8)), grid=(2, 2), dim=8,
                    num_heads=2, encoder_layers=1, decoder_layers=1, feature_dim=8)
        out = model(torch.zeros(2, 3, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2, dtype=torch.long),
                    torch.zeros(2, 2, dtype=torch.long))
    assert out.shape == (2, 3, 4) and out.device.type == "meta"


def test_bad_inputs():
    model = _tiny()
    d = generate_displays(1, 3, (3, 3), crop=8)
    with pytest.raises(ValueError, match="cells"):
        model(d.crops, d.target, d.cells.float(), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="crops"):
        model(d.crops[0], d.target, d.cells, torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="num_objects"):
        generate_displays(1, 10, (3, 3))
    with pytest.raises(ValueError, match="index objects"):
        scanpath_targets([[0, 5]], 3)
    with pytest.raises(ValueError, match="dim"):
        OAT(torch.nn.Identity(), dim=10, num_heads=4, feature_dim=3)
