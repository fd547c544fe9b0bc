"""The asymmetry experiments: generators, the RT model, slopes and the asymmetry index against hand values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visattn.search.asymmetry import (
    EXPERIMENTS,
    HUMAN_RT_MS,
    _items,
    asymmetry_index,
    fixations_per_search,
    generate_condition,
    generate_display,
    reaction_time,
    rt_slope,
    run_experiment,
    scale_display,
    summarise,
)
from visattn.search.chance import chance_search


def test_reaction_time_formula():
    assert reaction_time(0) == pytest.approx(376.271)
    assert reaction_time(3) == pytest.approx(3 * 252.359 + 376.271)  # 1133.348
    np.testing.assert_allclose(reaction_time(np.array([1, 2])), [628.63, 880.989])


def test_slope_by_hand():
    assert rt_slope([3, 6, 9], [100, 130, 160]) == pytest.approx(10.0)
    # x = 1, 4, 8, 12 (mean 6.25), y = 0, 3, 7, 20 (mean 7.5): sum(xc*yc) / sum(xc^2) = 120.5 / 68.75
    assert rt_slope([1, 4, 8, 12], [0, 3, 7, 20]) == pytest.approx(120.5 / 68.75)
    with pytest.raises(ValueError, match="equal length"):
        rt_slope([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="all be equal"):
        rt_slope([2, 2], [1, 3])


def test_asymmetry_index_by_hand():
    # human slope of b is larger -> H = b: (30 - 10) / (30 + 10)
    assert asymmetry_index(10, 30, 5, 20) == pytest.approx(0.5)
    # H = a by the human slopes, even though the model's a is smaller: (10 - 30) / 40
    assert asymmetry_index(10, 30, 20, 5) == pytest.approx(-0.5)
    # negative model slopes are clipped at 0
    assert asymmetry_index(-5, 10, 1, 2) == pytest.approx(1.0)
    assert asymmetry_index(-5, -1, 1, 2) == 0.0
    # a tie in human slopes takes b as H
    assert asymmetry_index(4, 12, 3, 3) == pytest.approx(0.5)


def test_human_slopes_and_index():
    inter, tl = EXPERIMENTS["intersection"], EXPERIMENTS["t_vs_l"]
    assert inter.human_slope("cross") == pytest.approx(96) and inter.human_slope("non_cross") == pytest.approx(45)
    assert tl.human_slope("Ls") == pytest.approx(33) and tl.human_slope("Ts") == pytest.approx(14)
    assert EXPERIMENTS["curvature"].human_slope("line_in_curves") > EXPERIMENTS["curvature"].human_slope(
        "curve_in_lines")
    assert set(HUMAN_RT_MS) == {c for e in EXPERIMENTS.values() for c in e.conditions}
    for e in EXPERIMENTS.values():
        for c in e.conditions:
            assert len(HUMAN_RT_MS[c]) == len(e.set_sizes)


def test_published_set_sizes():
    sizes = {e.number: e.set_sizes for e in EXPERIMENTS.values()}
    assert sizes == {1: (8, 16, 32), 2: (1, 6, 12), 3: (3, 6, 9), 4: (3, 6, 9), 5: (1, 4, 8, 12), 6: (1, 4, 8, 12)}
    assert {e.number: e.grid for e in EXPERIMENTS.values()} == {1: (6, 6), 2: (4, 4), 3: (3, 3), 4: (3, 3),
                                                              5: (4, 4), 6: (4, 4)}



def test_release_stimulus_constants():
    """Pixel sizes of the release's generators at 30 px/deg: (display, cell, item, jitter) and background."""
    expected = {"curvature": (339, 56, 48, 8, 0), "lighting_direction": (198, 49, 31, 18, 27),
                "intersection": (615, 205, 177, 27, 255), "t_vs_l": (615, 205, 177, 27, 255),
                "orientation_homogeneous": (339, 84, 69, 15, 255), "orientation_heterogeneous": (339, 84, 69, 15, 255)}
    got = {n: (e.display_px, e.cell_px, e.item_px, e.jitter_px, e.background) for n, e in EXPERIMENTS.items()}
    assert got == expected
    assert EXPERIMENTS["intersection"].dog == ((5, 3.0), (7, 5.0))
    assert EXPERIMENTS["lighting_direction"].dog == ((3, 0.0), (5, 1.0))


