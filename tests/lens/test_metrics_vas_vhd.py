"""Visual Attention Score (arXiv 2603.03825) and Vision-aware Head Divergence (arXiv 2412.13949): hand-computed
cases, closed forms (uniform attention -> VAS 1, identical passes -> VHD 0), the outlier rule and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.lens.metrics import total_vhd, vhd_outliers, vision_head_divergence, visual_attention_score


def test_vas_by_hand():
    # keys: 0 system, 1 system, 2..4 visual, 5 text; queries are rows 1 and 2 (row 0 is ignored)
    probs = torch.tensor([
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.2, 0.2, 0.3, 0.0, 0.0, 0.3],
        [0.1, 0.1, 0.2, 0.2, 0.2, 0.2],
    ], dtype=torch.float64)
    # per key: visual (0.3 + 0.6) / (2 * 3) = 0.15, system (0.4 + 0.2) / (2 * 2) = 0.15 -> 1
    torch.testing.assert_close(visual_attention_score(probs, visual=[2, 3, 4], system=[0, 1], queries=[1, 2]),
                               torch.tensor(1.0, dtype=torch.float64))
    # totals: 0.9 / 0.6 = 1.5
    torch.testing.assert_close(
        visual_attention_score(probs, visual=slice(2, 5), system=slice(0, 2), queries=[1, 2], per_key=False),
        torch.tensor(1.5, dtype=torch.float64))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 20), data=st.data())
def test_uniform_attention_has_vas_one_per_key(n, data):
    keys = data.draw(st.permutations(range(n)))
    split = data.draw(st.integers(1, n - 1))
    end = data.draw(st.integers(split + 1, n))
    visual, system = list(keys[:split]), list(keys[split:end])
    probs = torch.full((2, 3, 4, n), 1.0 / n, dtype=torch.float64)
    torch.testing.assert_close(visual_attention_score(probs, visual, system), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(visual_attention_score(probs, visual, system, per_key=False),
                               torch.tensor(len(visual) / len(system), dtype=torch.float64))


def test_vas_averages_over_layers_and_heads_and_can_keep_them():
    probs = torch.zeros(2, 1, 2, 1, 3, dtype=torch.float64)
    probs[..., 0] = 0.5                     # system key 0
    probs[0, ..., 1] = 0.5                  # layer 0: visual 0.5 -> VAS 1
    probs[1, ..., 2] = 0.5                  # layer 1: half to key 2 (text)
    probs[1, :, 1, 0, 1:] = torch.tensor([0.25, 0.25], dtype=torch.float64)  # head 1 of layer 1: visual 0.25
    kept = visual_attention_score(probs, visual=[1], system=[0], reduce=False)
    torch.testing.assert_close(kept, torch.tensor([[[1.0, 1.0]], [[0.0, 0.5]]], dtype=torch.float64))
    torch.testing.assert_close(visual_attention_score(probs, visual=[1], system=[0]),
                               torch.tensor(0.625, dtype=torch.float64))


def test_vas_bad_input():
    probs = torch.full((3, 6), 1 / 6)
    with pytest.raises(ValueError, match=r"visual and system keys overlap at \[2\]"):
        visual_attention_score(probs, visual=[2, 3], system=[0, 2])
    with pytest.raises(ValueError, match="system selects no tokens out of 6"):
        visual_attention_score(probs, visual=[2], system=[])
    with pytest.raises(ValueError, match=r"queries indices \[3\] out of range for 3 tokens"):
        visual_attention_score(probs, visual=[2], system=[0], queries=[3])


def test_vhd_is_zero_for_identical_passes_and_the_l2_norm_by_hand():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(3, 2, 4, 8, generator=gen, dtype=torch.float64)
    assert torch.equal(vision_head_divergence(out, out.clone()), torch.zeros(3, 2, 4, dtype=torch.float64))
    per_batch = vision_head_divergence(out, out.clone()).transpose(0, 1)   # (B, layers, heads)
    assert torch.equal(total_vhd(per_batch, k=2), torch.zeros(2, dtype=torch.float64))
    a = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    torch.testing.assert_close(vision_head_divergence(a, torch.zeros(2, 2)), torch.tensor([5.0, 2**0.5]))


def test_total_vhd_sums_the_top_k_of_each_layer():
    vhd = torch.tensor([[1.0, 5.0, 3.0, 2.0], [0.5, 0.1, 4.0, 0.2]])
    assert float(total_vhd(vhd, k=1)) == 5.0 + 4.0
    assert float(total_vhd(vhd, k=2)) == 5.0 + 3.0 + 4.0 + 0.5
    assert float(total_vhd(vhd, k=4)) == float(vhd.sum())
    batched = torch.stack([vhd, 2 * vhd])
    torch.testing.assert_close(total_vhd(batched, k=1), torch.tensor([9.0, 18.0]))


def test_outliers_need_both_high_vhd_and_high_text_only_norm():
    # head 0: high VHD and high text norm -> outlier; head 1: high VHD only -> kept
    vhd = torch.tensor([[9.0, 9.0, 1.0, 1.0, 1.0, 1.0]])
    text_norm = torch.tensor([[9.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    mean, std = vhd.mean(), vhd.std()
    assert float(mean + std) < 9.0
    assert vhd_outliers(vhd, text_norm).tolist() == [[True, False, False, False, False, False]]
    assert float(total_vhd(vhd, k=2)) == 18.0
    assert float(total_vhd(vhd, k=2, text_only_norm=text_norm)) == 10.0


def test_vhd_bad_input():
    with pytest.raises(ValueError, match=r"with_image \(2, 3\) and text_only \(2, 4\) must have the same shape"):
        vision_head_divergence(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 4\]"):
        total_vhd(torch.ones(2, 4), k=5)
    with pytest.raises(ValueError, match="vhd must have at least 2 dims"):
        total_vhd(torch.ones(4), k=1)
    with pytest.raises(ValueError, match="outliers need at least 2 heads per layer"):
        vhd_outliers(torch.ones(3, 1), torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"vhd \(3, 2\) and text_only_norm \(3, 3\) must have the same shape"):
        vhd_outliers(torch.ones(3, 2), torch.ones(3, 3))
