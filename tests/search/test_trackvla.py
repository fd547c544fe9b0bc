import math

import pytest
import torch

from visattn.search.trackvla import FrameWindow, PolarSectorTokenizer, TargetIdentificationMemory, memory_gate


def _naive_token(x, y, A, D, fov_deg, lo, hi):
    theta, rho = math.atan2(y, x), math.hypot(x, y)
    fov = math.radians(fov_deg)
    if abs(theta) > fov / 2 or not lo <= rho <= hi:
        return A * D
    a = min(int(math.floor((theta + fov / 2) / fov * A)), A - 1)
    d = min(int(math.floor((rho - lo) / (hi - lo) * D)), D - 1)
    return a * D + d


def test_hand_computed_sectors():
    tok = PolarSectorTokenizer(num_angles=4, num_distances=3, fov_deg=90, min_distance=1.0, max_distance=4.0)
    # straight ahead at 2.5 m: theta = 0 -> a = floor(0.5 * 4) = 2; rho 2.5 -> d = floor(1.5 / 3 * 3) = 1 -> 7
    # 30 deg left at 1.2 m: a = floor((30 + 45) / 90 * 4) = 3; d = 0 -> 9
    # 40 deg right at 3.9 m: a = floor(5 / 90 * 4) = 0; d = floor(2.9) = 2 -> 2
    # behind, too near, too far -> invalid 12
    pts = [(2.5, 0.0), (1.2 * math.cos(math.radians(30)), 1.2 * math.sin(math.radians(30))),
           (3.9 * math.cos(math.radians(-40)), 3.9 * math.sin(math.radians(-40))), (-2.0, 0.0), (0.5, 0.0),
           (5.0, 0.0)]
    out = tok(torch.tensor(pts))
    assert out.tolist() == [7, 9, 2, 12, 12, 12]
    assert tok.invalid_token == 12 and tok.vocab_size == 13


def test_random_against_naive_and_valid_mask():
    g = torch.Generator().manual_seed(0)
    tok = PolarSectorTokenizer(num_angles=7, num_distances=5, fov_deg=120, min_distance=0.6, max_distance=5.0)
    pts = (torch.rand(3, 11, 2, generator=g, dtype=torch.float64) - 0.3) * 8
    out = tok(pts)
    ref = [[_naive_token(float(x), float(y), 7, 5, 120, 0.6, 5.0) for x, y in row] for row in pts]
    assert out.tolist() == ref
    valid = torch.rand(3, 11, generator=g) > 0.5
    masked = tok(pts, valid)
    assert torch.equal(masked, torch.where(valid, out, torch.full_like(out, 35)))


def test_centres_round_trip():
    tok = PolarSectorTokenizer(num_angles=5, num_distances=4)
    tokens = torch.arange(tok.vocab_size)
    c = tok.centres(tokens)
    assert torch.equal(tok(c[:-1]), tokens[:-1])
    assert torch.isnan(c[-1]).all()


def test_gate_formula_and_memory_updates():
    c = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    g = memory_gate(c, threshold=0.5, temperature=0.1, max_gate=0.8)
    ref = [0.8 / (1 + math.exp(-(v - 0.5) / 0.1)) for v in c.tolist()]
    torch.testing.assert_close(g, torch.tensor(ref, dtype=torch.float64))
    assert memory_gate(c, 0.5, 0.0, 1.0).tolist() == [0.0, 1.0, 1.0]

    mem = TargetIdentificationMemory(slots=2, dim=3, threshold=0.5, temperature=0.0, max_gate=0.25)
    f1 = torch.ones(2, 2, 3, dtype=torch.float64)
    # batch 0 confident (fills: gate forced to 1), batch 1 not (stays empty)
    gate = mem.update(f1, torch.tensor([0.9, 0.1], dtype=torch.float64))
    assert gate.tolist() == [1.0, 0.0]
    assert mem.filled.tolist() == [True, False]
    torch.testing.assert_close(mem.read()[0], f1[0])
    assert mem.read()[1].abs().sum() == 0
    f2 = torch.full((2, 2, 3), 5.0, dtype=torch.float64)
    gate = mem.update(f2, torch.tensor([0.6, 0.7], dtype=torch.float64))
    # batch 0: m = 0.75 * 1 + 0.25 * 5 = 2; batch 1 first fill: m = 5
    assert gate.tolist() == [0.25, 1.0]
    torch.testing.assert_close(mem.read()[0], torch.full((2, 3), 2.0, dtype=torch.float64))
    torch.testing.assert_close(mem.read()[1], torch.full((2, 3), 5.0, dtype=torch.float64))
    gate = mem.update(torch.zeros(2, 2, 3, dtype=torch.float64), torch.tensor([0.1, 0.4], dtype=torch.float64))
    assert gate.tolist() == [0.0, 0.0]
    torch.testing.assert_close(mem.read()[0], torch.full((2, 3), 2.0, dtype=torch.float64))


def test_window_slides():
    w = FrameWindow(3)
    for t in range(5):
        w.push(torch.full((2, 4, 1), float(t)))
    out = w.tokens()
    assert out.shape == (2, 3, 4, 1)
    assert out[0, :, 0, 0].tolist() == [2.0, 3.0, 4.0]


def test_meta_device():
    tok = PolarSectorTokenizer()
    assert tok(torch.zeros(2, 3, 2, device="meta")).device.type == "meta"
    mem = TargetIdentificationMemory(2, 4)
    mem.update(torch.zeros(3, 2, 4, device="meta"), torch.zeros(3, device="meta"))
    assert mem.read().device.type == "meta"


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_angles"):
        PolarSectorTokenizer(num_angles=0)
    with pytest.raises(ValueError, match="min_distance"):
        PolarSectorTokenizer(min_distance=3.0, max_distance=1.0)
    with pytest.raises(ValueError, match="position"):
        PolarSectorTokenizer()(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="temperature"):
        memory_gate(torch.zeros(1), temperature=-1.0)
    mem = TargetIdentificationMemory(2, 4)
    with pytest.raises(ValueError, match="features"):
        mem.update(torch.zeros(1, 3, 4), torch.zeros(1))
    with pytest.raises(ValueError, match="empty"):
        FrameWindow(2).tokens()
