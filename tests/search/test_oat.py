import math

import pytest
import torch

from visattn.search.oat import (
    OAT,
    ObjectPositionalEncoding,
    cosine_prior,
    oat_loss,
    positional_prior_loss,
    scanpath_targets,
)
from visattn.search.object_displays import generate_displays, greedy_search_scanpath, saliency_order_scanpath


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


@pytest.mark.slow
def test_trains_with_falling_loss():
    model = _tiny()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    d = generate_displays(2, 3, (3, 3), crop=8, seed=4)
    inp, tgt = scanpath_targets(greedy_search_scanpath(d, (3, 3)), 3)
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
