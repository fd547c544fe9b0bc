import math

import numpy as np
import pytest
import torch

from visattn.search.brain_encoder import (
    BrainEncoder,
    FactorisedReadout,
    RidgeReadout,
    fit_readout,
    load_nsd_arrays,
    pearson_per_vertex,
    plot_routing_maps,
    roi_mask_from_labels,
    sine_positional_encoding_2d,
    synthetic_voxels,
    vit_token_features,
)


def _naive_encoder(enc, tokens):
    """Per-ROI, per-head loops in float64."""
    b, n, _ = tokens.shape
    h, hd = enc.num_heads, enc.dim // enc.num_heads
    out = torch.zeros(b, enc.roi_mask.shape[1], dtype=torch.float64)
    for i in range(b):
        ts = []
        for r in range(enc.queries.shape[0]):
            q = enc.q(enc.queries[r])
            heads = []
            for j in range(h):
                sl = slice(j * hd, (j + 1) * hd)
                logits = torch.stack([q[sl] @ (enc.k(tokens[i, m]) + enc.k_pos(enc.pos[m]))[sl] for m in range(n)])
                a = torch.softmax(logits / math.sqrt(hd), 0)
                heads.append(sum(a[m] * enc.v(tokens[i, m])[sl] for m in range(n)))
            t = enc.norm1(enc.queries[r] + enc.proj(torch.cat(heads)))
            ts.append(enc.norm2(t + enc.mlp(t)))
        for v in range(enc.roi_mask.shape[1]):
            r = int(enc.roi_mask[:, v].argmax())
            if enc.roi_mask[r, v] > 0:
                out[i, v] = enc.readout_weight[v] @ ts[r] + enc.readout_bias[v]
            else:
                out[i, v] = enc.readout_bias[v]
    return out


def test_encoder_matches_naive_float64():
    torch.manual_seed(0)
    labels = torch.tensor([1, 2, 0, 2, 3, 1, 3])
    enc = BrainEncoder(5, roi_mask_from_labels(labels), (2, 3), dim=8, num_heads=2).double()
    tokens = torch.randn(2, 6, 5, dtype=torch.float64)
    y, attn = enc(tokens, return_attention=True)
    torch.testing.assert_close(y, _naive_encoder(enc, tokens))
    assert attn.shape == (2, 2, 3, 6)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 3, dtype=torch.float64))