def test_release_item_geometry():
    # lighting: 31-px disk, 16 grey bands of 2 px (0, 17, ..., 255), lit side brightest; outside the disk background
    d = generate_display("lighting_direction", "top_down", 1, seed=0)
    t = d.target[0].numpy() * 255
    assert t.shape == (31, 31) and abs(t[0, 0] - 27) < 1e-3
    # lit from top: row r inside the disk has band 17 * ((30 - r) // 2); row 30 lies outside (15^2 is not < 15^2)
    assert abs(t[1, 15] - 238) < 1e-3 and abs(t[29, 15] - 0) < 1e-3 and abs(t[30, 15] - 27) < 1e-3
    side = generate_display("lighting_direction", "left_right", 1, seed=0).target[0].numpy() * 255
    assert abs(side[15, 1] - 238) < 1e-3 and abs(side[15, 29] - 0) < 1e-3
    # intersection: 177-px item, 6-px border, strokes 16-17 px; a cross has ink in all four arms around the crossing
    cross = generate_display("intersection", "cross", 1, seed=0).target[0].numpy()
    assert cross.shape == (177, 177) and cross[:6].min() == 1 and cross[:, :6].min() == 1
    assert int((cross < 0.5).sum()) == 165 * 16 + 165 * 17 - 16 * 17
    non = generate_display("intersection", "non_cross", 1, seed=0).target[0].numpy()
    # vertical 165 x 16; left half rows [49, 66) x cols [0, 82); right half rows [99, 115) x cols [82, 165)
    assert int((non < 0.5).sum()) == 165 * 16 + (82 - 8) * 17 + (83 - 8) * 16
    # orientation: the 60 x 9 px bar sampled at pixel centres around the 69-px canvas's middle pixel: 61 x 9
    bar0 = generate_display("orientation_homogeneous", "homo_t0", 1, seed=0).target[0].numpy()
    assert bar0.shape == (69, 69) and int((bar0 < 0.5).sum()) == 61 * 9
    bar20 = generate_display("orientation_homogeneous", "homo_t20", 1, seed=0).target[0].numpy()
    assert abs(int((bar20 < 0.5).sum()) - 540) < 40


def test_heterogeneous_distractors_are_balanced():
    for n in (4, 8, 12):
        d = generate_display("orientation_heterogeneous", "hetero_t0", n, seed=n)
        assert d.set_size == n
    rng = np.random.default_rng(0)
    items, slot = _items("hetero_t0", 69, 12, rng)
    distractors = items[:slot] + items[slot + 1:]
    kinds = {d.tobytes() for d in distractors}
    assert len(distractors) == 11 and len(kinds) == 8  # all eight orientations before any repeat
    assert items[slot].tobytes() not in kinds  # the 0-deg target is not among them
    items, slot = _items("hetero_t20", 69, 8, rng)
    assert len({d.tobytes() for d in items[:slot] + items[slot + 1:]}) == 7  # distinct when at most eight


def test_curvature_poses_cycle_over_the_items():
    rng = np.random.default_rng(0)
    items, slot = _items("curve_in_lines", 48, 8, rng)
    lines = [i for i in range(8) if i != slot]
    # items i and i + 4 share a pose (and a shape, away from the target)
    for i in lines:
        if i + 4 in lines:
            np.testing.assert_array_equal(items[i], items[i + 4])
    assert len({items[i].tobytes() for i in lines}) == 4


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_generators_produce_set_sizes_and_counts(name):
    exp = EXPERIMENTS[name]
    for condition in exp.conditions:
        for n in exp.set_sizes:
            d = generate_display(name, condition, n, seed=n)
            side = exp.display_px
            assert d.image.shape == (3, side, side) and d.item_masks.shape == (exp.grid[0] * exp.grid[1], side, side)
            assert len(d.occupied) == len(set(d.occupied)) == n and d.set_size == n
            assert d.target_item in d.occupied  # one target, n - 1 distractors
            assert torch.equal(d.target_mask, d.item_masks[d.target_item])
            assert 0 <= float(d.image.min()) and float(d.image.max()) <= 1
            ink = (d.image[0] - d.background).abs() > 1e-6
            drawn = (d.item_masks & ink).flatten(1).any(1)
            assert drawn.nonzero().flatten().tolist() == list(d.occupied)
            assert d.target.shape == (3, exp.item_px, exp.item_px)


