"""Grids the benchmark runs each mixer on."""

import math

import pytest

import visattn
from visattn.bench import grid_for, infer_layout, parse_size, resolve_shape
from visattn.bench.layout import VIDEO_FRAMES, nominal_tokens


@pytest.mark.parametrize(
    "name, layout", [("sliding", "1d"), ("radial", "video"), ("neighborhood", "2d"), ("softmax", "2d"),
                     ("axial", "2d")],
)
def test_infer_layout(name, layout):
    assert infer_layout(visattn.create_mixer(name)) == layout


def test_infer_layout_of_an_object_without_mask():
    assert infer_layout(object()) == "2d"


@pytest.mark.parametrize("side", [4, 8, 32, 64])
def test_layouts_hold_side_squared_tokens(side):
    assert grid_for("2d", side) == (side, side)
    assert grid_for("1d", side) == (side * side,)
    video = grid_for("video", side)
    assert video[0] == VIDEO_FRAMES and math.prod(video) == side * side


def test_video_layout_of_a_small_side_keeps_one_token_per_frame():
    assert grid_for("video", 1) == (VIDEO_FRAMES, 1, 1)


@pytest.mark.parametrize("layout, side, match", [("3d", 8, "layout"), ("2d", 0, "side"), ("1d", 2.0, "side")])
def test_grid_for_rejects(layout, side, match):
    with pytest.raises(ValueError, match=match):
        grid_for(layout, side)


def test_resolve_shape_keeps_explicit_shapes():
    assert resolve_shape((3, 5, 7), "2d") == (3, 5, 7)
    assert resolve_shape(6, "1d") == (36,)
    with pytest.raises(ValueError, match="size"):
        resolve_shape((3, 0), "2d")


@pytest.mark.parametrize("text, size", [("32", 32), (" 7 ", 7), ("16x32x32", (16, 32, 32)), ("5X9", (5, 9))])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "-3", "x", "3x", "3x0", "3.5", "", "a8"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_nominal_tokens():
    assert nominal_tokens(12) == 144
    assert nominal_tokens((2, 3, 4)) == 24