def test_factorised_and_pearson_naive():
    torch.manual_seed(1)
    fac = FactorisedReadout(4, 5, 3).double()
    with torch.no_grad():
        fac.spatial.normal_()
    x = torch.randn(6, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        ref = torch.tensor([[sum(fac.spatial[v, n] * (fac.feature[v] @ x[b, n]) for n in range(5)) + fac.bias[v]
                             for v in range(3)] for b in range(6)], dtype=torch.float64)
    torch.testing.assert_close(fac(x), ref)
    p, t = torch.randn(9, 4, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    ref = torch.tensor([np.corrcoef(p[:, v].numpy(), t[:, v].numpy())[0, 1] for v in range(4)], dtype=torch.float64)
    torch.testing.assert_close(pearson_per_vertex(p, t), ref)


def test_sine_encoding_values():
    pe = sine_positional_encoding_2d(2, 3, 8, dtype=torch.float64)
    # token (row 1, col 2): row half [sin(1), sin(1/100), cos(1), cos(1/100)], column half with 2
    ref = [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01), math.sin(2), math.sin(0.02), math.cos(2),
           math.cos(0.02)]
    torch.testing.assert_close(pe[5], torch.tensor(ref, dtype=torch.float64))


@pytest.mark.slow
def test_vit_features_and_training_falls(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=0, depth=2)
    tokens, grid = vit_token_features(vit, torch.rand(24, 3, 32, 32))
    assert tokens.shape == (24, 4, 192) and grid == (2, 2)
    assert not any(p.grad is not None for p in vit.parameters())
    tokens = (tokens - tokens.mean((0, 1))) / tokens.std((0, 1))
    vox, labels, routing = synthetic_voxels(tokens, grid, num_rois=2, vertices_per_roi=3, noise=0.1)
    assert vox.shape == (24, 6) and labels.tolist() == [1, 1, 1, 2, 2, 2]
    torch.testing.assert_close(routing.sum(1), torch.ones(2, dtype=torch.float64))
    enc = BrainEncoder(192, roi_mask_from_labels(labels), grid, dim=16, num_heads=4)
    losses = fit_readout(enc, tokens, vox, steps=30, lr=3e-3)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    ridge = RidgeReadout().fit(tokens, vox)
    assert ridge.predict(tokens).shape == (24, 6)
    with torch.no_grad():
        _, attn = enc(tokens, return_attention=True)
    png = plot_routing_maps(attn[0], grid, tmp_path / "routing.png", image=torch.rand(3, 32, 32))
    assert png.stat().st_size > 0


def test_nsd_loader(tmp_path):
    split = tmp_path / "training_split"
    (split / "training_fmri").mkdir(parents=True)
    (tmp_path / "roi_masks").mkdir()
    rng = np.random.default_rng(0)
    np.save(split / "training_images.npy", rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8))
    np.save(split / "training_fmri" / "lh_training_fmri.npy", rng.normal(size=(5, 7)).astype(np.float32))
    np.save(split / "training_fmri" / "rh_training_fmri.npy", rng.normal(size=(5, 4)).astype(np.float32))
    np.save(tmp_path / "roi_masks" / "lh.prf-visualrois_challenge_space.npy", np.array([0, 1, 1, 2, 0, 3, 2]))
    np.save(tmp_path / "roi_masks" / "rh.prf-visualrois_challenge_space.npy", np.array([1, 0, 2, 2]))
    data = load_nsd_arrays(tmp_path, roi_set="prf-visualrois")
    assert data.images.shape == (5, 8, 8, 3)
    assert data.fmri["lh"].shape == (5, 7) and data.fmri["rh"].shape == (5, 4)
    mask = roi_mask_from_labels(data.rois["lh"])
    assert mask.shape == (3, 7) and mask.sum().item() == 5
    np.save(split / "training_fmri" / "rh_training_fmri.npy", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="n_images=5"):
        load_nsd_arrays(tmp_path)
    with pytest.raises(ValueError, match="training_split"):
        load_nsd_arrays(tmp_path / "nowhere")


def test_meta_device():
    with torch.device("meta"):
        enc = BrainEncoder(6, torch.ones(2, 5), (2, 2), dim=8, num_heads=2)
        y = enc(torch.zeros(3, 4, 6))
        fac = FactorisedReadout(6, 4, 5)
        z = fac(torch.zeros(3, 4, 6))
    assert y.shape == (3, 5) and y.device.type == "meta" and z.shape == (3, 5)


def test_bad_inputs():
    enc = BrainEncoder(6, torch.ones(2, 5), (2, 2), dim=8, num_heads=2)
    with pytest.raises(ValueError, match="tokens must be shaped"):
        enc(torch.zeros(3, 5, 6))
    with pytest.raises(ValueError, match="dim must be a multiple"):
        BrainEncoder(6, torch.ones(2, 5), (2, 2), dim=10, num_heads=4)
    with pytest.raises(ValueError, match="at least 2 images"):
        pearson_per_vertex(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="labels"):
        roi_mask_from_labels(np.array([-1, 2]))
    with pytest.raises(ValueError, match="before fit"):
        RidgeReadout().predict(torch.zeros(2, 3, 4))


def test_gradcheck_encoder():
    torch.manual_seed(2)
    enc = BrainEncoder(3, roi_mask_from_labels(torch.tensor([1, 2, 2])), (1, 2), dim=4, num_heads=2).double()
    tokens = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(enc, (tokens,))