def test_generators_are_seeded_and_conditions_differ():
    a = generate_display("t_vs_l", "Ts", 6, seed=3)
    b = generate_display("t_vs_l", "Ts", 6, seed=3)
    c = generate_display("t_vs_l", "Ts", 6, seed=4)
    assert torch.equal(a.image, b.image) and not torch.equal(a.image, c.image)
    assert not torch.equal(generate_display("t_vs_l", "Ls", 1, seed=0).target,
                           generate_display("t_vs_l", "Ts", 1, seed=0).target)
    displays = generate_condition("intersection", "cross", displays_per_set_size=2)
    assert [d.set_size for d in displays] == [3, 3, 6, 6, 9, 9]
    assert EXPERIMENTS["intersection"].displays_per_set_size == 36


def test_generator_bad_inputs():
    with pytest.raises(ValueError, match=r"set_size must be an int in \[1, 9\]"):
        generate_display("intersection", "cross", 10, seed=0)
    with pytest.raises(ValueError, match="set_size"):
        generate_display("curvature", "curve_in_lines", 0, seed=0)
    with pytest.raises(ValueError, match="condition"):
        generate_display("curvature", "cross", 8, seed=0)
    with pytest.raises(KeyError):
        generate_display("nope", "cross", 8, seed=0)


def test_failed_search_counts_the_set_size():
    assert fixations_per_search(True, 4, 9) == 4
    assert fixations_per_search(False, 10, 9) == 9


def test_summarise_by_hand():
    # cross: 1, 2, 3 fixations at 3, 6, 9 items -> RT slope 252.359 / 3; non_cross: flat -> 0
    counts = {"cross": {3: [1, 1], 6: [2, 2], 9: [3, 3]}, "non_cross": {3: [2], 6: [2], 9: [2]}}
    result = summarise("intersection", counts)
    assert result.model_slopes["cross"] == pytest.approx(252.359 / 3)
    assert result.model_slopes["non_cross"] == pytest.approx(0.0)
    assert result.model_index == pytest.approx(1.0)
    assert result.human_index == pytest.approx((96 - 45) / (96 + 45))
    assert result.rt_by_condition["non_cross"] == pytest.approx([2 * 252.359 + 376.271] * 3)
    with pytest.raises(ValueError, match="set sizes"):
        summarise("intersection", {"cross": {3: [1]}, "non_cross": {3: [1]}})


def test_run_experiment_with_the_chance_baseline():
    g = torch.Generator().manual_seed(0)

    def chance(display):
        result = chance_search(display.item_masks, display.target_item, candidates=display.occupied, generator=g)
        return result.found, result.num_fixations

    result = run_experiment(chance, "intersection", displays_per_set_size=2)
    assert set(result.model_slopes) == {"cross", "non_cross"}
    assert -1 <= result.model_index <= 1
    assert all(len(v) == 3 for v in result.rt_by_condition.values())  # one mean RT per set size


def test_scale_display():
    d = generate_display("intersection", "cross", 3, seed=0)
    s = scale_display(d, 0.1)
    assert s.image.shape == (3, 62, 62) and s.item_masks.shape == (9, 62, 62) and s.target.shape == (3, 18, 18)
    assert s.item_masks.dtype == torch.bool and torch.equal(s.target_mask, s.item_masks[d.target_item])
    assert (s.item_masks.flatten(1).sum(1) > 0).all() and s.occupied == d.occupied
    # area averaging keeps the mean grey level of the display (up to the edge rows)
    assert abs(float(s.image.mean()) - float(d.image.mean())) < 0.02
    assert scale_display(d, 1) is d
    with pytest.raises(ValueError, match="scale"):
        scale_display(d, 1.5)
