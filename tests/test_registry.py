"""The mixer registry: names, metadata, creation and errors. What every mixer computes is checked by the
contract over all of them, tests/test_mixer_contract.py."""

from __future__ import annotations

import pytest

import visattn
from visattn.nn import TokenMixer
from visattn.papers import PAPERS
from visattn.registry import FACES, create_mixer_for_layer, register_mixer

FIRST_ENTRIES = ["softmax", "neighborhood", "window", "grid", "halo", "axial", "sliding", "radial"]


def test_first_entries_are_registered():
    assert set(FIRST_ENTRIES) <= set(visattn.list_mixers())
    assert visattn.list_mixers() == sorted(visattn.list_mixers())


@pytest.mark.parametrize("name", visattn.list_mixers())
def test_every_entry_has_metadata_and_builds_a_token_mixer(name):
    spec = visattn.get_mixer_spec(name)
    assert spec.paper_key in PAPERS and spec.paper.title
    assert spec.complexity.startswith("O(")
    assert spec.family and spec.summary
    assert set(spec.faces) <= set(FACES)
    assert "definition" in spec.faces or "module" in spec.faces
    assert callable(spec.oracle)
    assert isinstance(create_mixer_for_layer(name, dim=32, num_heads=4, head_dim=8), TokenMixer)


def test_family_filter():
    structured = visattn.list_mixers(family="structured")
    assert "neighborhood" in structured and "softmax" not in structured


def test_create_passes_kwargs():
    mixer = visattn.create_mixer("neighborhood", kernel_size=(3, 5), dilation=2)
    assert mixer.mask == visattn.masks.neighborhood_mask((3, 5), dilation=2)


def test_unknown_name_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown mixer 'nat'; known mixers: .*axial, .*neighborhood"):
        visattn.create_mixer("nat")
    with pytest.raises(TypeError, match="name must be a str"):
        visattn.create_mixer(3)


def test_registration_is_checked():
    with pytest.raises(ValueError, match="already registered"):
        register_mixer("softmax", paper="vit", complexity="O(N^2)", family="dense")(lambda: None)
    with pytest.raises(ValueError, match="paper must be a key"):
        register_mixer("x", paper="nope", complexity="O(N)", family="dense")
    with pytest.raises(ValueError, match="faces must be drawn"):
        register_mixer("x", paper="vit", complexity="O(N)", family="dense", faces=("gpu",))
    with pytest.raises(ValueError, match="lowercase"):
        register_mixer("Softmax", paper="vit", complexity="O(N)", family="dense")
    with pytest.raises(TypeError, match="oracle must be callable"):
        register_mixer("x", paper="vit", complexity="O(N)", family="dense", oracle="reference")
