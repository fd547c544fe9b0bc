"""Parsing ``name:key=value`` mixer cases and the arguments the benchmark builds mixers with."""

import pytest

import visattn
from visattn.bench import BENCH_PRESETS, BenchCase, build_mixer, parse_case
from visattn.bench.case import mixer_kwargs


def test_parse_plain_name():
    assert parse_case("neighborhood") == BenchCase("neighborhood")
    assert parse_case("neighborhood").label == "neighborhood"


def test_parse_literals_and_bare_words():
    case = parse_case("neighborhood:kernel_size=(3,7,7),dilation=2,is_causal=True")
    assert case.kwargs == {"kernel_size": (3, 7, 7), "dilation": 2, "is_causal": True}
    assert parse_case("radial:rule=code,decay_factor=0.5").kwargs == {"rule": "code", "decay_factor": 0.5}
    assert parse_case("sliding:window_size=9").label == "sliding(window_size=9)"


@pytest.mark.parametrize(
    "text, match",
    [("", "non-empty"), ("nonexistent_mixer", "unknown mixer"), ("neighborhood:7", "key=value"),
     ("neighborhood:kernel_size=", "key=value"), ("neighborhood:kernel_size=[1, x + 1]", "literals"),
     ("neighborhood:**extra", "key=value")],
)
def test_parse_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        parse_case(text)


def test_unknown_name_lists_the_known_mixers():
    with pytest.raises(ValueError, match="softmax"):
        parse_case("softmaxx")


def test_presets_then_user_arguments():
    assert mixer_kwargs(BenchCase("window"), 4, 32) == BENCH_PRESETS["window"].kwargs
    assert mixer_kwargs(BenchCase("window", {"window_size": 4}), 4, 32) == {"window_size": 4}
    assert mixer_kwargs(BenchCase("neighborhood"), 4, 32) == {}


def test_every_preset_names_a_registered_mixer():
    assert set(BENCH_PRESETS) <= set(visattn.list_mixers())


def test_grid_dependent_presets_follow_the_grid():
    for name, preset in BENCH_PRESETS.items():
        if preset.grid_kwargs is not None:
            assert mixer_kwargs(BenchCase(name), 4, 32, (6, 10)).items() >= preset.grid_kwargs((6, 10)).items()


def test_head_arguments_are_filled_where_the_factory_takes_them():
    spec = visattn.registry._REGISTRY

    def factory(num_heads, dim, scale=None):
        return (num_heads, dim, scale)

    spec["_bench_probe"] = visattn.MixerSpec("_bench_probe", factory, "vit", "O(N^2)", "dense", (), "")
    try:
        assert mixer_kwargs(BenchCase("_bench_probe"), 3, 16) == {"num_heads": 3, "dim": 48}
        assert mixer_kwargs(BenchCase("_bench_probe", {"num_heads": 1}), 3, 16) == {"num_heads": 1, "dim": 48}
        mixer, kwargs = build_mixer(BenchCase("_bench_probe"), 2, 8)
        assert mixer == (2, 16, None) and kwargs == {"num_heads": 2, "dim": 16}
    finally:
        del spec["_bench_probe"]


def test_build_mixer_reports_bad_arguments():
    with pytest.raises(TypeError, match="bogus"):
        build_mixer(BenchCase("neighborhood", {"bogus": 1}), 4, 32)
