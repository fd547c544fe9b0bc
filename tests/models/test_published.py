"""docs/models.md's generated table: counted parameters and multiply-adds of every visattn_* model beside the papers'
figures (visattn.models.published), and the page is current."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
from contract import count_params_meta

from visattn import docgen
from visattn.models.published import PUBLISHED, Published

PAGE = Path(__file__).resolve().parents[2] / "docs" / "models.md"

PAPER_ROUNDING = 0.15
"""Papers round their counts (DeiT-Ti's "5M" is 5.72 M); a config that differs by a stage or a width is further off."""


def test_every_published_entry_names_a_registered_model():
    assert set(PUBLISHED) <= set(timm.list_models("visattn_*")), set(PUBLISHED) - set(timm.list_models("visattn_*"))


def test_the_page_lists_every_registered_model():
    """Quick; the full comparison with a fresh render (every model run on the meta device) is
    tests/test_docgen.py::test_committed_docs_match_the_registry[models.md], marked slow."""
    text = PAGE.read_text()
    rows = docgen.BLOCK.search(text).group(4).splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == timm.list_models("visattn_*"), "run `python -m visattn.docgen`"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_counted_parameters_are_near_the_published_ones(name):
    paper = PUBLISHED[name]
    params = count_params_meta(name)
    assert timm.models.get_pretrained_cfg(name).input_size[-1] == paper.img_size
    if paper.params_m is not None:
        assert abs(params / 1e6 - paper.params_m) <= PAPER_ROUNDING * paper.params_m, (params, paper)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_counted_multiply_adds_are_near_the_published_ones(name):
    params, macs, side = docgen.count_model(name)
    paper = PUBLISHED[name]
    assert (params, side) == (count_params_meta(name), paper.img_size)
    if paper.gmacs is not None:
        assert abs(macs / 1e9 - paper.gmacs) <= PAPER_ROUNDING * paper.gmacs, (macs, paper)


def test_vit_small_counts_exactly():
    """ViT-S/16 at 224: 22,050,664 parameters (timm's count); 197 tokens, 12 blocks of 384 channels: qkv, proj and
    MLP products 12 * 197 * 384 * (3 + 1 + 8) * 384, attention 12 * 2 * 197^2 * 384, patch embedding
    196 * 384 * 768, head 384 * 1000: 4.5989 G multiply-adds."""
    tokens, dim, depth = 197, 384, 12
    expected = depth * (tokens * dim * 12 * dim + 2 * tokens * tokens * dim) + 196 * dim * 768 + dim * 1000
    assert docgen.count_model("visattn_vit_small_patch16_224") == (22_050_664, expected, 224)


@pytest.mark.parametrize(("field", "value"), [("params_m", -1.0), ("gmacs", 0), ("img_size", 0), ("source", "")])
def test_published_refuses_bad_figures(field, value):
    args = dict(params_m=1.0, gmacs=1.0, img_size=224, source="a paper, Table 1") | {field: value}
    with pytest.raises(ValueError, match=field):
        Published(**args)
