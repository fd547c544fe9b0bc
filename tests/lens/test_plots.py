"""Lens pictures: the map helpers by hand (upsampling, query rows), every figure renders to a decodable PNG with the
expected panels, and bad shapes raise naming the argument."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.lens import plots


def decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def panels(fig):
    """The figure's axes without its colorbars."""
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is None]


def colorbars(fig):
    return [ax._colorbar for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def test_upsample_scales_to_unit_range_and_keeps_a_constant_map_at_zero():
    heat = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    big = plots.upsample(heat, (8, 6))
    assert big.shape == (8, 6)
    assert big.min() == pytest.approx(0.0) and big.max() == pytest.approx(1.0)
    # bilinear without corner alignment: the top-left output pixel is the top-left patch value
    assert big[0, 0] == pytest.approx(0.0) and big[-1, -1] == pytest.approx(1.0)
    assert np.array_equal(plots.upsample(torch.full((3, 3), 0.7), (5, 5)), np.zeros((5, 5)))


def test_query_maps_take_the_class_row_the_mean_row_or_a_chosen_query():
    probs = torch.arange(1 * 2 * 5 * 5, dtype=torch.float64).view(1, 2, 5, 5)
    cls = plots.query_maps(probs, (2, 2), num_prefix_tokens=1)
    assert cls.shape == (1, 2, 2, 2)
    torch.testing.assert_close(cls[0, 1], probs[0, 1, 0, 1:].view(2, 2))
    chosen = plots.query_maps(probs, (2, 2), num_prefix_tokens=1, query=3)
    torch.testing.assert_close(chosen[0, 0], probs[0, 0, 3, 1:].view(2, 2))
    no_prefix = probs[..., 1:, 1:]
    torch.testing.assert_close(plots.query_maps(no_prefix, (2, 2))[0, 0], no_prefix[0, 0].mean(0).view(2, 2))


def test_overlay_figure_has_the_input_and_one_panel_per_map():
    image = (np.random.default_rng(0).random((40, 30, 3)) * 255).astype(np.uint8)
    fig = plots.overlay_figure(image, {"rollout": torch.rand(4, 3), "layer 1": torch.rand(4, 3)})
    assert [ax.get_title() for ax in panels(fig)] == ["input", "rollout", "layer 1"]
    assert decoded(plots.png_bytes(fig)).format == "PNG"


def test_head_grid_has_a_row_per_layer_and_a_column_per_head(tmp_path):
    maps = {0: torch.rand(3, 4, 4), 5: torch.rand(3, 4, 4)}
    fig = plots.head_grid_figure(maps, image=np.ones((16, 16, 3)))
    axes = panels(fig)
    assert len(axes) == 6 and len(colorbars(fig)) == 1
    assert [axes[i].get_ylabel() for i in (0, 3)] == ["layer 0", "layer 5"]
    assert [axes[i].get_title() for i in range(3)] == ["head 0", "head 1", "head 2"]
    path = plots.save_png(plots.head_grid_figure(maps), tmp_path / "sub" / "heads.png")
    assert decoded(path.read_bytes()).size[0] > 100


def test_overlay_states_its_scale_with_colorbars_in_the_maps_units():
    """A random model's rollout spans 0.00498..0.00519: per map, its colorbar says so (it used to fill the colormap
    with no colorbar); on the absolute scale it shares one range from 0 with the other maps."""
    image = np.ones((16, 16, 3))
    flat = torch.linspace(0.00498, 0.00519, 16).view(4, 4)
    strong = torch.zeros(4, 4)
    strong[1, 2] = 0.9
    fig = plots.overlay_figure(image, {"rollout": flat, "last layer": strong})
    bars = colorbars(fig)
    assert len(bars) == 2
    assert (bars[0].vmin, bars[0].vmax) == pytest.approx((0.00498, 0.00519))
    assert (bars[1].vmin, bars[1].vmax) == pytest.approx((0.0, 0.9))
    assert "per map" in fig.get_suptitle()
    fig = plots.overlay_figure(image, {"rollout": flat, "last layer": strong}, scale="absolute")
    bars = colorbars(fig)
    assert len(bars) == 1 and (bars[0].vmin, bars[0].vmax) == pytest.approx((0.0, 0.9))
    assert [ax.images[-1].norm.vmax for ax in panels(fig)[1:]] == pytest.approx([0.9, 0.9])
    assert "absolute" in fig.get_suptitle() and "0..0.9" in fig.get_suptitle()
    fig = plots.overlay_figure(image, {"rollout": flat}, scale="absolute", limits=(0.0, 1.0))
    assert (colorbars(fig)[0].vmin, colorbars(fig)[0].vmax) == (0.0, 1.0)
    assert decoded(plots.png_bytes(fig)).format == "PNG"


def test_head_grid_absolute_scale_shares_one_range():
    maps = {0: torch.rand(2, 3, 3) * 0.1, 1: torch.rand(2, 3, 3)}
    fig = plots.head_grid_figure(maps, scale="absolute")
    top = float(max(m.max() for m in maps.values()))
    assert [ax.images[-1].norm.vmax for ax in panels(fig)] == pytest.approx([top] * 4)
    assert colorbars(fig)[0].vmax == pytest.approx(top) and "absolute" in fig.get_suptitle()
    fig = plots.head_grid_figure(maps)
    assert colorbars(fig)[0].vmax == pytest.approx(1.0) and "per map" in fig.get_suptitle()


def test_metrics_and_similarity_figures_render():
    fig = plots.metrics_figure({"entropy": {0: 2.0, 1: 1.5, 2: 1.0}, "distance": {0: 1.0, 2: 3.0}},
                               per_head={"distance": {0: [0.5, 1.5], 2: [2.0, 4.0]}})
    assert [ax.get_title() for ax in fig.axes] == ["entropy", "distance"]
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [2.0, 1.5, 1.0])
    weights = torch.rand(4, 4)
    weights = (weights + weights.T) / 2
    fig = plots.similarity_figure(weights, layers=[0, 3, 6, 9], phases=[[0, 1], [2, 3]])
    assert len(fig.axes[0].patches) == 2
    assert decoded(plots.png_bytes(fig)).format == "PNG"


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match=r"image must be \(H, W\), \(H, W, 3\) or \(H, W, 4\)"):
        plots.overlay_figure(np.ones((4, 4, 2)), {"a": torch.rand(2, 2)})
    with pytest.raises(ValueError, match="heat must be a 2-D map"):
        plots.upsample(torch.rand(2, 2, 2), (4, 4))
    with pytest.raises(ValueError, match=r"probs must be \(B, heads, N, N\) with N = num_prefix_tokens \+ prod\(grid"):
        plots.query_maps(torch.rand(1, 2, 5, 5), (2, 3))
    with pytest.raises(ValueError, match="query 7 out of range for 5 tokens"):
        plots.query_maps(torch.rand(1, 2, 5, 5), (2, 2), 1, query=7)
    with pytest.raises(ValueError, match=r"maps\[2\] must be \(heads, gh, gw\)"):
        plots.head_grid_figure({2: torch.rand(4, 4)})
    with pytest.raises(ValueError, match="maps must hold at least one layer"):
        plots.head_grid_figure({})
    with pytest.raises(ValueError, match=r"scale must be one of \('per_map', 'absolute'\), got 'log'"):
        plots.overlay_figure(np.ones((4, 4, 3)), {"a": torch.rand(2, 2)}, scale="log")
    with pytest.raises(ValueError, match="limits=.* needs scale='absolute'"):
        plots.overlay_figure(np.ones((4, 4, 3)), {"a": torch.rand(2, 2)}, limits=(0, 1))
    with pytest.raises(ValueError, match=r"weights must be \(L, L\) with L = len\(layers\) = 3"):
        plots.similarity_figure(torch.rand(4, 4), layers=[0, 1, 2])
